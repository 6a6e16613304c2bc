# Two commands do everything on a fresh machine: `make train` and `make test`.
# The venv is built once from pyproject.toml's dependencies, with torch/torchvision pinned to a
# known-good pair (torchvision must match torch exactly or its ops fail to import).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed

.PHONY: install train test lint fix clean-runs new-project

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@$(PYTHON) -c "import sys; sys.exit(0 if sys.version_info >= (3, 11) else 'error: Python 3.11 or newer is needed, $(PYTHON) is %d.%d; run make PYTHON=python3.11' % sys.version_info[:2])"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PINS)
	$(PY) -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['dev']))" > $(VENV)/requirements.txt
	$(PY) -m pip install --quiet -r $(VENV)/requirements.txt $(TORCH_PINS)
	touch $(STAMP)

train: install
	$(PY) train.py -c config.json

lint: install
	$(VENV)/bin/ruff check .

# ruff's own fixes: import order (after you export a class from an __init__.py), unused imports, ...
fix: install
	$(VENV)/bin/ruff check --fix .

test: install lint
	$(PY) -m pytest -q -n auto --maxprocesses=4 --dist loadscope --no-loadscope-reorder

clean-runs:
	rm -rf saved/*/

# A new project from this template (new_project.py needs Copier, so it runs in the venv):
# make new-project DIR=../MyProject ARGS="--examples text"
new-project:
	@test -n "$(DIR)" || { echo "error: name the new project's folder: make new-project DIR=../MyProject"; exit 2; }
	@$(MAKE) --no-print-directory install
	$(PY) new_project.py "$(DIR)" $(ARGS)
