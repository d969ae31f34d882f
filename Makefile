# `make demo`: set up .venv from requirements.txt, build the sample, run the flow on it.
# `make test`: set up .venv and run the test suite.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# Prefect's database and settings stay inside the project unless PREFECT_HOME says otherwise.
export PREFECT_HOME ?= $(CURDIR)/.cache/prefect-home

.PHONY: setup sample demo test benchmark server stop clean help

help:
	@echo "make demo   set up .venv, build the digits sample, quantize and evaluate it"
	@echo "make test   set up .venv and run the tests"
	@echo "make benchmark  measure throughput, cache, overhead and memory against baselines (several minutes)"
	@echo "make server start a Prefect server on 127.0.0.1:4200, the work pool, the deployments and a worker"
	@echo "make stop   stop what make server started"
	@echo "make clean  remove the cache, the sample and the demo outputs (keeps .venv)"

$(BIN)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $@

setup: $(BIN)/.installed

sample: setup
	$(BIN)/python -m core.sample_data

demo: sample
	$(BIN)/python -m flows.quantize_evaluate configs/digits/configuration.json

test: setup
	$(BIN)/python -m pytest

benchmark: sample
	$(BIN)/python -m benchmarks.run_benchmarks

server: sample
	$(BIN)/python -m deployments.local_stack start

stop:
	$(BIN)/python -m deployments.local_stack stop

clean:
	rm -rf .cache sample_data out
