"""bench/gpu_check.sh against the Dockerfile it builds (parsed, offline: no Docker engine here): the image it runs is
the one it builds, from a target the Dockerfile has, with the tools its steps import; the entrypoint is overridden,
/dev/shm is sized for the Python backend's BLS tensors; the Triton pin is past the Python-backend fixes."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import numpy as np

from model_repository.triton_config import graph_max_batch
from mtasr.spec import PUBLIC_CHECKPOINT_DIMS, graph_specs

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.sh"
UNITS = {"k": 2**10, "m": 2**20, "g": 2**30}


def commands(text: str, program: str) -> list[list[str]]:
    """Every `<program> ...` command line of a shell script (continuations joined, up to `;`/`&&`/`|`), split."""
    joined = re.sub(r"\\\n\s*", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.split("#", 1)[0] if not line.lstrip().startswith("#") else ""
        for m in re.finditer(rf"(?:^|[\s;&|(]){program}\s+(?:build|run)\b[^;&|\n]*", line):
            out.append(shlex.split(m.group(0).strip()))
    return out


def defaults(text: str) -> dict[str, str]:
    """`NAME=${NAME:-value}` defaults of the script."""
    return dict(re.findall(r"^(\w+)=\$\{\1:-([^}]*)\}", text, re.M))


def expand(arg: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m.group(1), m.group(0)), arg)


def option(args: list[str], name: str) -> str | None:
    for i, a in enumerate(args):
        if a == name:
            return args[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


def stages(dockerfile: Path) -> list[str]:
    return re.findall(r"^FROM\s+\S+\s+AS\s+(\w+)", dockerfile.read_text(), re.M | re.I)


def stage_text(dockerfile: Path, name: str) -> str:
    parts = re.split(r"^(?=FROM\s)", dockerfile.read_text(), flags=re.M | re.I)
    return next(p for p in parts if re.match(rf"FROM\s+\S+\s+AS\s+{name}\b", p, re.I))


def bls_step_bytes() -> int:
    """Bytes one full-size step moves through BLS at the repository's graph max batch: every diarizer and encoder
    input and output with fixed non-batch dims (caches, speaker cache, FIFO), in and out, float32."""
    dims = PUBLIC_CHECKPOINT_DIMS
    specs = graph_specs(dims)
    total = 0
    for kind in ("diarizer", "encoder"):
        for t in specs[kind].inputs + specs[kind].outputs:
            if all(isinstance(d, int) for d in t.shape[1:]) and -1 not in t.shape[1:]:
                total += int(np.prod(t.shape[1:], dtype=np.int64)) * np.dtype(t.dtype).itemsize
    return total * graph_max_batch(dims)


def test_gpu_check_runs_the_image_it_builds():
    text = SCRIPT.read_text()
    env = defaults(text)
    builds, runs = [c for c in commands(text, "docker") if c[1] == "build"], \
        [c for c in commands(text, "docker") if c[1] == "run"]
    assert len(builds) == 1 and runs
    build = [expand(a, env) for a in builds[0]]
    dockerfile = ROOT / option(build, "-f")
    target, tag = option(build, "--target"), option(build, "-t")
    assert target in stages(dockerfile), f"{dockerfile.name} has no stage {target!r}"
    assert build[-1] == "."  # from the project root, where the COPY paths are
    dev = stage_text(dockerfile, target)
    for run in runs:
        run = [expand(a, env) for a in run]
        assert tag in run, "runs the image it builds"
        after = run[run.index(tag) + 1 :]
        assert option(run, "--entrypoint") == "bash" and after[:2] == ["bench/gpu_check.sh", "--inside"]
        assert option(run, "--gpus") and "--rm" in run
        size = option(run, "--shm-size")
        need = 2 * bls_step_bytes()  # two steps in flight
        assert int(size[:-1]) * UNITS[size[-1].lower()] >= need, f"--shm-size {size} < {need / 2**30:.1f} GiB"
        assert "/opt/mtasr" in option(run, "-w") and any(v.endswith(":/opt/mtasr") for v in run if ":" in v)
    # the steps the script runs inside exist, and their tools are in the image
    assert re.search(r"^\s+plans\) plans", text, re.M) and re.search(r"^\s+check\) check", text, re.M)
    requirements = (ROOT / "docker" / "requirements-dev.txt").read_text()
    assert "docker/requirements-dev.txt" in dev and re.search(r"^polygraphy==", requirements, re.M)
    assert re.search(r"^perf-analyzer==", requirements, re.M) and "MTASR_PERF_ANALYZER" in dev
    assert re.search(r"pip install [^\n]*\"tensorrt-\$\{TENSORRT_CUDA\}==\$\{version\}\.\*\"", dev)
    assert "trtexec" in dev


def test_gpu_check_time_limits():
    text = SCRIPT.read_text()
    env = defaults(text)
    assert int(env["CHECK_TIMEOUT_S"]) <= 480  # the check: under 8 minutes
    body = re.search(r"^check\(\) \{\n(.*?)^\}", text, re.M | re.S).group(1)
    limits = [int(x) for x in re.findall(r"\btimeout (\d+) ", body)] + [int(x) for x in re.findall(r"seq (\d+)", body)]
    assert len(limits) == 4 and sum(limits) <= int(env["CHECK_TIMEOUT_S"])  # its steps and the wait fit its limit
    assert int(env["PLAN_TIMEOUT_S"]) >= 2 * 30 * 60  # two engines at the published 30+ min each
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0


def test_serve_image_is_the_default_target_and_pins_a_fixed_triton():
    dockerfile = ROOT / "docker" / "Dockerfile.serve"
    text = dockerfile.read_text()
    assert stages(dockerfile)[-1] == "serve"  # `docker build` without --target: the served image
    assert "ENTRYPOINT" in stage_text(dockerfile, "serve") and "ENTRYPOINT" not in stage_text(dockerfile, "dev")
    year, month = map(int, re.search(r"^ARG TRITON_VERSION=(\d+)\.(\d+)$", text, re.M).groups())
    assert (year, month) >= (26, 7)  # the Python backend's decoupled-BLS deadlock and use-after-free fixes
    assert text.count("ARG TRITON_VERSION=") == 1


def test_compose_sizes_shared_memory():
    import yaml

    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    size = compose["services"]["replica-0"]["shm_size"]
    assert int(size[:-2]) * UNITS[size[-2].lower()] >= 2 * bls_step_bytes()
