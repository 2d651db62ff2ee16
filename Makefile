# Everything a fresh machine needs goes through these targets.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
VIT := models/vit_b16.onnx

.PHONY: install protos models demo test lint bench image image-gpu clean

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

demo: install models
	$(BIN)/orchestrator run --job jobs/vit_demo.yaml

lint: install
	$(BIN)/ruff check .

test: install
	$(BIN)/ruff check .
	$(BIN)/pytest -q -rs

bench: install models
	$(BIN)/python bench/bench_partition.py
	$(BIN)/python bench/bench_transport.py
	$(BIN)/python bench/bench_pipeline.py

# The node image, built offline where no registry answers (see scripts/build_image.sh).
image:
	scripts/build_image.sh

image-gpu:
	scripts/build_image.sh --gpu

clean:
	rm -rf runs logs .cache build
