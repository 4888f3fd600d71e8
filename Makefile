# make help lists the targets. Every target installs what it needs first.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LOCAL := $(CURDIR)/.local

# The embedded default (everything under the git-ignored .local/) is defined once, in lifecycle.config.settings; a recipe
# that needs it starts with $(SETTINGS), which exports what the environment does not already set (yours wins).
# It runs after $(STAMP), so a fresh machine gets the virtualenv first.
SETTINGS = exports="$$($(PY) -m lifecycle.config.settings --export)" && eval "$$exports" &&

.PHONY: help install demo test lint format airflow portable bench lock clean

help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found: install Python 3.11 or run make PYTHON=/path/to/python3.11"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check uv
	@# --compile-bytecode: with PYTHONDONTWRITEBYTECODE set (as on many CI machines) every Airflow task process
	@# would compile thousands of modules from source (import airflow.sdk 14.6 s -> 6.6 s at load 11).
	$(VENV)/bin/uv pip install --quiet --compile-bytecode --python $(PY) -r requirements.txt -r requirements-dev.txt
	$(VENV)/bin/uv pip install --quiet --python $(PY) --no-deps -e .
	touch $@

install: $(STAMP) ## Create .venv and install the pinned requirements

demo: $(STAMP) ## Run the lifecycle end to end through Airflow on the embedded default
	$(SETTINGS) $(PY) scripts/demo.py

test: $(STAMP) ## Run the whole test suite (what CI runs)
	$(VENV)/bin/ruff check .
	$(SETTINGS) $(PY) -m pytest

lint: $(STAMP) ## ruff check and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP) ## Apply ruff's fixes and formatter
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

airflow: $(STAMP) ## Start airflow standalone with the demo pipeline and print the UI address
	$(SETTINGS) $(PY) scripts/airflow_local.py

.PHONY: check run

check: $(STAMP) ## Check a pipeline YAML against its data: PIPELINE=<file> [DATE=<as-of>] [WINDOW=<days>]
	@test -n "$(PIPELINE)" || { echo "usage: make check PIPELINE=include/pipelines/<name>.yaml [DATE=YYYY-MM-DD] [WINDOW=days]"; exit 2; }
	$(SETTINGS) $(PY) -m lifecycle check $(PIPELINE) $(if $(DATE),--as-of $(DATE)) $(if $(WINDOW),--window-days $(WINDOW))

run: $(STAMP) ## Run one DAG once on the embedded default: DAG=<dag_id> DATE=<YYYY-MM-DD> [CONF='{...}']
	@test -n "$(DAG)" -a -n "$(DATE)" || { echo "usage: make run DAG=<pipeline>__retrain DATE=YYYY-MM-DD [CONF='{\"reason\": \"...\"}']"; exit 2; }
	$(SETTINGS) $(PY) -m lifecycle run $(DAG) $(DATE) $(if $(CONF),--conf '$(CONF)')

portable: $(STAMP) ## Load, predict and serve a champion from a clean virtualenv: PIPELINE=<file> [DATE=<batch>]
	@test -n "$(PIPELINE)" || { echo "usage: make portable PIPELINE=include/pipelines/<name>.yaml [DATE=YYYY-MM-DD]"; exit 2; }
	$(SETTINGS) $(PY) -m lifecycle portable $(PIPELINE) $(if $(DATE),--date $(DATE))

.PHONY: demo-segments

demo-segments: $(STAMP) ## Segment models: one model per store for 24 stores, trained and used through Airflow
	$(PY) scripts/demo_segments.py

.PHONY: serve

serve: $(STAMP) ## Serve every pipeline's champion over HTTP on the embedded default: [HOST=127.0.0.1] [PORT=8787]
	$(SETTINGS) $(PY) -m lifecycle serve $(if $(HOST),--host $(HOST)) $(if $(PORT),--port $(PORT))

bench: $(STAMP) ## Run the benchmark scripts and print their numbers
	$(SETTINGS) $(PY) benchmarks/parse_time.py
	$(SETTINGS) $(PY) benchmarks/grid_search.py
	$(SETTINGS) $(PY) benchmarks/write_speed.py
	$(SETTINGS) $(PY) benchmarks/scoring_memory.py
	$(SETTINGS) $(PY) benchmarks/batch_to_postgres.py
	$(SETTINGS) $(PY) benchmarks/models_page.py --check
	$(SETTINGS) $(PY) benchmarks/segments.py

lock: ## Re-pin requirements*.txt from requirements*.in
	uv pip compile -q requirements.in --python-version 3.11 -o requirements.txt
	uv pip compile -q requirements-dev.in --python-version 3.11 -o requirements-dev.txt

clean: ## Remove the local state (.local/), keeping the virtualenv
	rm -rf $(LOCAL)
