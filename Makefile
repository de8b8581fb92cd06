# The two commands a fresh machine needs (see README):
#   make demo   set up, then synthesize a small dataset on the embedded vLLM CPU server
#   make test   set up, then lint, type-check and run every test (starts the vLLM server)
PY := .venv/bin/python

.PHONY: setup demo test lint unit
setup:
	bash scripts/bootstrap.sh

demo: setup
	$(PY) -m graph.run --seeds examples/seeds.jsonl --out runs/demo --per-reference 2
	$(PY) -m dataset.report runs/demo

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

unit: setup
	$(PY) -m pytest -q -m "not vllm"

test: lint
	$(PY) -m pytest -q -ra --durations=25
