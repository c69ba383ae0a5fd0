# The course's commands. Each target creates/updates the local virtual environment itself.
#   make lab    set up, get the data, open the course in JupyterLab
#   make test   the whole test suite (pytest + every notebook under nbval, smoke preset)
#   make train  the full recipe from the command line: make train ARGS="--preset seed"
#   make gpu-check  what training costs on this machine's GPU (ARGS="--full" adds the whole seed preset)
PYTHON  ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
DATA    := data/cifar-10-batches-py
# This workplace has no network for data; its offline copy of CIFAR-10 sits beside the checkout.
OFFLINE := ../shared/data/cifar10/make_batches.py
ARGS    ?=

.PHONY: lab test train gpu-check data venv clean-venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

data: $(DATA)

$(DATA): | $(STAMP)
	@if [ -f $(OFFLINE) ]; then \
	  echo "Decoding the offline CIFAR-10 copy into data/ ..."; $(BIN)/python $(OFFLINE) data; \
	else \
	  $(BIN)/python -m helpers.data --root data --download; \
	fi

lab: $(STAMP) $(DATA)
	$(BIN)/jupyter lab notebooks/

test: $(STAMP) $(DATA)
	HELPERS_PRESET=smoke $(BIN)/python -m pytest --nbval-lax tests notebooks

train: $(STAMP) $(DATA)
	$(BIN)/python -m helpers.train $(ARGS)

gpu-check: $(STAMP) $(DATA)
	$(BIN)/python benchmarks/gpu_check.py $(ARGS)

clean-venv:
	rm -rf $(VENV)
