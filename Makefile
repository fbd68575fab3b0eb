# robotok: `make demo` runs the main job on embedded defaults, `make test` runs the tests.
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.robotok-installed
TORCH_CPU := torch==2.13.0
# Debian packages for headless MuJoCo rendering: EGL on Mesa, OSMesa as the fallback.
GL_PKGS := libegl1 libegl-mesa0 libgl1-mesa-dri libosmesa6
export MUJOCO_GL ?= egl
export PYOPENGL_PLATFORM ?= egl

.PHONY: setup demo test lint gl-packages clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@$(MAKE) --no-print-directory gl-packages
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@# On a machine without a CUDA GPU install the CPU torch wheel first, so that resolving
	@# `torch>=...` below never pulls a multi-GB CUDA build. A torch already present is kept.
	@if ! $(BIN)/python -c "import torch" 2>/dev/null; then \
	  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
	    echo "setup: CUDA GPU found; torch comes from the project dependencies"; \
	  else \
	    echo "setup: no CUDA GPU; installing $(TORCH_CPU) (CPU)"; \
	    $(BIN)/pip install -q --disable-pip-version-check $(TORCH_CPU) 2>&1 | grep -v "is ignored" || true; \
	    $(BIN)/python -c "import torch" 2>/dev/null || { echo "setup: installing $(TORCH_CPU) failed"; exit 1; }; \
	  fi; \
	fi
	@$(BIN)/pip install -q --disable-pip-version-check -e ".[dev]" 2>&1 | grep -v "is ignored" || true
	@$(BIN)/python -c "import robotok.sim_envs, robotok.policy" || { echo "setup: robotok failed to import"; exit 1; }
	@touch $(STAMP)
	@echo "setup: ready ($$($(BIN)/python -c 'import torch; print("torch", torch.__version__)'))"

gl-packages:
	@missing=""; for p in $(GL_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "setup: installing$$missing"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null) || \
	      { echo "setup: apt-get failed; run: apt-get install -y$$missing"; exit 1; }; \
	  else \
	    echo "setup: headless rendering needs these Debian packages; run: sudo apt-get install -y$$missing"; \
	  fi; \
	fi

demo: setup
	$(BIN)/robotok-pipeline

# Fast tests by default; with CI=true (as CI sets it) or SLOW=1 the `slow` end-to-end tests run too.
PYTEST_MARK := $(if $(or $(filter true 1,$(CI)),$(SLOW)),,-m "not slow")
test: setup
	$(BIN)/python -m pytest -q $(PYTEST_MARK)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf runs/demo build *.egg-info
