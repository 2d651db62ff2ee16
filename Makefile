# Everything a fresh machine needs goes through these targets.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
VIT := models/vit_b16.onnx

.PHONY: install protos models demo test lint bench image image-gpu image-worker clean testbed-up testbed-down gpu-check

install: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.lock setuptools
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	touch $@

# Regenerate the gRPC code from protos/testbed.proto (a test fails when they disagree).
protos: install
	$(BIN)/python -m grpc_tools.protoc -Icommon=protos --python_out=. --pyi_out=. --grpc_python_out=. protos/testbed.proto

models: $(VIT)

$(VIT): | install
	$(BIN)/orchestrator model vit --out $(VIT)

# The Docker runtime wherever an engine answers (node image built first), the local one otherwise.
demo: install models
	@if docker version >/dev/null 2>&1; then \
	  echo "demo: a Docker engine answers: docker runtime (building the node image first)"; \
	  $(MAKE) --no-print-directory image && $(BIN)/orchestrator run --job jobs/vit_demo.yaml --runtime docker; \
	else \
	  echo "demo: no Docker engine answers: local runtime (plain processes, no isolation)"; \
	  $(BIN)/orchestrator run --job jobs/vit_demo.yaml --runtime local; \
	fi

# The default testbed (devices/edge4.yaml, as docker-compose.yml): one container per device.
testbed-up: install image
	$(BIN)/orchestrator testbed up --devices devices/edge4.yaml

testbed-down: install
	$(BIN)/orchestrator testbed down

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: install lint
	$(BIN)/pytest -q -rs

bench: install models
	$(BIN)/python bench/bench_partition.py
	$(BIN)/python bench/bench_transport.py
	$(BIN)/python bench/bench_pipeline.py
	@if docker version >/dev/null 2>&1; then $(BIN)/python bench/bench_fidelity.py; \
	 else echo 'bench_fidelity: skipped, no Docker engine answers'; fi

# The node image, built offline where no registry answers (see scripts/build_image.sh).
image:
	scripts/build_image.sh

image-gpu:
	scripts/build_image.sh --gpu

# A second Docker engine in a container, joined to a swarm as a worker host (the two-host tests).
image-worker: image
	scripts/build_worker_image.sh

# What this machine proves of the GPU path: discovery, NVML power, the CUDA provider or the CPU
# fallback named in a run's report. No install needed: a GPU host may have only python3 and a few
# packages, and each part says what it could not check (orchestrator/gpu_check.py; exit 3: no GPU).
GPU_CHECK_ARGS ?=
gpu-check:
	@if [ -x $(BIN)/python ]; then py=$(BIN)/python; else py=$(PY); fi; \
	  $$py -m orchestrator.gpu_check $(GPU_CHECK_ARGS)

clean:
	rm -rf runs logs .cache build
