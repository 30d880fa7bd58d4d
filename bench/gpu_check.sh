#!/usr/bin/env bash
# The container check of the tensorrt target, for a host with an NVIDIA GPU, Docker and the NVIDIA container
# toolkit (for a GPU host without a container runtime see the device check in docs/deploy.md). From the project
# root, with an exported graphs folder inside it (python -m export ... --fp16):
#
#   bash bench/gpu_check.sh artifacts/model
#
# On the host it builds the dev image (docker/Dockerfile.serve, target dev: Triton + TensorRT's Python package +
# polygraphy + perf_analyzer), then runs itself in that image twice, the project mounted at /opt/mtasr and
# $WORK (default artifacts/gpu_check) at /work:
#   plans  a tensorrt repository from the graphs and its plans, built once (kept while newer than their graphs)
#          with a timing cache and builder optimisation level 3 (model_repository.tensorrt); time limit
#          PLAN_TIMEOUT_S, sized from published fp16 build times (30-60 min per engine on an RTX 3090, 30-44 min
#          per engine on an L4 at level 5: docs/deploy.md) for two engines;
#   check  under 8 minutes, each step limited: every plan against ONNX Runtime at the profile's min, opt and max
#          shapes; tritonserver on the repository and perf_analyzer over gRPC at concurrency 1..16; the largest
#          number of real-time 2-3 speaker sessions with p99 under 250 ms (client.loadgen).
# Figures land in $WORK (tensorrt_check.json, perf.csv, loadgen.json, the logs). Not run on the machines this
# project is built on (no GPU, no Docker engine there): docs/deploy.md says what has and has not run.
set -euo pipefail

IMAGE=${IMAGE:-mtasr-serve-dev}
SHM_SIZE=${SHM_SIZE:-8g}  # /dev/shm for the Python backend's BLS tensors (Docker's default is 64 MB)
PLAN_TIMEOUT_S=${PLAN_TIMEOUT_S:-5400}
CHECK_TIMEOUT_S=${CHECK_TIMEOUT_S:-480}
BUILD_TIMEOUT_S=${BUILD_TIMEOUT_S:-1800}  # the image pull (~10 GB) and pip installs

host() {
    local graphs=${1:?usage: bash bench/gpu_check.sh <exported graphs folder inside the project>}
    [ -f "$graphs/manifest.json" ] || { echo "gpu_check: no exported graphs in $graphs" >&2; exit 2; }
    local work=${WORK:-$PWD/artifacts/gpu_check}
    mkdir -p "$work"
    timeout "$BUILD_TIMEOUT_S" docker build -f docker/Dockerfile.serve --target dev -t "$IMAGE" .
    in_image "$work" "$PLAN_TIMEOUT_S" plans "$graphs"
    in_image "$work" "$CHECK_TIMEOUT_S" check "$graphs"
}

in_image() {  # WORK LIMIT_S STEP GRAPHS: this script inside the dev image, its own entrypoint overridden
    local work=$1 limit=$2
    shift 2
    timeout "$limit" docker run --gpus 1 --rm --shm-size="$SHM_SIZE" --user "$(id -u):$(id -g)" -e HOME=/tmp \
        -e MAX_ROWS="${MAX_ROWS:-}" -v "$PWD:/opt/mtasr" -v "$work:/work" -w /opt/mtasr \
        --entrypoint bash "$IMAGE" bench/gpu_check.sh --inside "$@"
}

PY=${PY:-/opt/venv/bin/python}

plans() {
    local graphs=$1
    # (re)build the repository only for new graphs: rebuilding it would drop the plans built from the same ones
    if [ ! -f /work/repo/build_plans.sh ] || [ -n "$(find "$graphs" -newer /work/repo/build_plans.sh -print -quit)" ]
    then
        timeout 120 "$PY" -m model_repository.build --graphs "$graphs" --target tensorrt --out /work/repo --copy
    fi
    TIMING_CACHE=/work/timing.cache bash /work/repo/build_plans.sh 2>&1 | tee /work/trtexec.log
}

check() {
    local graphs=$1
    export MTASR_ADMIN_KEY=${MTASR_ADMIN_KEY:-$("$PY" -c 'import secrets; print(secrets.token_urlsafe(24))')}
    echo "== 1. TensorRT plans vs ONNX Runtime at min, opt and max shapes"
    timeout 150 "$PY" -m model_repository.tensorrt check --repo /work/repo --graphs "$graphs" \
        ${MAX_ROWS:+--max-rows "$MAX_ROWS"} --out /work/tensorrt_check.json

    echo "== 2. perf_analyzer"
    "$PY" -m client.server --repo /work/repo --triton-dir /opt/tritonserver --serve-venv /opt/venv \
        --grpc-port 18001 --http-port 18000 --metrics-port 18002 --admin-key-out /work/admin-key \
        > /work/server.out 2>&1 &
    local server=$!
    trap 'kill -TERM "$server" 2>/dev/null; wait "$server" 2>/dev/null || true' EXIT
    for _ in $(seq 60); do grep -q "tritonserver ready" /work/server.out && break; sleep 1; done
    grep -q "tritonserver ready" /work/server.out || { tail -50 /work/server.out >&2; exit 1; }
    timeout 120 "$PY" -m bench.perf --graphs "$graphs" --url 127.0.0.1:18001 --concurrency 1:16:3 --seconds 10 \
        --interval-ms 4000 --out /work/perf.csv

    echo "== 3. real-time sessions"
    timeout 100 "$PY" -m client.loadgen --url 127.0.0.1:18001 --max 128 --seconds 8 --budget-ms 250 --no-progress \
        --out /work/loadgen.json
}

if [ "${1:-}" = "--inside" ]; then
    step=${2:?--inside plans|check GRAPHS}
    shift 2
    case $step in
        plans) plans "$@" ;;
        check) check "$@" ;;
        *) echo "gpu_check: unknown step $step" >&2; exit 2 ;;
    esac
else
    host "$@"
fi
