# Two commands for a fresh machine (see README):
#   make run    set up, then run the main job (`rewardkit run rg-lcd`)
#   make test   set up, then run the test suite (and build the docs site, as make docs)
#   make docs   set up, then build the documentation site into site/ (mkdocs build --strict)
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
PYTEST_ARGS ?=

.PHONY: setup run test test-plugins docs

$(VENV)/.installed: pyproject.toml examples/reward-plugin/pyproject.toml \
		examples/solver-plugin/pyproject.toml examples/backbone-plugin/pyproject.toml
	python3 -m venv $(VENV)
	# torch first, pinned to the CPU build on local disk, so nothing pulls a CUDA build
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[dev]"
	# tests pip-install plugin distributions offline (--no-build-isolation): they need setuptools
	$(PIP) install -q "setuptools>=70.1"
	# the deepspeed extra: an sdist whose build imports torch, so build it against the torch above
	$(PIP) install -q --no-build-isolation "deepspeed>=0.14"
	touch $@

setup: $(VENV)/.installed

run: setup
	$(VENV)/bin/rewardkit run rg-lcd

test: setup
	OMP_NUM_THREADS=1 $(PY) -m pytest -n 2 -q $(PYTEST_ARGS)
	$(MAKE) test-plugins
	$(MAKE) docs

# The documentation site (mkdocs.yml): guides from docs/ and the API reference from the
# docstrings, into site/. --strict fails on a broken link, anchor or reference. Offline.
docs: setup
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

# The reward plugins in plugins/ need torchvision, which does not import beside torch 2.13.0, so
# they are tested in their own venv with the torch/torchvision pair that lies on local disk.
PLUGINS_VENV ?= .venv-plugins
PLUGINS_PY := $(PLUGINS_VENV)/bin/python
PLUGINS := plugins/rewardkit-hpsv2 plugins/rewardkit-imagereward

$(PLUGINS_VENV)/.installed: pyproject.toml $(addsuffix /pyproject.toml,$(PLUGINS))
	python3 -m venv $(PLUGINS_VENV)
	$(PLUGINS_PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PLUGINS_PY) -m pip install -q -e ".[dev,fid]" $(addprefix -e ,$(PLUGINS))
	# the wheel tests build each plugin's wheel offline (--no-build-isolation): they need setuptools
	$(PLUGINS_PY) -m pip install -q "setuptools>=70.1"
	touch $@

# test_hpsv2_remote.py trains in the main venv ($(PY)) against hpsv2 served from this one
test-plugins: $(PLUGINS_VENV)/.installed
	REWARDKIT_MAIN_PYTHON=$(abspath $(PY)) OMP_NUM_THREADS=1 $(PLUGINS_PY) -m pytest -q -p no:cacheprovider $(addsuffix /tests,$(PLUGINS)) tests/test_fid_inception.py
