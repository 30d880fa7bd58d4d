#!/usr/bin/env bash
# The GPU check of the tensorrt target, for a GPU machine with NVIDIA's Triton container (25.08), run from the
# project root inside it, in under 8 minutes (each step has its own time limit):
#
#   docker run --gpus 1 --rm -v "$PWD:/opt/mtasr" -w /opt/mtasr mtasr-serve-dev bash bench/gpu_check.sh artifacts/model
#
# 1. a tensorrt repository from the exported graphs, its fp16 plans (trtexec), each plan against the fp32 ONNX
#    graph on the same inputs (max abs per graph; needs polygraphy: pip install polygraphy);
# 2. tritonserver on it, perf_analyzer over gRPC at concurrency 1..16 (perf_analyzer from the Triton SDK
#    container or the tritonclient wheel: MTASR_PERF_ANALYZER=/path/to/perf_analyzer);
# 3. the largest number of real-time 2-3 speaker sessions with p99 under 250 ms (client.loadgen).
# Not run on the machines this project is built on (no GPU, no TensorRT there).
set -euo pipefail
GRAPHS=${1:?usage: bash bench/gpu_check.sh <exported graphs folder>}
WORK=${WORK:-/tmp/mtasr-gpu-check}
PY=${PY:-/opt/venv/bin/python}
TRITON_DIR=${TRITON_DIR:-/opt/tritonserver}
export MTASR_ADMIN_KEY=${MTASR_ADMIN_KEY:-$("$PY" -c 'import secrets; print(secrets.token_urlsafe(24))')}
rm -rf "$WORK" && mkdir -p "$WORK"

echo "== 1. TensorRT plans vs ONNX (fp16 vs fp32)"
timeout 60 "$PY" -m model_repository.build --graphs "$GRAPHS" --target tensorrt --out "$WORK/repo" --copy
timeout 240 bash "$WORK/repo/build_plans.sh" > "$WORK/trtexec.log"
timeout 60 "$PY" -m model_repository.tensorrt check --repo "$WORK/repo"

echo "== 2. perf_analyzer"
"$PY" -m client.server --repo "$WORK/repo" --triton-dir "$TRITON_DIR" --serve-venv "$(dirname "$(dirname "$PY")")" \
    --grpc-port 18001 --http-port 18000 --metrics-port 18002 --admin-key-out "$WORK/admin-key" > "$WORK/server.out" 2>&1 &
SERVER=$!
trap 'kill -TERM "$SERVER" 2>/dev/null; wait "$SERVER" 2>/dev/null || true' EXIT
for _ in $(seq 120); do grep -q "tritonserver ready" "$WORK/server.out" && break; sleep 1; done
timeout 150 "$PY" -m bench.perf --graphs "$GRAPHS" --url 127.0.0.1:18001 --concurrency 1:16:3 --seconds 10 \
    --interval-ms 4000 --out "$WORK/perf.csv"

echo "== 3. real-time sessions"
timeout 120 "$PY" -m client.loadgen --url 127.0.0.1:18001 --max 128 --seconds 8 --budget-ms 250 --no-progress \
    --out "$WORK/loadgen.json"
