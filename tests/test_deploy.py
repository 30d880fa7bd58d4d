"""Deployment files, checked offline: Dockerfiles (hadolint), compose and Kubernetes manifests (schema-validated
with kubernetes-validate, generated from edge/k8s.py with a drift test), all using the one edge template."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from edge import k8s
from edge.render import TEMPLATE, template_variables

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = sorted((ROOT / "docker").glob("Dockerfile.*"))
HADOLINT = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfiles_pass_hadolint(dockerfile):
    proc = subprocess.run([HADOLINT, str(dockerfile)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_serve_image_pins_a_triton_past_the_advisories():
    text = (ROOT / "docker" / "Dockerfile.serve").read_text()
    year, month = map(int, re.search(r"^ARG TRITON_VERSION=(\d+)\.(\d+)$", text, re.M).groups())
    assert (year, month) >= (25, 7)
    assert "FROM nvcr.io/nvidia/tritonserver:${TRITON_VERSION}-py3" in text
    assert "docker/requirements-serve.txt" in text  # the same pins as the local .venv-serve


def test_compose_edge_uses_the_template_and_every_variable():
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    edge = compose["services"]["edge"]
    assert set(edge["environment"]) == template_variables()
    mounts = [v.split(":")[:2] for v in edge["volumes"]]
    assert ["../deploy/edge/mtasr-edge.conf.template", f"/etc/nginx/templates/{TEMPLATE.name}"] in mounts
    assert {"replica-0", "replica-1"} <= set(compose["services"])


def test_k8s_manifests_are_generated_and_valid():
    text = k8s.to_yaml(k8s.manifests())
    assert (ROOT / "deploy" / "k8s" / "mtasr.yaml").read_text() == text, "run: python -m edge.k8s --write"
    docs = list(yaml.safe_load_all(text))
    for doc in docs:
        kubernetes_validate.validate(doc, "1.34.0", strict=True)
    by_kind = {d["kind"]: d for d in docs}
    assert set(by_kind) >= {"StatefulSet", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler", "ConfigMap",
                            "Deployment"}
    assert by_kind["ConfigMap"]["data"][TEMPLATE.name] == TEMPLATE.read_text()
    env = {e["name"] for e in by_kind["Deployment"]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env == template_variables()
    probe = by_kind["StatefulSet"]["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
    assert probe["httpGet"]["path"] == "/v2/health/ready"


def test_k8s_validation_catches_a_broken_manifest():
    broken = k8s.manifests()[0]
    broken["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, "1.34.0", strict=True)
