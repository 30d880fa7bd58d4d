# Quick start: `make demo` (issue 3) and `make test`. Everything runs in the project-local .venv.
SHELL := /bin/bash
PY := .venv/bin/python
STAMP := .venv/.setup-stamp
SIZE ?= tiny
ifeq ($(FULL),1)
SIZE := full
endif

.PHONY: setup test parity export lint readme-table clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	# CPU torch first (a local wheel here); the constraints keep pip from pulling a CUDA build later.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[export,dev]'
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q

# ONNX Runtime + numpy vs NeMo PyTorch streaming, chained; FULL=1 for the full-size architectures.
parity: setup
	$(PY) -m export.parity --size $(SIZE) --fp16

# Export real checkpoints: make export DIAR_NEMO=... ASR_NEMO=... OUT=... (PRESETS="70,13 70,0")
OUT ?= artifacts/model
PRESETS ?= all
export: setup
	$(PY) -m export --nemo $(DIAR_NEMO) $(ASR_NEMO) --out $(OUT) --presets $(PRESETS) --fp16

lint: setup
	.venv/bin/ruff check mtasr export tests

clean:
	rm -rf artifacts .pytest_cache
