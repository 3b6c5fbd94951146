"""Deploy files agree with the app: only real settings, valid values, matching ports and paths."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterable, Iterator
from fnmatch import fnmatch
from importlib.metadata import distribution
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from thumbnailer.config import Settings

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {name.upper() for name in Settings.model_fields}
# Read by the standard AWS credential chain (obstore's), not by Settings: allowed beside them.
AWS_CHAIN = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}
OUR_DOCKERFILES = ("Dockerfile.api", "Dockerfile.worker")
OUR_IMAGES = ("thumbnailer-api", "thumbnailer-worker")
WORKLOADS = ("Deployment", "Job")


# --- docker-compose.yml -----------------------------------------------------------------------


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment, in either of compose's two forms."""
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(key): str(value) for key, value in env.items()}


def our_services() -> dict[str, dict[str, Any]]:
    """Compose services that run one of our images (built here or named after them)."""
    found = {}
    for name, service in compose()["services"].items():
        build = service.get("build", {})
        dockerfile = build.get("dockerfile") if isinstance(build, dict) else None
        image = str(service.get("image", "")).split(":")[0]
        if dockerfile in OUR_DOCKERFILES or image in OUR_IMAGES:
            found[name] = service
    return found


def compose_variables() -> set[str]:
    names: set[str] = set()
    for service in our_services().values():
        names |= set(environment(service))
    return names


def seconds(duration: str) -> float:
    """Compose durations as used here: 90s, 1m30s."""
    total, number = 0.0, ""
    for char in duration:
        if char.isdigit() or char == ".":
            number += char
        else:
            total += float(number) * {"h": 3600, "m": 60, "s": 1}[char]
            number = ""
    return total


def settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings exactly as the app would build them from this environment (no .env file)."""
    for name in SETTINGS:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings(_env_file=None)


def test_compose_sets_only_real_settings() -> None:
    assert set(our_services()) == {"migrate", "api", "worker"}
    names = compose_variables()
    assert {"DATABASE_URL", "RABBITMQ_URL", "STORAGE_BACKEND", "SHUTDOWN_GRACE_PERIOD"} <= names
    assert names <= SETTINGS | AWS_CHAIN, names - SETTINGS - AWS_CHAIN


def test_compose_values_are_valid_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, service in our_services().items():
        with monkeypatch.context() as patch:
            settings = settings_from(environment(service), patch)
        assert settings.database_url.startswith("postgresql+asyncpg://"), name
        assert settings.storage_backend == "s3", name
        assert settings.s3_bucket in minio_init_command(), name


def minio_init_command() -> str:
    return " ".join(compose()["services"]["minio-init"]["command"])


def test_compose_wiring() -> None:
    services = compose()["services"]
    api, worker, migrate = services["api"], services["worker"], services["migrate"]
    for name in ("postgres", "rabbitmq", "minio"):
        assert "healthcheck" in services[name], name
    for service in (api, worker):
        assert service["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert service["depends_on"]["rabbitmq"]["condition"] == "service_healthy"
        # Images in MinIO: the bucket exists before they start, and no shared volume.
        condition = service["depends_on"]["minio-init"]["condition"]
        assert condition == "service_completed_successfully"
        assert "volumes" not in service
        assert environment(service)["S3_ENDPOINT_URL"] == "http://minio:9000"
    assert services["minio-init"]["depends_on"]["minio"]["condition"] == "service_healthy"
    assert "mc mb --ignore-existing" in minio_init_command()
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert migrate["command"] == ["migrate"]
    assert "minio" in compose()["volumes"]
    # `--scale worker=N` needs neither a fixed name nor a host port.
    assert "container_name" not in worker
    assert "ports" not in worker


def test_compose_worker_outlives_its_grace_period(monkeypatch: pytest.MonkeyPatch) -> None:
    worker = compose()["services"]["worker"]
    grace = settings_from(environment(worker), monkeypatch).shutdown_grace_period
    assert seconds(worker["stop_grace_period"]) >= grace + 30


# --- Dockerfiles ------------------------------------------------------------------------------


def dockerfile_stages(dockerfile: str) -> list[str]:
    text = (ROOT / dockerfile).read_text()
    body = "".join("\n" + line for line in text.splitlines() if not line.startswith("#"))
    return ["FROM " + stage for stage in body.split("\nFROM ")[1:]]


def dockerfile_variables() -> set[str]:
    names: set[str] = set()
    for dockerfile in OUR_DOCKERFILES:
        final_stage = dockerfile_stages(dockerfile)[-1].replace("\\\n", " ")
        for line in final_stage.splitlines():
            if line.startswith("ENV "):
                names |= {pair.split("=", 1)[0] for pair in line[4:].split()}
    return names - {"PATH", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE"}


def test_dockerfiles_set_only_real_settings() -> None:
    names = dockerfile_variables()
    assert {"STORAGE_PATH", "API_PORT", "WORKER_HTTP_PORT"} <= names
    assert names <= SETTINGS, names - SETTINGS


def test_dockerfiles_share_their_builder_stage() -> None:
    """Identical text, so BuildKit builds the dependency layers once for both images."""
    api, worker = (dockerfile_stages(name) for name in OUR_DOCKERFILES)
    assert len(api) == len(worker) == 2
    assert api[0].startswith("FROM python:3.11")
    assert " AS builder" in api[0]
    assert api[0] == worker[0]


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_dockerignore_keeps_out_the_noise_but_nothing_the_images_copy() -> None:
    patterns = dockerignore_patterns()
    assert {".git", ".venv", "tests", "data", ".pytest_cache", "**/__pycache__"} <= set(patterns)
    copied = set()
    for dockerfile in OUR_DOCKERFILES:
        for line in (ROOT / dockerfile).read_text().splitlines():
            parts = line.split()
            if parts[:1] == ["COPY"] and not parts[1].startswith("--"):
                copied |= set(parts[1:-1])
    assert {"requirements.txt", "src", "alembic.ini", "migrations"} <= copied
    for source in copied:
        assert (ROOT / source).exists(), source
        excluded = [p for p in patterns if fnmatch(source, p) or fnmatch(source, p.strip("/"))]
        assert not excluded, (source, excluded)


# --- Kubernetes -------------------------------------------------------------------------------


K8S_BASE = ROOT / "k8s" / "base"
SECRET_EXAMPLE = "secret.example.yaml"


def kustomization_resources() -> list[str]:
    kustomization = yaml.safe_load((K8S_BASE / "kustomization.yaml").read_text())
    resources: list[str] = kustomization["resources"]
    return resources


def example_secret() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((K8S_BASE / SECRET_EXAMPLE).read_text()) if d]


def kustomize_documents() -> list[dict[str, Any]]:
    """The base's resources as written (kubectl-free; the rendered form is tested below), plus
    the example Secret: what runs once the real Secret, made out of band, looks like it."""
    docs = []
    for resource in [*kustomization_resources(), SECRET_EXAMPLE]:
        docs += [d for d in yaml.safe_load_all((K8S_BASE / resource).read_text()) if d]
    return docs


def test_the_example_secret_is_not_deployed() -> None:
    assert SECRET_EXAMPLE not in kustomization_resources()
    rendered_kinds = set()
    for resource in kustomization_resources():
        rendered_kinds |= {
            d["kind"] for d in yaml.safe_load_all((K8S_BASE / resource).read_text()) if d
        }
    assert "Secret" not in rendered_kinds


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = doc["spec"]["template"]["spec"]
    return spec


def containers(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    if doc["kind"] in WORKLOADS:
        spec = pod_spec(doc)
        yield from spec.get("initContainers", [])
        yield from spec["containers"]


def kubernetes_variables(docs: Iterable[dict[str, Any]]) -> set[str]:
    names: set[str] = set()
    for doc in docs:
        if doc["kind"] == "ConfigMap":
            names |= set(doc.get("data", {}))
        if doc["kind"] == "Secret":
            names |= set(doc.get("stringData", {})) | set(doc.get("data", {}))
        for container in containers(doc):
            names |= {entry["name"] for entry in container.get("env", [])}
    return names


def container_environment(docs: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, str]:
    """What a container sees: its envFrom ConfigMaps/Secrets, then its own env entries."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env |= find(docs, "ConfigMap", source["configMapRef"]["name"])["data"]
        if "secretRef" in source:
            env |= find(docs, "Secret", source["secretRef"]["name"])["stringData"]
    env |= {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
    return env


def test_kubernetes_sets_only_real_settings() -> None:
    names = kubernetes_variables(kustomize_documents())
    assert {"DATABASE_URL", "RABBITMQ_URL", "WORKER_CONCURRENCY", "QUEUE_NAME"} <= names
    assert names <= SETTINGS, names - SETTINGS


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_rendered_kubernetes_sets_only_real_settings() -> None:
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(ROOT / "k8s")], check=True, capture_output=True, text=True
    ).stdout
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {
        "thumbnailer"
    }
    assert "Secret" not in {d["kind"] for d in docs}  # made out of band, never shipped
    names = kubernetes_variables(docs)
    assert {"AUTH_MODE", "WORKER_CONCURRENCY", "QUEUE_NAME"} <= names
    assert names <= SETTINGS, names - SETTINGS


def workload_settings(
    docs: list[dict[str, Any]], doc: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> Settings:
    (container,) = pod_spec(doc)["containers"]
    return settings_from(container_environment(docs, container), monkeypatch)


def test_kubernetes_values_are_valid_settings_and_match_the_probes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    docs = kustomize_documents()
    for doc in (d for d in docs if d["kind"] in WORKLOADS):
        with monkeypatch.context() as patch:
            workload_settings(docs, doc, patch)
    api = find(docs, "Deployment", "thumbnailer-api")
    worker = find(docs, "Deployment", "thumbnailer-worker")
    for doc, port_of in ((api, "api_port"), (worker, "worker_http_port")):
        (container,) = pod_spec(doc)["containers"]
        with monkeypatch.context() as patch:
            settings = workload_settings(docs, doc, patch)
            port = getattr(settings, port_of)
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert ports[container[probe]["httpGet"]["port"]] == port, (doc, probe)
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
        # In jwt mode the API's /metrics is on its internal METRICS_PORT, not the public one.
        scraped = settings.metrics_port if doc is api and settings.auth_mode == "jwt" else port
        assert ports.get("metrics", port) == scraped
        annotations = doc["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(scraped)


def test_worker_outlives_its_grace_period(monkeypatch: pytest.MonkeyPatch) -> None:
    docs = kustomize_documents()
    worker = find(docs, "Deployment", "thumbnailer-worker")
    grace = workload_settings(docs, worker, monkeypatch).shutdown_grace_period
    assert pod_spec(worker)["terminationGracePeriodSeconds"] >= grace + 30


def test_pods_are_locked_down() -> None:
    """What the namespace's `restricted` Pod Security level demands, plus a read-only root."""
    docs = kustomize_documents()
    workloads = [d for d in docs if d["kind"] in WORKLOADS]
    assert len(workloads) == 3
    namespace = find(docs, "Namespace", "thumbnailer")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for doc in workloads:
        spec = pod_spec(doc)
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        tmp_volumes = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
        for container in containers(doc):
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert mounts["/tmp"] in tmp_volumes
            assert "resources" in container
            assert "limits" in container["resources"]


def test_storage_is_one_shared_read_write_many_volume(monkeypatch: pytest.MonkeyPatch) -> None:
    docs = kustomize_documents()
    pvc = find(docs, "PersistentVolumeClaim", "thumbnailer-storage")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    for name in ("thumbnailer-api", "thumbnailer-worker"):
        doc = find(docs, "Deployment", name)
        (container,) = pod_spec(doc)["containers"]
        with monkeypatch.context() as patch:
            storage = str(workload_settings(docs, doc, patch).storage_path)
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        claims = {v["name"]: v.get("persistentVolumeClaim", {}).get("claimName") for v in
                  pod_spec(doc)["volumes"]}  # fmt: skip
        assert claims[mounts[storage]] == "thumbnailer-storage", name


def test_network_policies_admit_only_the_ingress_and_monitoring(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    docs = kustomize_documents()
    deny = find(docs, "NetworkPolicy", "default-deny-ingress")
    assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress"]}
    api = find(docs, "Deployment", "thumbnailer-api")
    settings = workload_settings(docs, api, monkeypatch)
    policy = find(docs, "NetworkPolicy", "thumbnailer-api")
    allowed = {
        rule["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]: [
            p["port"] for p in rule["ports"]
        ]
        for rule in policy["spec"]["ingress"]
    }
    assert allowed == {"ingress-nginx": [settings.api_port], "monitoring": [settings.metrics_port]}


def test_autoscalers_own_the_replica_counts() -> None:
    docs = kustomize_documents()
    hpa = find(docs, "HorizontalPodAutoscaler", "thumbnailer-api")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "thumbnailer-api"
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    pdb = find(docs, "PodDisruptionBudget", "thumbnailer-api")
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]
    scaled = find(docs, "ScaledObject", "thumbnailer-worker")
    assert scaled["spec"]["scaleTargetRef"]["name"] == "thumbnailer-worker"
    for name in ("thumbnailer-api", "thumbnailer-worker"):
        assert "replicas" not in find(docs, "Deployment", name)["spec"], name


def test_keda_scales_on_the_configured_queue_with_the_secret_url(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    docs = kustomize_documents()
    worker = find(docs, "Deployment", "thumbnailer-worker")
    settings = workload_settings(docs, worker, monkeypatch)
    scaled = find(docs, "ScaledObject", "thumbnailer-worker")
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "rabbitmq"
    assert trigger["metadata"]["queueName"] == settings.queue_name
    auth = find(docs, "TriggerAuthentication", trigger["authenticationRef"]["name"])
    (ref,) = auth["spec"]["secretTargetRef"]
    assert ref["parameter"] == "host"
    secret = find(docs, "Secret", ref["name"])
    assert secret["stringData"][ref["key"]] == settings.rabbitmq_url


def test_env_example_and_readme_document_every_setting() -> None:
    example = (ROOT / ".env.example").read_text()
    readme = (ROOT / "README.md").read_text()
    settings_lines = [line for line in example.splitlines() if line and not line.startswith("#")]
    documented = {line.split("=", 1)[0] for line in settings_lines}
    assert documented == SETTINGS
    missing = {name for name in SETTINGS if f"`{name}`" not in readme}
    assert not missing, missing


def pinned(path: Path) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith(("#", "-")):
            requirement = Requirement(line)
            pins[canonicalize_name(requirement.name)] = line
    return pins


def test_runtime_requirements_pin_every_transitive_dependency() -> None:
    """The images install requirements.txt with --no-deps, so nothing may be left to resolve."""
    pins = pinned(ROOT / "requirements.txt")
    wanted = [Requirement(line.split("==")[0]) for line in pins.values()]
    seen: set[str] = set()
    while wanted:
        requirement = wanted.pop()
        name = canonicalize_name(requirement.name)
        if name in seen:
            continue
        seen.add(name)
        assert name in pins, f"{name} (needed by the runtime) is not pinned in requirements.txt"
        extras = set(Requirement(pins[name]).extras) | set(requirement.extras)
        for dependency in distribution(name).requires or []:
            child = Requirement(dependency)
            environments = [{"extra": extra} for extra in extras] or [{"extra": ""}]
            if child.marker is None or any(child.marker.evaluate(e) for e in environments):
                wanted.append(child)
    assert len(seen) > 30


# --- the S3 overlay ---------------------------------------------------------------------------


def rendered(path: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        ["kubectl", "kustomize", str(ROOT / path)], check=True, capture_output=True, text=True
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_the_s3_overlay_drops_the_shared_volume_and_sets_the_bucket(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    docs = rendered("k8s/overlays/s3")
    assert not [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
    names = kubernetes_variables(docs)
    assert {"STORAGE_BACKEND", "S3_BUCKET", "S3_REGION", "SIGNED_URL_TTL"} <= names
    assert names <= SETTINGS, names - SETTINGS
    for name in ("thumbnailer-api", "thumbnailer-worker"):
        doc = find(docs, "Deployment", name)
        spec = pod_spec(doc)
        assert spec["serviceAccountName"] == "thumbnailer"
        assert not [v for v in spec["volumes"] if "persistentVolumeClaim" in v], name
        (container,) = spec["containers"]
        assert [m["mountPath"] for m in container["volumeMounts"]] == ["/tmp"], name
        with monkeypatch.context() as patch:
            # The real Secret is made out of band; the example shows what it holds.
            settings = workload_settings([*docs, *example_secret()], doc, patch)
        assert settings.storage_backend == "s3"
        assert settings.s3_bucket
    # The default stays the base as it was: local disk on the ReadWriteMany claim.
    base = rendered("k8s")
    assert find(base, "PersistentVolumeClaim", "thumbnailer-storage")
