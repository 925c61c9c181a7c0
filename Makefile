# Two commands for a newcomer: `make demo` and `make test`. Both set up `.venv` first.
VENV ?= .venv
PY := $(VENV)/bin/python
export DETECTRON2_DATASETS ?= $(CURDIR)/datasets
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup test test-all lint demo synthetic benchmark leaderboard clean

setup:
	@bash tools/install_env.sh

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(PY) -m pytest -q tests

test-all: setup
	$(PY) -m pytest -q --runslow tests

synthetic: setup
	$(PY) tools/make_synthetic.py --output $(DETECTRON2_DATASETS)/rvos_synth

demo: setup
	$(PY) tools/run_main_job.py --output-dir output/main_job

benchmark: setup
	$(PY) tools/benchmark.py all

# trains and ranks every RVOS method's synthetic config on one CPU-time budget (11 CPU minutes of
# training per method, plus evaluation: 1-2 hours on 2 CPU cores)
leaderboard: setup
	$(PY) tools/leaderboard.py

clean:
	rm -rf build rvos_d2/_C*.so output
