"""The properties of the rendered k8s/ manifests that docs/OPERATIONS.md relies on.

Run by scripts/k8s-check.sh after schema validation, as
`python k8s_properties.py NAME=RENDERED.yaml ...` (NAME: k8s/base or k8s/overlays/...). Every
problem is printed; exit 1 if there is any. Needs PyYAML (kubernetes-validate brings it).

Why each check exists:
- three replicas, a StatefulSet with a claim per replica for the journal, mounted at JOURNAL_DIR,
  and REPLICA_ID from the pod name: a restarted replica drains its own journal;
- a preStop sleep, so that a stopping replica still serves while its endpoint removal spreads,
  and terminationGracePeriodSeconds >= that sleep + SHUTDOWN_GRACE_MS + the 5 s hand-over bound +
  a margin: a rolling update never SIGKILLs a replica that is still handing attempts over (the
  grace period counts from the start of the preStop hook);
- gRPC probes on the port that serves health (HEALTH_LISTEN when set: the main port may demand a
  client certificate the kubelet cannot present);
- non-root, read-only root filesystem, no privilege escalation, no capabilities;
- PDB, HPA and NetworkPolicy select the coordinator's pods, and the NetworkPolicy's peers do not
  demand the coordinator's own labels (kustomize's `includeSelectors` once put them there);
- the PDB lets one replica go at a time whatever the HPA scaled to (maxUnavailable 1, not
  minAvailable, which would let several go once scaled up);
- no ingress rule is open to every source or every port (the probes need none: they come from
  the pod's own node);
- secrets come from Secrets, and in an overlay every Secret and key referenced is rendered.
"""

import sys

import yaml

# coordinator/src/server.rs HAND_OVER_BOUND: after SHUTDOWN_GRACE_MS, tasks get this long to hand
# their attempts over before the process exits.
HAND_OVER_BOUND_SECONDS = 5
# What terminationGracePeriodSeconds must leave beyond the preStop sleep, the shutdown grace and
# the hand-over: the journal's close, a slow node.
GRACE_MARGIN_SECONDS = 5
# coordinator/src/server.rs: health services the probes may ask for.
LIVENESS_SERVICE = "liveness"
READINESS_SERVICE = ""
SECRET_SETTINGS = ("DATABASE_URL", "GATEWAY_API_KEY")


class Checker:
    def __init__(self, name, objects):
        self.name = name
        self.objects = objects
        self.problems = []

    def expect(self, condition, message):
        if not condition:
            self.problems.append(f"{self.name}: {message}")
        return condition

    def of_kind(self, kind):
        return [o for o in self.objects if o.get("kind") == kind]

    def named(self, kind, name):
        found = [o for o in self.of_kind(kind) if o["metadata"]["name"] == name]
        return found[0] if found else None


def selects(selector, labels):
    """Whether a LabelSelector (matchLabels, matchExpressions In / Exists) selects these labels;
    an empty or missing selector selects nothing here (we always mean to name our pods)."""
    if not selector:
        return False
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions", []):
        key, operator = expression["key"], expression["operator"]
        if operator == "In" and labels.get(key) not in expression["values"]:
            return False
        if operator == "Exists" and key not in labels:
            return False
    return True


def port_of(address):
    return int(address.rsplit(":", 1)[1])


def check(name, objects):
    c = Checker(name, objects)
    overlay = name != "k8s/base"

    statefulsets = c.of_kind("StatefulSet")
    if not c.expect(len(statefulsets) == 1, f"one StatefulSet expected, found {len(statefulsets)}"):
        return c.problems
    sts = statefulsets[0]
    spec = sts["spec"]
    pod = spec["template"]["spec"]
    pod_labels = spec["template"]["metadata"].get("labels", {})
    # An overlay may drop replicas once the HPA owns it (docs/OPERATIONS.md, "Scaling").
    c.expect(spec.get("replicas") == 3 or (overlay and "replicas" not in spec),
             f"replicas is {spec.get('replicas')}, not 3")
    c.expect(selects(spec["selector"], pod_labels), "the StatefulSet's selector does not select its pods")
    c.expect(spec.get("podManagementPolicy") == "Parallel", "podManagementPolicy is not Parallel")
    c.expect(spec.get("updateStrategy", {}).get("type", "RollingUpdate") == "RollingUpdate",
             "updateStrategy is not RollingUpdate")
    retention = spec.get("persistentVolumeClaimRetentionPolicy", {})
    c.expect(retention.get("whenScaled") == "Retain" and retention.get("whenDeleted") == "Retain",
             "journal claims must be retained when scaled down or deleted")

    containers = pod["containers"]
    if not c.expect(len(containers) == 1, f"one container expected, found {len(containers)}"):
        return c.problems
    container = containers[0]

    # Settings: the ConfigMap(s) named by envFrom, then env.
    config = {}
    for source in container.get("envFrom", []):
        ref = source.get("configMapRef")
        if c.expect(ref is not None, "envFrom other than a ConfigMap"):
            cm = c.named("ConfigMap", ref["name"])
            if c.expect(cm is not None, f"ConfigMap {ref['name']} (envFrom) is not rendered"):
                config.update(cm.get("data", {}))
    env = {e["name"]: e for e in container.get("env", [])}
    for key in SECRET_SETTINGS:
        c.expect(key not in config, f"{key} is in a ConfigMap: it is a secret")
        ref = env.get(key, {}).get("valueFrom", {}).get("secretKeyRef")
        c.expect(ref is not None, f"{key} is not taken from a Secret (secretKeyRef)")
    for key in ("COORDINATOR_LISTEN", "METRICS_LISTEN", "JOURNAL_DIR", "API_KEYS_FILE", "SHUTDOWN_GRACE_MS"):
        c.expect(key in config, f"{key} is not set in the ConfigMap")
    if c.expect("REPLICA_ID" in env, "REPLICA_ID is not set"):
        field = env["REPLICA_ID"].get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
        c.expect(field == "metadata.name", f"REPLICA_ID comes from {field!r}, not metadata.name")

    ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
    port_numbers = set(ports.values())
    if "COORDINATOR_LISTEN" in config:
        c.expect(config["COORDINATOR_LISTEN"].startswith("0.0.0.0:"), "COORDINATOR_LISTEN must listen on every interface in a pod")
        c.expect(ports.get("grpc") == port_of(config["COORDINATOR_LISTEN"]), "container port grpc is not COORDINATOR_LISTEN's")
    if "METRICS_LISTEN" in config:
        c.expect(config["METRICS_LISTEN"].startswith("0.0.0.0:"), "METRICS_LISTEN must listen on every interface in a pod")
        c.expect(ports.get("metrics") == port_of(config["METRICS_LISTEN"]), "container port metrics is not METRICS_LISTEN's")

    # A stopping replica keeps serving while its endpoint removal spreads, then shuts down
    # gracefully, all within the termination grace period (which counts from the preStop hook).
    pre_stop = container.get("lifecycle", {}).get("preStop", {})
    pre_stop_seconds = pre_stop.get("sleep", {}).get("seconds", 0)
    c.expect(pre_stop_seconds > 0, "no preStop sleep: the listener would close while endpoints still point at the pod")
    if "SHUTDOWN_GRACE_MS" in config:
        grace = pod.get("terminationGracePeriodSeconds", 30)
        needed = pre_stop_seconds + int(config["SHUTDOWN_GRACE_MS"]) / 1000 + HAND_OVER_BOUND_SECONDS + GRACE_MARGIN_SECONDS
        c.expect(grace >= needed,
                 f"terminationGracePeriodSeconds {grace} must cover preStop {pre_stop_seconds} + SHUTDOWN_GRACE_MS/1000 "
                 f"{int(config['SHUTDOWN_GRACE_MS']) / 1000:g} + hand-over {HAND_OVER_BOUND_SECONDS} + margin {GRACE_MARGIN_SECONDS} = {needed:g}")

    # Probes: gRPC health, on the port that serves it without a client certificate.
    health_port = port_of(config["HEALTH_LISTEN"]) if "HEALTH_LISTEN" in config else ports.get("grpc")
    if "HEALTH_LISTEN" in config:
        c.expect(config["HEALTH_LISTEN"].startswith("0.0.0.0:"), "HEALTH_LISTEN must listen on every interface in a pod")
        c.expect(ports.get("health") == health_port, "container port health is not HEALTH_LISTEN's")
    if any(k in config for k in ("TLS_CERT_FILE", "TLS_CLIENT_CA_FILE")):
        c.expect("HEALTH_LISTEN" in config, "TLS on the gRPC port needs HEALTH_LISTEN for the kubelet's probes")
    for probe_name, service in (("livenessProbe", LIVENESS_SERVICE), ("readinessProbe", READINESS_SERVICE), ("startupProbe", LIVENESS_SERVICE)):
        probe = container.get(probe_name)
        if not c.expect(probe is not None, f"no {probe_name}"):
            continue
        grpc = probe.get("grpc")
        if not c.expect(grpc is not None, f"{probe_name} is not a gRPC (grpc.health.v1) probe"):
            continue
        c.expect(grpc.get("port") == health_port, f"{probe_name} asks port {grpc.get('port')}, health is served on {health_port}")
        c.expect(grpc.get("port") in port_numbers, f"{probe_name}'s port is not a container port")
        c.expect(grpc.get("service", "") == service, f"{probe_name} asks for service {grpc.get('service', '')!r}, expected {service!r}")

    # Security.
    pod_security = pod.get("securityContext", {})
    security = container.get("securityContext", {})
    c.expect(pod_security.get("runAsNonRoot") is True or security.get("runAsNonRoot") is True, "not runAsNonRoot")
    run_as = security.get("runAsUser", pod_security.get("runAsUser"))
    c.expect(run_as not in (None, 0), f"runAsUser is {run_as}: a non-root uid must be set")
    c.expect(pod_security.get("fsGroup") not in (None, 0), "no fsGroup: the journal volume would not be writable")
    seccomp = security.get("seccompProfile", pod_security.get("seccompProfile", {}))
    c.expect(seccomp.get("type") == "RuntimeDefault", "seccompProfile is not RuntimeDefault")
    c.expect(security.get("readOnlyRootFilesystem") is True, "the root filesystem is not read-only")
    c.expect(security.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation is not false")
    c.expect(security.get("privileged") in (None, False), "privileged")
    c.expect("ALL" in security.get("capabilities", {}).get("drop", []), "capabilities do not drop ALL")
    c.expect(pod.get("automountServiceAccountToken") is False, "a service account token is mounted (the coordinator never calls the API)")
    account = c.named("ServiceAccount", pod.get("serviceAccountName", ""))
    if c.expect(account is not None, f"the pods' ServiceAccount {pod.get('serviceAccountName')!r} is not rendered"):
        c.expect(account.get("automountServiceAccountToken") is False, "the ServiceAccount mounts a token")
    resources = container.get("resources", {})
    for kind in ("requests", "limits"):
        for resource in ("cpu", "memory"):
            c.expect(resource in resources.get(kind, {}), f"no {resource} in resources.{kind}")
    c.expect(bool(pod.get("topologySpreadConstraints")) or "podAntiAffinity" in pod.get("affinity", {}),
             "replicas are not spread across nodes (topologySpreadConstraints or podAntiAffinity)")
    c.expect(all(selects(t.get("labelSelector"), pod_labels) for t in pod.get("topologySpreadConstraints", [])),
             "a topology spread constraint does not select the coordinator's pods")

    # The journal: a claim per replica, mounted read-write at JOURNAL_DIR.
    claims = {t["metadata"]["name"]: t for t in spec.get("volumeClaimTemplates", [])}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mounts = {m["mountPath"].rstrip("/"): m for m in container.get("volumeMounts", [])}
    journal_dir = config.get("JOURNAL_DIR", "").rstrip("/")
    mount = mounts.get(journal_dir)
    if c.expect(mount is not None, f"nothing is mounted at JOURNAL_DIR {journal_dir!r}"):
        c.expect(mount["name"] in claims and mount["name"] not in volumes,
                 f"JOURNAL_DIR is mounted from {mount['name']!r}, not from a volumeClaimTemplate (it must survive a restart)")
        c.expect(not mount.get("readOnly", False), "JOURNAL_DIR is mounted read-only")
    for claim in claims.values():
        c.expect("ReadWriteOnce" in claim["spec"].get("accessModes", []) or "ReadWriteOncePod" in claim["spec"].get("accessModes", []),
                 f"claim {claim['metadata']['name']} is not ReadWriteOnce (one replica per journal)")
        c.expect("storage" in claim["spec"].get("resources", {}).get("requests", {}), f"claim {claim['metadata']['name']} asks no storage")

    # Files named by settings live in mounted Secrets, under the mounted key.
    def file_from_secret(setting):
        path = config.get(setting)
        if not c.expect(path is not None, f"{setting} is not set"):
            return
        directory, _, filename = path.rpartition("/")
        mount = mounts.get(directory)
        if not c.expect(mount is not None, f"{setting} {path}: nothing is mounted at {directory}"):
            return
        volume = volumes.get(mount["name"], {})
        secret = volume.get("secret")
        if not c.expect(secret is not None, f"{setting} {path}: {directory} is not a Secret volume"):
            return
        c.expect(mount.get("readOnly") is True, f"{directory} ({setting}) is not mounted read-only")
        items = secret.get("items")
        key = next((i["key"] for i in items if i["path"] == filename), None) if items else filename
        c.expect(key is not None, f"{setting} {path}: the Secret volume has no item {filename}")
        secret_refs.append((secret["secretName"], key, setting))

    secret_refs = []
    file_from_secret("API_KEYS_FILE")
    for setting in ("TLS_CERT_FILE", "TLS_KEY_FILE", "TLS_CLIENT_CA_FILE"):
        if setting in config:
            file_from_secret(setting)
    for key in SECRET_SETTINGS:
        ref = env.get(key, {}).get("valueFrom", {}).get("secretKeyRef")
        if ref:
            secret_refs.append((ref["name"], ref["key"], key))
    if overlay:
        # What the pods reference is what the overlay renders.
        for secret_name, key, setting in secret_refs:
            secret = c.named("Secret", secret_name)
            if c.expect(secret is not None, f"Secret {secret_name} ({setting}) is not rendered"):
                data = {**secret.get("data", {}), **secret.get("stringData", {})}
                c.expect(key in data, f"Secret {secret_name} has no key {key} ({setting})")
        for setting in ("TLS_CERT_FILE", "TLS_KEY_FILE", "TLS_CLIENT_CA_FILE", "HEALTH_LISTEN", "OTEL_EXPORTER_OTLP_ENDPOINT"):
            c.expect(setting in config, f"the example overlay sets no {setting}")
        c.expect(config.get("LOG_FORMAT") == "json", "the example overlay does not log JSON")
        image = container["image"]
        c.expect(":" in image.rsplit("/", 1)[-1] or "@sha256:" in image, f"image {image} has no tag")
        c.expect(not image.endswith(":latest"), f"image {image} is :latest")

    # Services.
    services = c.of_kind("Service")
    headless = c.named("Service", spec.get("serviceName", ""))
    if c.expect(headless is not None, f"the StatefulSet's serviceName {spec.get('serviceName')!r} is not rendered"):
        c.expect(headless["spec"].get("clusterIP") == "None", "the StatefulSet's Service is not headless")
    cluster_ip = [s for s in services if s["spec"].get("clusterIP") != "None"]
    if c.expect(len(cluster_ip) >= 1, "no ClusterIP Service"):
        for service in services:
            c.expect(selects({"matchLabels": service["spec"].get("selector", {})}, pod_labels) and service["spec"].get("selector"),
                     f"Service {service['metadata']['name']} does not select the coordinator's pods")
            targets = {p.get("targetPort") for p in service["spec"]["ports"]}
            c.expect({"grpc", "metrics"} <= targets, f"Service {service['metadata']['name']} does not expose grpc and metrics")

    # PodDisruptionBudget.
    pdbs = c.of_kind("PodDisruptionBudget")
    if c.expect(len(pdbs) == 1, f"one PodDisruptionBudget expected, found {len(pdbs)}"):
        c.expect(pdbs[0]["apiVersion"] == "policy/v1", f"the PodDisruptionBudget is {pdbs[0]['apiVersion']}, not policy/v1")
        pdb = pdbs[0]["spec"]
        c.expect(selects(pdb["selector"], pod_labels), "the PodDisruptionBudget does not select the coordinator's pods")
        c.expect(pdb.get("maxUnavailable") == 1 and "minAvailable" not in pdb,
                 f"the PodDisruptionBudget must let one replica go at a time whatever the replica count "
                 f"(maxUnavailable 1, no minAvailable), not {({k: pdb[k] for k in ('minAvailable', 'maxUnavailable') if k in pdb})}")

    # HorizontalPodAutoscaler.
    hpas = c.of_kind("HorizontalPodAutoscaler")
    if c.expect(len(hpas) == 1, f"one HorizontalPodAutoscaler expected, found {len(hpas)}"):
        hpa = hpas[0]
        c.expect(hpa["apiVersion"] == "autoscaling/v2", "the HPA is not autoscaling/v2")
        target = hpa["spec"]["scaleTargetRef"]
        c.expect((target["kind"], target["name"]) == ("StatefulSet", sts["metadata"]["name"]), "the HPA does not scale the StatefulSet")
        c.expect(hpa["spec"].get("minReplicas", 1) >= 3, "the HPA may scale below three replicas")
        c.expect(hpa["spec"]["maxReplicas"] >= hpa["spec"].get("minReplicas", 1), "maxReplicas < minReplicas")
        c.expect(any(m.get("resource", {}).get("name") == "cpu" for m in hpa["spec"].get("metrics", [])), "the HPA does not scale on CPU")

    # NetworkPolicy.
    policies = c.of_kind("NetworkPolicy")
    if c.expect(len(policies) == 1, f"one NetworkPolicy expected, found {len(policies)}"):
        c.expect(policies[0]["apiVersion"] == "networking.k8s.io/v1", f"the NetworkPolicy is {policies[0]['apiVersion']}, not networking.k8s.io/v1")
        policy = policies[0]["spec"]
        c.expect(selects(policy["podSelector"], pod_labels), "the NetworkPolicy does not select the coordinator's pods")
        c.expect(set(policy.get("policyTypes", [])) == {"Ingress", "Egress"}, "the NetworkPolicy must restrict ingress and egress")
        ingress_ports = {p.get("port") for rule in policy.get("ingress", []) for p in rule.get("ports", [])}
        egress_ports = {p.get("port") for rule in policy.get("egress", []) for p in rule.get("ports", [])}
        c.expect({"grpc", "metrics"} <= ingress_ports, f"ingress ports {ingress_ports}: gRPC and metrics expected")
        # Every port, the probes' included, is open to named sources only: the kubelet's probes
        # come from the pod's node, which NetworkPolicy does not filter, so they need no rule.
        for rule in policy.get("ingress", []):
            c.expect(bool(rule.get("from")), f"an ingress rule admits every source (ports {[p.get('port') for p in rule.get('ports', [])]})")
            c.expect(bool(rule.get("ports")), "an ingress rule admits every port")
            for peer in rule.get("from", []):
                cidr = peer.get("ipBlock", {}).get("cidr")
                c.expect(cidr not in ("0.0.0.0/0", "::/0"), f"an ingress rule admits every address ({cidr})")
        for port, what in ((53, "DNS"), (5432, "PostgreSQL"), (6379, "Redis"), (443, "the gateway"), (4317, "the OTLP collector")):
            c.expect(port in egress_ports, f"no egress to {what} (port {port})")
        for rule in policy.get("egress", []) + policy.get("ingress", []):
            for peer in rule.get("to", []) + rule.get("from", []):
                peer_labels = peer.get("podSelector", {}).get("matchLabels", {})
                c.expect(not any(pod_labels.get(k) == v for k, v in peer_labels.items()),
                         f"a NetworkPolicy peer demands the coordinator's own labels: {peer_labels}")

    return c.problems


def main(arguments):
    problems = []
    for argument in arguments:
        name, _, path = argument.partition("=")
        with open(path) as f:
            objects = [o for o in yaml.safe_load_all(f) if o]
        found = check(name, objects)
        problems.extend(found)
        if not found:
            print(f"k8s-check: {name}: every property holds ({len(objects)} objects)")
    for problem in problems:
        print(f"k8s-check: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
