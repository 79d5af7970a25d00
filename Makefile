# One-command set-up: `make run` and `make test` create .venv and install everything first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# CPU machines take the CPU wheel of torch that lies on disk; a machine with an NVIDIA driver
# lets pip pick the CUDA build (or set TORCH_SPEC yourself).
TORCH_SPEC ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo torch || echo torch==2.13.0)
# A machine with an NVIDIA driver also gets the gpu extra (CuPy for our kernels, FAISS GPU).
EXTRAS ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo dev,embed,serve,join,gpu || echo dev,embed,serve,join)

.PHONY: install run demo test test-gpu check-cuda bench clean gpu-check gpu-pieces frameworks

$(BIN)/.installed: pyproject.toml Makefile
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]" "$(TORCH_SPEC)"
	touch $@

install: $(BIN)/.installed

# The main job: serve the collection `default` (stdlib docstrings, MiniLM) over HTTP on Ray Serve.
run: install
	HF_HUB_OFFLINE=1 $(BIN)/gpusearch serve

# The same corpus in-process, without Ray.
demo: install
	HF_HUB_OFFLINE=1 $(BIN)/gpusearch demo

# LangChain, LlamaIndex and Haystack each get an environment of their own (their pinecone pins conflict
# with each other and with ours); tests/test_frameworks.py runs tests/frameworks/<name>_check.py in it.
FRAMEWORKS := langchain llamaindex haystack
.venv-%/.installed: tests/frameworks/requirements-%.txt
	rm -rf .venv-$*
	$(PY) -m venv .venv-$*
	.venv-$*/bin/python -m pip install -q --upgrade pip
	.venv-$*/bin/python -m pip install -q -r $<
	touch $@

frameworks: $(FRAMEWORKS:%=.venv-%/.installed)

test: install frameworks
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

test-gpu: install
	$(BIN)/python -m pytest -q -m gpu

# The GPU check (issue 17; bench/gpu_check.sh): GPU tests, then bench/bench_gpu.py, into OUT (default
# bench/results). On the GPU machine it runs with that image's python3 and the pieces in .whl/; with no
# GPU it is a dry run on the CPU that says so. No `install` prerequisite: the GPU machine cannot install.
gpu-check:
	GPUSEARCH_PY=$(shell test -x $(BIN)/python && echo $(BIN)/python || echo python3) bash bench/gpu_check.sh $(OUT)

# What the GPU machine lacks (faiss-cpu for Python 3.12, MiniLM with float16 weights), into .whl/ to carry.
gpu-pieces: .whl/.ready
.whl/.ready: $(BIN)/.installed bench/gpu_pieces.py
	HF_HUB_OFFLINE=1 $(BIN)/python bench/gpu_pieces.py .whl

clean:
	rm -rf $(VENV) $(FRAMEWORKS:%=.venv-%) build *.egg-info

# The recall-versus-speed suite (bench/README.md): the other systems' packages, then the WordNet run.
$(BIN)/.bench-installed: $(BIN)/.installed
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS),bench]" "$(TORCH_SPEC)"
	touch $@

bench: $(BIN)/.bench-installed
	HF_HUB_OFFLINE=1 $(BIN)/python bench/bench_ann.py
