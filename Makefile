# Large Language Models: from Theory to Practice -- set-up, tests and builds.
#
#   make lab      .venv + offline assets, then JupyterLab on notebooks/      (the main job)
#   make test     .venv + assets, unit tests (network guard on), every notebook via nbmake (ci)
#   make course   execute every notebook in the default profile into build/ (+ HTML, index)
#   make doctor   versions, device, profile and asset state, for bug reports
#   make gpu-check  on a GPU machine: the course's GPU figures in one results file (data/gpu-check/)
#   make test-latest  newest releases within pyproject's ranges on the newest Python (a report)
#   make clean    remove build outputs and caches (keeps .venv and data/)
#
# Needs GNU make and Python 3.11 (PYTHON=python3.11 make ... to choose one); never needs root.
# Variables: PYTHON, LAB_ARGS (e.g. LAB_ARGS=--no-browser), PYTEST_ARGS (e.g. -k attention),
# NB (notebooks for nbmake / make course, default notebooks/), PROFILE (for make course),
# TORCH_SPEC / TORCH_PIP_ARGS (e.g. TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
# to get the small CPU-only wheel on Linux instead of the CUDA one).

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=
# torch is installed hash-checked (its wheel against the lock) unless another TORCH_SPEC is asked for.
TORCH_HASHED ?= $(if $(filter torch==2.13.0,$(TORCH_SPEC)),1,0)
LAB_ARGS ?=
PYTEST_ARGS ?=
NB ?= notebooks/
PROFILE ?=
NBMAKE_TIMEOUT ?= 300
LATEST_PYTHON ?=
LATEST_NB ?=

# The stamp's name carries a hash of the lock and pyproject.toml: when neither changed, the
# venv is up to date and pip is not run again.
LOCK_HASH := $(shell $(PYTHON) -c "import hashlib;print(hashlib.sha256(open('requirements.lock','rb').read()+open('pyproject.toml','rb').read()).hexdigest()[:16])" 2>/dev/null || echo nohash)
STAMP := $(VENV)/.installed-$(LOCK_HASH)

# Everything the tests run with: offline Hugging Face libraries, a headless plot backend, and
# the network guard in every Python process (kernels included) through sitecustomize.py.
# One OpenMP thread per process: the models of the ci profile are small, and on a busy 2-core
# machine PyTorch's spinning threads slowed notebooks down up to 10x. TEST_THREADS=2 to change.
TEST_THREADS ?= 1
TEST_ENV := OMP_NUM_THREADS=$(TEST_THREADS) HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MPLBACKEND=Agg \
	TOKENIZERS_PARALLELISM=false PYTHONPATH="$(CURDIR)/tests/netguard$${PYTHONPATH:+:$$PYTHONPATH}"

.PHONY: help venv install assets lab test test-unit test-notebooks test-latest course doctor clean

help:
	@sed -n '2,11p' Makefile | sed 's/^# \{0,1\}//'

venv install: $(STAMP)

# torch goes first, on its own and without its dependencies: on Linux PyPI's build pulls gigabytes
# of CUDA wheels, and this way the lock's torch==2.13.0 is already satisfied (a local +cpu build
# counts as 2.13.0). Every file is checked against the lock's sha256 hashes (--require-hashes):
# torch's wheel first (one already on disk in pip's find-links, as on the course's machines, before
# the index: in hash mode pip would otherwise prefer the index's file), then the rest.
$(STAMP): requirements.lock pyproject.toml
	@if [ ! -x "$(PY)" ]; then \
	  echo "make: creating $(VENV) with $$($(PYTHON) --version 2>&1)"; \
	  $(PYTHON) -m venv $(VENV); \
	fi
	@$(PY) -c "import sys; v=sys.version_info[:2]; (v!=(3,11)) and print(f'make: warning: the lock was made with Python 3.11, this venv has {v[0]}.{v[1]}; set PYTHON=python3.11 if pip fails')"
	@if [ "$(TORCH_HASHED)" = 1 ]; then \
	  awk '/^torch==/{p=1} p{print} p&&!/\\$$/{exit}' requirements.lock > $(VENV)/.torch-requirement; \
	  echo "$(PY) -m pip install $(TORCH_PIP_ARGS) --require-hashes --no-deps -r $(VENV)/.torch-requirement"; \
	  $(PY) -m pip install $(TORCH_PIP_ARGS) --require-hashes --no-deps --no-index -r $(VENV)/.torch-requirement 2>/dev/null \
	    || $(PY) -m pip install $(TORCH_PIP_ARGS) --require-hashes --no-deps -r $(VENV)/.torch-requirement \
	    || { echo "make: torch's wheel did not match a hash in requirements.lock (or needs libraries the lock does not pin, as PyPI's CUDA build on Linux does). Use TORCH_PIP_ARGS='--index-url https://download.pytorch.org/whl/cpu' for the CPU build, or TORCH_HASHED=0 to let pip choose a build unchecked." >&2; exit 1; }; \
	else \
	  $(PY) -m pip install $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"; \
	fi
	$(PY) -m pip install --require-hashes -r requirements.lock
	@$(PY) -c "import torch" 2>/dev/null || { echo "make: this torch build does not import without libraries the lock does not pin (PyPI's CUDA build on Linux needs its nvidia-* wheels): use TORCH_PIP_ARGS='--index-url https://download.pytorch.org/whl/cpu' for the CPU build, or TORCH_HASHED=0 for pip's choice, unchecked." >&2; exit 1; }
	$(PY) -m pip install --no-deps -e .
	@rm -f $(VENV)/.installed-*
	@touch $@
	@echo "make: $(VENV) matches requirements.lock ($(LOCK_HASH))"

# Fetch and verify the offline data and models (idempotent), then de-quantise SmolLM2 once.
assets: $(STAMP)
	$(PY) -m course_utils.assets fetch-all
	$(PY) -m course_utils.pretrained prepare

# JupyterLab refuses to start as root without --allow-root (a Docker container, a cloud VM's
# shell): pass it there, with a one-line warning.
lab: $(STAMP) assets
	@root_arg=""; if [ "$$(id -u)" = 0 ]; then \
	  echo "make: running as root (a container or a cloud shell?): starting JupyterLab with --allow-root" >&2; \
	  root_arg="--allow-root"; fi; \
	echo "$(BIN)/jupyter lab $(NB) --ip=127.0.0.1 $$root_arg $(LAB_ARGS)"; \
	$(BIN)/jupyter lab $(NB) --ip=127.0.0.1 $$root_arg $(LAB_ARGS)

test: test-unit test-notebooks

# Unit tests and notebooks run in a loopback-only network namespace where the kernel allows one
# (unshare -n as root, -rn otherwise); elsewhere tools/netns_run.sh says so and runs them with the
# Python guard alone. `make test NETNS=` skips the namespace.
NETNS ?= tools/netns_run.sh

test-unit: $(STAMP) assets
	$(TEST_ENV) $(NETNS) $(PY) -m pytest tests/ $(PYTEST_ARGS)

# Exit code 5 ("no tests collected") is never turned into success: when there is no notebook
# at all the step says so and is skipped; otherwise pytest's own exit code decides.
test-notebooks: $(STAMP) assets
	@n=$$(find $(NB) -name '*.ipynb' -not -path '*/.ipynb_checkpoints/*' | wc -l); \
	if [ "$$n" -eq 0 ]; then \
	  echo "make: no notebooks under $(NB) yet -- nbmake step skipped"; \
	else \
	  echo "make: running $$n notebooks through nbmake (COURSE_PROFILE=ci)"; \
	  $(TEST_ENV) COURSE_PROFILE=ci $(NETNS) $(PY) -m pytest --nbmake --nbmake-timeout=$(NBMAKE_TIMEOUT) \
	    --durations=0 $(NB) $(PYTEST_ARGS); \
	fi

# The second leg: newest releases within pyproject's ranges on the newest Python here (its own
# .venv-latest; torch is upgraded too). Not part of
# `make test`: it reports what a Colab or a fresh `pip install` would break (build/test-latest.txt).
test-latest:
	LATEST_PYTHON="$(LATEST_PYTHON)" LATEST_NB="$(LATEST_NB)" tools/test_latest.sh

course: $(STAMP) assets
	$(PY) tools/build_course.py --out build $(if $(PROFILE),--profile $(PROFILE)) $(NB)

doctor:
	@if [ -x "$(PY)" ]; then $(PY) -m course_utils.doctor; else $(PYTHON) -m course_utils.doctor; fi

# On a machine with a GPU (a bare one too: torch with CUDA, transformers and accelerate are enough,
# plus the Shakespeare plays under data/assets/): the char GPT at nanoGPT's GPU config, the KV-cache
# and training-throughput benchmarks; one results file under data/gpu-check/. Under 8 minutes on an
# H100-class GPU. GPU_CHECK_ARGS passes options (e.g. --budget-s 180, --only throughput).
GPU_CHECK_ARGS ?=
.PHONY: gpu-check
gpu-check:
	@if [ -x "$(PY)" ]; then $(PY) tools/gpu_check.py $(GPU_CHECK_ARGS); else $(PYTHON) tools/gpu_check.py $(GPU_CHECK_ARGS); fi

# Regenerate requirements.lock (exact versions + sha256 hashes) from what is installed in .venv:
# install or upgrade a package there, run the tests, then `make lock` and commit both files.
.PHONY: lock
lock:
	tools/lock.sh

clean:
	rm -rf build .pytest_cache
	find . -path ./$(VENV) -prune -o -path ./data -prune -o \
	  \( -name __pycache__ -o -name .ipynb_checkpoints \) -type d -print0 | xargs -0 rm -rf
