"""Kubernetes manifests for the served stack, generated (and committed as deploy/k8s/mtasr.yaml with a drift test):

- Triton replicas: a StatefulSet (stable names, so the edge can address each replica) with a headless Service,
  readiness on Triton's ready endpoint, a PodDisruptionBudget, scaling on `mtasr_active_sessions` (a Prometheus
  adapter must expose it as a pods metric);
- the WebSocket gateway (`python -m gateway`: the page, the native protocol, the OpenAI-compatible mode) as a second
  container of each replica's pod, talking to its own Triton on localhost, reached through the edge;
- the edge: an nginx Deployment whose ConfigMap holds deploy/edge/mtasr-edge.conf.template as it is (nginx's
  image renders it from the MTASR_EDGE_* environment at start) and a LoadBalancer Service.

    python -m edge.k8s [--replicas 2] [--image mtasr-serve:latest] > deploy/k8s/mtasr.yaml
    python -m edge.k8s --write           # regenerate the committed file
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from edge.render import TEMPLATE, EdgeSettings, upstream_lines

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "deploy" / "k8s" / "mtasr.yaml"
APP = "mtasr"
TRITON = f"{APP}-triton"
HEADLESS = f"{TRITON}-headless"
EDGE = f"{APP}-edge"
NGINX_IMAGE = "nginx:1.27.3"
PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}
EDGE_PORT = 8443
GATEWAY_PORT = 8080
SECRET = f"{APP}-keys"  # keys admin-key (Triton's admin protocols) and api-key (inference, at the edge)
TLS_SECRET = f"{EDGE}-tls"  # a kubernetes.io/tls Secret with the edge's certificate


def replica_addresses(replicas: int, namespace: str, port: int = PORTS["grpc"]) -> list[str]:
    return [f"{TRITON}-{i}.{HEADLESS}.{namespace}.svc.cluster.local:{port}" for i in range(replicas)]


def gateway_container(image: str) -> dict:
    """The gateway beside Triton in the pod: same image, its own command; the API key from the keys Secret."""
    return {
        "name": "gateway", "image": image,
        "command": ["/opt/venv/bin/python", "-m", "gateway", "--triton", f"127.0.0.1:{PORTS['grpc']}",
                    "--address", "0.0.0.0", "--port", str(GATEWAY_PORT), "--client-ip-header", "X-Real-IP"],
        "ports": [{"name": "ws", "containerPort": GATEWAY_PORT}],
        "env": [{"name": "MTASR_API_KEY", "valueFrom": {"secretKeyRef": {"name": SECRET, "key": "api-key"}}}],
        "resources": {"limits": {"memory": "1Gi"}, "requests": {"cpu": "500m", "memory": "256Mi"}},
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": "ws"}, "periodSeconds": 5},
        "securityContext": {"allowPrivilegeEscalation": False, "runAsNonRoot": True},
    }


def manifests(replicas: int = 2, image: str = "mtasr-serve:latest", namespace: str = "default") -> list[dict]:
    labels = {"app.kubernetes.io/name": TRITON}
    edge_labels = {"app.kubernetes.io/name": EDGE}
    probe = {"httpGet": {"path": "/v2/health/ready", "port": "http"}, "periodSeconds": 5, "failureThreshold": 3}
    triton = {
        "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": TRITON, "labels": labels},
        "spec": {
            "serviceName": HEADLESS, "replicas": replicas, "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {
                "terminationGracePeriodSeconds": 40,  # Triton waits up to 30 s for in-flight requests
                "containers": [{
                    "name": "triton", "image": image,
                    "ports": [{"name": k, "containerPort": v} for k, v in PORTS.items()],
                    "env": [{"name": "MTASR_ADMIN_KEY",
                             "valueFrom": {"secretKeyRef": {"name": SECRET, "key": "admin-key"}}}],
                    "resources": {"limits": {"nvidia.com/gpu": 1, "memory": "16Gi"},
                                  "requests": {"cpu": "4", "memory": "8Gi"}},
                    "readinessProbe": probe,
                    "livenessProbe": {"httpGet": {"path": "/v2/health/live", "port": "http"},
                                      "initialDelaySeconds": 60, "periodSeconds": 10},
                    "securityContext": {"allowPrivilegeEscalation": False, "runAsNonRoot": True},
                    # the Python backend moves every BLS tensor through /dev/shm (docs/deploy.md: a full-size step
                    # at 128 rows moves 1.8 GiB); a pod's default is 64 MB
                    "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}],
                }, gateway_container(image)],
                "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}}],
            }},
        },
    }
    headless = {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": HEADLESS, "labels": labels},
        "spec": {"clusterIP": "None", "publishNotReadyAddresses": True, "selector": labels,
                 "ports": [{"name": k, "port": v, "targetPort": k} for k, v in PORTS.items()]
                 + [{"name": "ws", "port": GATEWAY_PORT, "targetPort": "ws"}]},
    }
    pdb = {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": TRITON},
           "spec": {"maxUnavailable": 1, "selector": {"matchLabels": labels}}}
    hpa = {
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": TRITON},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": TRITON},
                 "minReplicas": replicas, "maxReplicas": max(replicas, 8),
                 "metrics": [{"type": "Pods", "pods": {"metric": {"name": "mtasr_active_sessions"},
                                                       "target": {"type": "AverageValue", "averageValue": "24"}}}]},
    }
    settings = EdgeSettings(upstream_lines(replica_addresses(replicas, namespace)), listen=str(EDGE_PORT),
                            gateways=upstream_lines(replica_addresses(replicas, namespace, GATEWAY_PORT)))
    env = [{"name": k, "value": v} for k, v in settings.env().items() if k != "MTASR_EDGE_API_KEY"]
    env.append({"name": "MTASR_EDGE_API_KEY", "valueFrom": {"secretKeyRef": {"name": SECRET, "key": "api-key"}}})
    config = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": EDGE},
              "data": {TEMPLATE.name: TEMPLATE.read_text()}}
    edge = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": EDGE, "labels": edge_labels},
        "spec": {"replicas": 2, "selector": {"matchLabels": edge_labels},
                 "template": {"metadata": {"labels": edge_labels}, "spec": {
                     "containers": [{
                         "name": "nginx", "image": NGINX_IMAGE, "env": env,
                         "ports": [{"name": "grpcs", "containerPort": EDGE_PORT}],
                         "readinessProbe": {"tcpSocket": {"port": EDGE_PORT}, "periodSeconds": 5},
                         "volumeMounts": [{"name": "template", "mountPath": "/etc/nginx/templates", "readOnly": True},
                                          {"name": "tls", "mountPath": "/etc/nginx/tls", "readOnly": True}],
                     }],
                     "volumes": [{"name": "template", "configMap": {"name": EDGE}},
                                 {"name": "tls", "secret": {"secretName": TLS_SECRET}}],
                 }}},
    }
    edge_service = {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": EDGE},
        "spec": {"type": "LoadBalancer", "selector": edge_labels,
                 "ports": [{"name": "grpcs", "port": 443, "targetPort": "grpcs"}]},
    }
    return [triton, headless, pdb, hpa, config, edge, edge_service]


def to_yaml(docs: list[dict]) -> str:
    header = "# Generated by `python -m edge.k8s --write` from edge/k8s.py and deploy/edge/; do not edit.\n"
    return header + "---\n".join(yaml.safe_dump(d, sort_keys=False, width=120) for d in docs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m edge.k8s", description=__doc__.split("\n")[0])
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--image", default="mtasr-serve:latest")
    ap.add_argument("--namespace", default="default")
    ap.add_argument("--write", action="store_true", help=f"write {COMMITTED.relative_to(ROOT)}")
    args = ap.parse_args(argv)
    text = to_yaml(manifests(args.replicas, args.image, args.namespace))
    if args.write:
        COMMITTED.parent.mkdir(parents=True, exist_ok=True)
        COMMITTED.write_text(text)
        print(COMMITTED.relative_to(ROOT))
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
