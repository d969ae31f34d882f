# `make demo`: set up .venv from requirements.txt, build the sample, run the flow on it.
# `make test`: set up .venv and run the test suite (`make test-fast`: only the quick tier).
# `make lint`: format check, lint and type check (`make format` rewrites the files).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
IMX500_VENV := .venv-imx500
# Prefect's database and settings stay inside the project unless PREFECT_HOME says otherwise.
export PREFECT_HOME ?= $(CURDIR)/.cache/prefect-home

.PHONY: setup imx500 sample demo demo-detection test test-fast lint format benchmark benchmark-e2e benchmark-real-size benchmark-architectures server stop clean help

help:
	@echo "make demo   set up .venv, build the digits sample, quantize and evaluate it"
	@echo "make demo-detection  the same for an object detector, scored in COCO mAP (trains the sample detector first)"
	@echo "make test   set up .venv and run the tests"
	@echo "make test-fast  run only the quick tests (no sample, flow, server, cluster or device compiler; under a minute)"
	@echo "make lint   check formatting (ruff format --check), lint (ruff check) and types (mypy)"
	@echo "make format reformat and apply ruff's safe fixes"
	@echo "make benchmark  measure throughput, cache, overhead, memory, the repair search and detection against baselines (several minutes)"
	@echo "make benchmark-e2e  time the command cold and cached on a MobileNetV2 against the notebook's way (about 15 minutes)"
	@echo "make benchmark-real-size  the same, cold and cached, on the small model and a 224 px MobileNetV2 (1,000 / 2,000 images), with peak memory (about an hour)"
	@echo "make benchmark-architectures  run keras.applications architectures (untrained, 96 px) through the command (about an hour)"
	@echo "make server start a Prefect server on 127.0.0.1:4200, the work pool, the deployments and a worker"
	@echo "make stop   stop what make server started"
	@echo "make imx500 install Sony's IMX500 converter into .venv-imx500 (make test does it too)"
	@echo "make clean  remove the cache, the sample and the demo outputs (keeps .venv)"

$(BIN)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $@

setup: $(BIN)/.installed

# Sony's IMX500 converter lives in an environment of its own (see requirements-imx500.txt).
$(IMX500_VENV)/.installed: requirements-imx500.txt
	$(PYTHON) -m venv $(IMX500_VENV)
	$(IMX500_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(IMX500_VENV)/bin/python -m pip install --quiet -r requirements-imx500.txt
	touch $@

imx500: $(IMX500_VENV)/.installed

sample: setup
	$(BIN)/python -m core.data.sample_data

demo: sample imx500
	$(BIN)/python -m flows.quantize_evaluate configs/digits/configuration.json

# A detector: digits placed on canvases, its COCO annotations and a small detector trained here (about 90 s).
demo-detection: setup imx500
	$(BIN)/python -m core.data.sample_detector
	$(BIN)/python -m flows.quantize_evaluate configs/digits_detection/configuration.json

test: setup imx500
	$(BIN)/python -m pytest

# The quick tier: the markers are declared in pyproject.toml.
test-fast: setup
	$(BIN)/python -m pytest -m "not slow and not server and not dask and not hardware"

lint: setup
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

benchmark: sample imx500
	$(BIN)/python -m benchmarks.run_benchmarks
	$(BIN)/python -m benchmarks.repair_cost
	$(BIN)/python -m benchmarks.detection

benchmark-e2e: setup imx500
	$(BIN)/python -m benchmarks.end_to_end

benchmark-real-size: setup imx500
	$(BIN)/python -m benchmarks.end_to_end --real-size

benchmark-architectures: sample imx500
	$(BIN)/python -m benchmarks.architectures

server: sample
	$(BIN)/python -m deployments.local_stack start

stop:
	$(BIN)/python -m deployments.local_stack stop

clean:
	rm -rf .cache sample_data out
