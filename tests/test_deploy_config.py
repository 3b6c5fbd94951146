"""Deploy files may only set environment variables that are real settings of the app."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
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
OUR_IMAGES = ("thumbnailer-api", "thumbnailer-worker", "Dockerfile.api", "Dockerfile.worker")


def compose_variables() -> set[str]:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    names: set[str] = set()
    for service in compose["services"].values():
        build = service.get("build", {})
        if isinstance(build, dict) and build.get("dockerfile") in OUR_IMAGES:
            names |= set(service.get("environment", {}))
    return names


def containers(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    spec = doc.get("spec", {}).get("template", {}).get("spec", {})
    yield from spec.get("containers", [])


def kubernetes_variables(rendered: str) -> set[str]:
    names: set[str] = set()
    for doc in yaml.safe_load_all(rendered):
        if not doc:
            continue
        if doc["kind"] == "ConfigMap":
            names |= set(doc.get("data", {}))
        if doc["kind"] == "Secret":
            names |= set(doc.get("stringData", {})) | set(doc.get("data", {}))
        for container in containers(doc):
            names |= {entry["name"] for entry in container.get("env", [])}
    return names


def dockerfile_variables() -> set[str]:
    names: set[str] = set()
    for dockerfile in ("Dockerfile.api", "Dockerfile.worker"):
        text = (ROOT / dockerfile).read_text().replace("\\\n", " ")
        final_stage = text.rsplit("\nFROM ", 1)[1]
        for line in final_stage.splitlines():
            if line.startswith("ENV "):
                names |= {pair.split("=", 1)[0] for pair in line[4:].split()}
    return names - {"PATH", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE"}


def test_compose_sets_only_real_settings() -> None:
    names = compose_variables()
    assert {"DATABASE_URL", "RABBITMQ_URL", "STORAGE_PATH"} <= names
    assert names <= SETTINGS, names - SETTINGS


def test_dockerfiles_set_only_real_settings() -> None:
    names = dockerfile_variables()
    assert "STORAGE_PATH" in names
    assert names <= SETTINGS, names - SETTINGS


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kubernetes_sets_only_real_settings() -> None:
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(ROOT / "k8s")], check=True, capture_output=True, text=True
    ).stdout
    names = kubernetes_variables(rendered)
    assert {"DATABASE_URL", "RABBITMQ_URL", "WORKER_CONCURRENCY"} <= names
    assert names <= SETTINGS, names - SETTINGS


def test_keda_scales_on_the_configured_queue() -> None:
    keda = list(yaml.safe_load_all((ROOT / "k8s" / "keda.yaml").read_text()))
    scaled = next(doc for doc in keda if doc["kind"] == "ScaledObject")
    config = yaml.safe_load((ROOT / "k8s" / "configmap.yaml").read_text())
    assert scaled["spec"]["triggers"][0]["metadata"]["queueName"] == config["data"]["QUEUE_NAME"]


def test_env_example_and_readme_document_every_setting() -> None:
    example = (ROOT / ".env.example").read_text()
    readme = (ROOT / "README.md").read_text()
    settings_lines = [line for line in example.splitlines() if line and not line.startswith("#")]
    documented = {line.split("=", 1)[0] for line in settings_lines}
    assert documented == SETTINGS
    missing = {name for name in SETTINGS if f"`{name}`" not in readme}
    assert not missing, missing


def pinned(path: Path) -> dict[str, str]:
    pins = {}
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
