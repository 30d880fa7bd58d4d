# Quick start: `make demo` (issue 3) and `make test`. Everything runs in the project-local .venv.
SHELL := /bin/bash
PY := .venv/bin/python
STAMP := .venv/.setup-stamp
SIZE ?= tiny
ifeq ($(FULL),1)
SIZE := full
endif

.PHONY: setup demo test test-unit parity export lint clean train-demo eval espeak nginx chromium reliability cluster-test

# .venv for export/tests + .venv-serve and .triton/ for the server (serve-setup, below).
setup: $(STAMP) serve-setup

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	# CPU torch first (a local wheel here); the constraints keep pip from pulling a CUDA build later.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[export,client,dev,eval,gateway]'
	touch $(STAMP)

# Export (tiny random-init, or DIAR_NEMO=... ASR_NEMO=...), serve on a local tritonserver, stream a committed
# two-speaker sample in real time with the live transcript, write SegLST/RTTM/PNG to artifacts/demo_out.
demo: setup
	$(PY) -m client.demo

# Every tier (what CI runs); test-unit: no tritonserver, nginx, browser or NeMo export (the rule: tests/conftest.py).
test: setup espeak nginx chromium
	$(PY) -m pytest -q --durations=15 --cpu-durations=15

test-unit: $(STAMP)
	$(PY) -m pytest -q -n 2 -m "not export and not server" --durations=10

# ONNX Runtime + numpy vs NeMo PyTorch streaming, chained; FULL=1 for the full-size architectures. Also fp16 and int8
# copies against fp32 (reported: max abs per graph, the int8 pipeline's token agreement; not judged).
parity: setup
	$(PY) -m export.parity --size $(SIZE) --fp16 --int8

# Export real checkpoints: make export DIAR_NEMO=... ASR_NEMO=... OUT=... (PRESETS="70,13 70,0") [PRECISION=int8:
# also the int8 copies of the diarizer and encoder graphs that `make serve PRECISION=int8` serves]
OUT ?= artifacts/model
PRESETS ?= all
PRECISION ?= fp32
export: setup
	$(PY) -m export --nemo $(DIAR_NEMO) $(ASR_NEMO) --out $(OUT) --presets $(PRESETS) --fp16 \
		$(if $(filter int8,$(PRECISION)),--int8)

lint: $(STAMP)
	.venv/bin/ruff check mtasr export tests demo_models client bench model_repository reliability edge gateway

# Synthetic speech for the demo models (Debian package).
espeak:
	command -v espeak-ng >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng)

# The gRPC edge (Debian's nginx 1.22) for the local cluster test; openssl makes its test certificates.
nginx:
	command -v nginx >/dev/null && command -v openssl >/dev/null || (apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx openssl)

# Headless Chromium + its driver (Debian) for the gateway's browser test.
chromium:
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || (apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver)

# Train the small demo models on CPU (<= 60 min on 2 cores): writes demo_models/checkpoints/{diar,asr}_demo.nemo
# and training.json; the shipped copies are demo_models/{diar,asr}_demo.nemo.
train-demo: setup espeak
	$(PY) -m demo_models.train --out demo_models/checkpoints --parallel
	cp demo_models/checkpoints/diar_demo.nemo demo_models/checkpoints/asr_demo.nemo demo_models/

# Held-out sessions through NeMo's streaming multitalker flow: cpWER (meeteval) and DER (0.25 s collar).
# PRECISION=int8: the served stack also with the int8 graphs, its line beside fp32's and the delta. PRECISION=fp16:
# also the in-process pipeline with the fp32 and with the fp16 graphs (the GPU target's, on ONNX Runtime CPU).
EVAL_SESSIONS ?= 20
eval: setup espeak
	$(PY) -m demo_models.evaluate --sessions $(EVAL_SESSIONS) --precision $(PRECISION)

# The GPU path's checks that need no GPU, on the demo models: every graph's output shapes follow from its input
# shapes; fp16 graphs against fp32 (tokens, eval cpWER, largest |x| of every tensor vs 65504). Last line:
# `gpu-static: shapes_from_inputs=<k>/<graphs> fp16_tokens=<same>/<total> fp16_cpwer_delta=<x> fp16_headroom=<x>`.
.PHONY: gpu-static
gpu-static: setup espeak
	$(PY) -m export.gpu_static --sessions $(EVAL_SESSIONS)

# The fault suite against real tritonservers (identity, ownership, admission, expiry, bad input, faults, soak):
# one line per case, then `reliability: cases=P/N ...`; non-zero exit on any failure. `make test` runs its fast core.
reliability: setup
	$(PY) -m reliability

# nginx (deploy/edge template: TLS, session affinity, limits) + 2 local tritonservers: 16 sessions, one replica
# killed mid-run, restarted. Last line `cluster: replicas=2 sessions=N split=a/b equal=N/N failover_ms=...`.
cluster-test: setup nginx
	$(PY) -m edge.cluster

clean:
	rm -rf artifacts .pytest_cache

# --- Serving: Triton without Docker. .venv-serve keeps numpy 1.x (Triton 2.51's Python backend BLS breaks on
# numpy 2); .triton/ holds tritonserver + the Python backend from the nvidia-pytriton wheel (not triton/: that
# folder would shadow the `triton` Python package for torch when Python runs from the repository root).
SERVE_VENV := .venv-serve
SERVE_PY := $(SERVE_VENV)/bin/python
SERVE_STAMP := $(SERVE_VENV)/.setup-stamp
SERVE_REQUIREMENTS := docker/requirements-serve.txt
TRITON_DIR := .triton
# make serve [GRAPHS=<exported folder>] [TARGET=cpu|gpu] [PRECISION=fp32|int8] [REPO=...] [PRESET=70_13]
#   [SPEAKER_MODE=kernel|masked]
#   [ADDRESS=127.0.0.1] [MAX_SESSIONS=32] [IDLE_TIMEOUT_S=5] [TIMING=audio|nemo] [API_KEY_FILE=...]
#   [TLS_CERT=... TLS_KEY=...] [DIARIZATION_PRESET=low|ultra_low|high|very_high] [GATEWAY_PORT=8080]
# GRAPHS defaults to the folder `make demo` exported (real checkpoints, else the shipped demo models, else tiny).
GRAPHS ?= $(if $(DIAR_NEMO),artifacts/demo_real,$(if $(wildcard demo_models/asr_demo.nemo),artifacts/demo_trained,artifacts/demo))
TARGET ?= cpu
REPO ?= artifacts/repo
PRESET ?=
SPEAKER_MODE ?= kernel
HTTP_PORT ?= 8000
GRPC_PORT ?= 8001
METRICS_PORT ?= 8002
ADDRESS ?= 127.0.0.1
MAX_SESSIONS ?= 32
IDLE_TIMEOUT_S ?= 5
TIMING ?= audio
API_KEY_FILE ?=
TLS_CERT ?=
TLS_KEY ?=
DIARIZATION_PRESET ?= low
# The WebSocket gateway beside tritonserver (page at http://127.0.0.1:8080/); GATEWAY_PORT= (empty): none.
GATEWAY_PORT ?= 8080

.PHONY: serve-setup serve

serve-setup: $(SERVE_STAMP)

$(SERVE_STAMP): pyproject.toml $(SERVE_REQUIREMENTS) docker/install_triton_local.sh docker/install_perf_analyzer.sh
	test -x $(SERVE_PY) || python3 -m venv $(SERVE_VENV)
	echo '*' > $(SERVE_VENV)/.gitignore
	$(SERVE_PY) -m pip install -q --upgrade pip
	$(SERVE_PY) -m pip install -q -r $(SERVE_REQUIREMENTS)
	$(SERVE_PY) -m pip install -q --no-deps -e .
	bash docker/install_triton_local.sh $(SERVE_PY) $(TRITON_DIR)
	bash docker/install_perf_analyzer.sh $(SERVE_PY) $(TRITON_DIR)
	touch $(SERVE_STAMP)


serve: serve-setup
	@test -f $(GRAPHS)/manifest.json || { echo "make serve: no exported graphs in $(GRAPHS): run \`make demo\` or give GRAPHS=<folder from python -m export>" >&2; exit 2; }
	$(SERVE_PY) -m model_repository.build --graphs $(GRAPHS) --target $(TARGET) --out $(REPO) \
		$(if $(PRESET),--preset $(PRESET)) --speaker-mode $(SPEAKER_MODE) --precision $(PRECISION) \
		--max-sessions $(MAX_SESSIONS) --idle-timeout-s $(IDLE_TIMEOUT_S) --timing $(TIMING) \
		--diarization-preset $(DIARIZATION_PRESET)
	$(SERVE_PY) -m client.server --repo $(REPO) --address $(ADDRESS) --http-port $(HTTP_PORT) \
		--grpc-port $(GRPC_PORT) --metrics-port $(METRICS_PORT) $(if $(API_KEY_FILE),--api-key-file $(API_KEY_FILE)) \
		$(if $(TLS_CERT),--tls-cert $(TLS_CERT) --tls-key $(TLS_KEY)) $(if $(GATEWAY_PORT),--gateway-port $(GATEWAY_PORT))

# --- Benchmarks (issue 4). Figures, not tests: see BENCHMARKS.md. FULL=1 adds the full-size parts (exports the
# full random-init graphs into artifacts/bench_full if missing: ~12 GB disk, ~13 GB RAM, tens of minutes).
.PHONY: bench perf
bench: setup
	$(PY) -m bench.run $(if $(filter 1,$(FULL)),--full)

# perf_analyzer sweep over gRPC against `multitalker` (tiny graphs unless GRAPHS=...): bench/perf.csv.
PERF_GRAPHS ?= artifacts/bench_tiny
CONCURRENCY ?= 1:8:1
perf: setup
	test -f $(PERF_GRAPHS)/manifest.json || $(PY) -m export --random-init tiny --out $(PERF_GRAPHS) --presets 70,13
	$(PY) -m bench.perf --graphs $(PERF_GRAPHS) --concurrency $(CONCURRENCY) --out bench/perf.csv

# Host-side capacity (issue 21): the served pipeline over graphs that cost nothing, at full size, 64-1024 sessions
# with 160 ms and 1.12 s pieces, one 4-hour session's flatness, and a real tritonserver's CPU per session-second on
# tiny graphs; results into bench/results.json (`capacity`) and BENCHMARKS.md. Last line `capacity: sessions=1024 ...`.
.PHONY: capacity device-check
CAPACITY_GRAPHS ?= artifacts/bench_tiny
capacity: setup
	test -f $(CAPACITY_GRAPHS)/manifest.json || $(PY) -m export --random-init tiny --out $(CAPACITY_GRAPHS) --presets 70,13
	$(PY) -m bench.capacity --server-graphs $(CAPACITY_GRAPHS) --results bench/results.json

# On a GPU machine without containers (CuPy + torch, no TensorRT / ONNX Runtime GPU / Triton): the CuPy-backed
# pools, speaker cache, features, decoder and engine against numpy, each part time-limited (see bench/device_check.py).
DEVICE_XP ?= cupy
device-check:
	python3 -m bench.device_check --xp $(DEVICE_XP)
