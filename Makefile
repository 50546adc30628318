# facepipe: `make demo` sets up and runs the pipeline end to end; `make test` runs every test tier.
SHELL := /bin/bash
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
REGION ?= cn-north-4
ORG ?= facepipe
REGISTRY ?= swr.$(REGION).myhuaweicloud.com/$(ORG)
# Written by `make push-images`, read by `make compile` (pins the pipeline's images by digest).
IMAGES_LOCK ?= images/images.lock.json
TORCH_VARIANT ?= cpu
IMAGES_ARGS ?=
PYTEST_ARGS ?=

.PHONY: setup demo demo-containers test test-fast test-containers test-browser compile images push-images mlflow-ui bench clean

# The environment: pinned versions from requirements.lock; torch is the local CPU wheel
# (a bare `torch` requirement would pull a multi-GB CUDA build).
$(BIN)/.stamp: requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install -q --disable-pip-version-check -r requirements.lock
	$(BIN)/pip install -q --disable-pip-version-check --no-deps -e .
	# Only for the MTCNN teacher's three weight files (facepipe.detection.mtcnn); its code, which
	# needs torchvision and an older torch, is never imported.
	$(BIN)/pip install -q --disable-pip-version-check --no-deps facenet-pytorch==2.6.0
	touch $@

setup: $(BIN)/.stamp

demo: setup
	$(BIN)/facepipe run --job jobs/demo.yaml

# The same pipeline, each step in its image (kfp.local's DockerRunner); without a configured Docker
# engine, images/demo.py starts a sandbox engine + registry, pushes the images there, stops both by PID.
demo-containers: setup
	$(BIN)/python -m images.demo --job jobs/demo.yaml $(DEMO_ARGS)

test: setup
	bash scripts/test.sh $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/python -m pytest -m "not slow and not containers and not browser" $(PYTEST_ARGS)

test-containers: setup
	bash scripts/test.sh -m containers $(PYTEST_ARGS)

# Headless Chromium on the MLflow UI of two real tiny runs; refreshes the screenshots in docs/img/.
test-browser: setup
	FACEPIPE_BROWSER_SHOTS=$(CURDIR)/docs/img bash scripts/test.sh -m browser $(PYTEST_ARGS)

# With the CPU torch image (this machine's default) the GPU steps run on CPU: asked for explicitly.
compile: setup
	$(BIN)/python -m pipeline.compile --out pipeline.yaml $(if $(filter cpu,$(TORCH_VARIANT)),--allow-cpu-torch-on-gpu)

# Offline builds: wheels are fetched on the host into the build context; images/README.md.
images: setup
	$(BIN)/python -m images.build --registry $(REGISTRY) --torch-variant $(TORCH_VARIANT) --no-push $(IMAGES_ARGS)

push-images: setup
	$(BIN)/python -m images.build --registry $(REGISTRY) --torch-variant $(TORCH_VARIANT) --lock $(IMAGES_LOCK) $(IMAGES_ARGS)

mlflow-ui: setup
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/runs/mlflow.db --host 127.0.0.1 --port 5000

bench: setup
	for b in bench/*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf runs demo-output .pytest_cache
