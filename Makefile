# `make lab`  : set everything up, then start JupyterLab on notebooks/ (the main job)
# `make test` : set everything up, then run the whole test suite
# Setup is idempotent: a stamp file makes a second run skip the installs.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# Pinned so that a machine with a local CPU wheel of it (like our CI) uses that; on a normal machine pip
# takes this release from PyPI (CUDA build on Linux, MPS build on macOS). Override, e.g.
#   make lab TORCH="torch --index-url https://download.pytorch.org/whl/cu124"
TORCH  ?= torch==2.13.0
PORT   ?= 8888
PYTEST_ARGS ?=
# Versions the suite passed with (see the file's header); `make constraints` writes it anew from .venv.
CONSTRAINTS ?= constraints.txt
PIP := $(PY) -m pip install -c $(CONSTRAINTS)

STAMP := $(VENV)/.sdlab-installed

.PHONY: setup lab test bench kernel browser clean constraints

# k-diffusion (what A1111 and ComfyUI run) is the tests' independent reference for the samplers. Its
# declared requirements pull a second, CUDA build of torch, wandb and training code; the samplers in
# k_diffusion/sampling.py need only torch, scipy, torchsde, tqdm and torchdiffeq (in the test extra), so it
# is installed without them and tests/kdiffusion.py loads just those modules (its package __init__, the
# part that wants setuptools<81 and the training stack, is never run).
KDIFFUSION ?= k-diffusion==0.1.1.post1

$(STAMP): pyproject.toml Makefile $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) pip
	$(PIP) $(TORCH)
	$(PIP) -e '.[test]'
	$(PIP) --no-deps $(KDIFFUSION)
	@# the venv's own "Python 3 (ipykernel)" is sdlab's kernel: one entry in the launcher, not two
	rm -rf $(VENV)/share/jupyter/kernels/sdlab
	touch $(STAMP)

setup: $(STAMP)

# Only for a JupyterLab of your own, outside .venv: register sdlab's environment there as "Python (sdlab)".
kernel: $(STAMP)
	$(PY) -m ipykernel install --user --name sdlab --display-name "Python (sdlab)"

# Debian's Chromium for the end-to-end test (never a browser download).
browser:
	@test -x /usr/bin/chromium || { command -v apt-get >/dev/null && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
	  echo "note: could not install chromium; the browser test will be skipped"; }

# JupyterLab refuses to run as root without --allow-root (containers, CI machines)
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root,)

lab: $(STAMP)
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks --port=$(PORT) $(ROOT_FLAG)

test: $(STAMP) browser
	$(PY) -m pytest $(PYTEST_ARGS)

# sdlab's performance claims as ratios measured in one run; writes docs/benchmarks.md
bench: $(STAMP)
	$(PY) benchmarks/run_all.py $(BENCH_ARGS)

# After changing dependencies and seeing the suite pass: pin what is installed now.
constraints: $(STAMP)
	{ sed -n '1,/^pip==/p' $(CONSTRAINTS) | sed '$$d'; echo "pip==$$($(PY) -m pip --version | cut -d' ' -f2)"; \
	  $(PY) -m pip freeze --exclude-editable | grep -v '^sdlab' | sed -E 's/^(torch==[^+]*)\+.*/\1/'; } > $(CONSTRAINTS).new
	mv $(CONSTRAINTS).new $(CONSTRAINTS)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
