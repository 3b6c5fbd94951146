#!/usr/bin/env bash
# Static validation of everything that ships: Dockerfiles, compose, Kubernetes, CI workflows.
# No Docker engine or cluster is needed; each tool below runs offline from .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${VENV:-.venv}/bin"
K8S_VERSION="${K8S_VERSION:-1.32.0}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

step() { printf '\n== %s\n' "$*"; }

step "hadolint $("$BIN/hadolint" --version | head -n1): Dockerfile.api Dockerfile.worker"
"$BIN/hadolint" --failure-threshold info Dockerfile.api Dockerfile.worker

step "check-jsonschema (vendor.compose-spec): docker-compose.yml"
"$BIN/check-jsonschema" --builtin-schema vendor.compose-spec docker-compose.yml

step "check-jsonschema (vendor.github-workflows): .github/workflows/*.yml"
"$BIN/check-jsonschema" --builtin-schema vendor.github-workflows .github/workflows/*.yml

step "kubectl kustomize k8s | kubernetes-validate --strict -k $K8S_VERSION"
kubectl kustomize k8s > "$work/rendered.yaml"
"$BIN/python" - "$work" <<'PY'
import pathlib, sys, yaml
work = pathlib.Path(sys.argv[1])
docs = [d for d in yaml.safe_load_all((work / "rendered.yaml").read_text()) if d]
core = [d for d in docs if not d["apiVersion"].startswith("keda.sh/")]
keda = [d for d in docs if d["apiVersion"].startswith("keda.sh/")]
(work / "core.yaml").write_text(yaml.safe_dump_all(core))
for i, doc in enumerate(keda):
    (work / f"keda-{i}.json").write_text(__import__("json").dumps(doc))
print(f"{len(core)} core resources, {len(keda)} KEDA resources")
PY
output=$("$BIN/kubernetes-validate" --strict -k "$K8S_VERSION" "$work/core.yaml" 2>&1) || { echo "$output"; exit 1; }
echo "$output"
if grep -q -E "^(WARN|ERROR)" <<<"$output"; then echo "kubernetes-validate reported findings"; exit 1; fi

step "check-jsonschema (k8s/schemas/keda.schema.json): KEDA ScaledObject, TriggerAuthentication"
"$BIN/check-jsonschema" --schemafile k8s/schemas/keda.schema.json "$work"/keda-*.json

printf '\nall deploy checks passed\n'
