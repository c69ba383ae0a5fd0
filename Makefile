# The course's commands. Each target creates/updates the local virtual environment itself.
#   make lab    set up, get the data, open the course in JupyterLab
#   make test   the whole test suite (pytest + every notebook under nbval, smoke preset)
#   make test-fast  the quick loop: tests/ without `slow` and `real_data` tests, no data needed (about a minute)
#   make train  the full recipe from the command line: make train ARGS="--preset seed"
#   make clean-runs delete every run folder under runs/ (asks first)
#   make exercises  your copies of the notebooks' exercises in exercises/ (solutions stripped; never overwritten once edited)
#   make check  grade your exercises (ARGS="focal_loss" for one)
#   make gpu-check  what training costs on this machine's GPU (ARGS="--full" adds the whole seed preset)
PYTHON  ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
DATA    := data/cifar-10-batches-py
# This workplace has no network for data; its offline copy of CIFAR-10 sits beside the checkout.
OFFLINE := ../shared/data/cifar10/make_batches.py
ARGS    ?=

.PHONY: lab test test-fast train gpu-check data venv clean-venv clean-runs exercises check

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
	@# Rooted at the project folder, so README, BENCHMARKS, SYLLABUS and helpers/ open from Lab too.
	$(BIN)/jupyter lab notebooks/01_data_and_augmentation.ipynb

# One worker per core, at most 4 (pytest-xdist), one thread each: a test file, or all the notebooks in order
# (about 2 minutes on one worker), per worker; more workers would add memory, not speed.
test: $(STAMP) $(DATA)
	HELPERS_PRESET=smoke OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n auto --maxprocesses 4 --dist loadfile --nbval-lax tests notebooks

# While editing: seconds, on a fake CIFAR-10; `make test` runs everything, slow and real-data tests too.
test-fast: $(STAMP)
	HELPERS_PRESET=smoke OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n auto --maxprocesses 4 --dist loadfile -m "not slow and not real_data" tests

exercises: $(STAMP)
	$(BIN)/python -m helpers.exercises build

check: $(STAMP)
	$(BIN)/python -m helpers.exercises check $(ARGS)

train: $(STAMP) $(DATA)
	$(BIN)/python -m helpers.train $(ARGS)

gpu-check: $(STAMP) $(DATA)
	$(BIN)/python benchmarks/gpu_check.py $(ARGS)

clean-venv:
	rm -rf $(VENV)

# Deletes every run folder under runs/ (checkpoints, histories) after asking; data and code stay.
clean-runs:
	@if [ -d runs ] && [ -n "$$(ls -A runs)" ]; then \
	  echo "This deletes:"; ls -d runs/*; \
	  read -p "Delete these run folders? [y/N] " ans; [ "$$ans" = y ] && rm -rf runs/* && echo "deleted"; true; \
	else echo "runs/ holds no runs"; fi
