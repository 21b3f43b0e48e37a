# Two commands: `make run` trains and reports on the default recipe; `make test` runs the tests
# (and `make default-model RUN=...` makes the model that ships with the package).
# Each creates the virtual environment it needs. torch is pinned to the CPU build first, so
# nothing later pulls a newer (CUDA, several GB) build.

VENV   ?= .venv
PYTHON ?= python3
RECIPE ?= basic
ARGS   ?=
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin

# Use a copy of MNIST beside the clone when there is one and none was named (machines with no
# internet); otherwise the tool uses its cache or downloads.
ifeq ($(MNIST_CNN_DATA),)
  ifneq ($(wildcard ../shared/data/mnist/train-images-idx3-ubyte.gz),)
    export MNIST_CNN_DATA := $(abspath ../shared/data/mnist)
  endif
endif

.PHONY: run test install browser clean default-model

# make run needs only the package (torch, numpy, ...); make test adds the extras and test tools.
$(VENV)/.installed-run: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed: $(VENV)/.installed-run
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

install: $(VENV)/.installed

run: $(VENV)/.installed-run
	$(BIN)/mnist-cnn train --recipe $(RECIPE) $(ARGS)

# The model that ships inside the package (src/mnist_cnn/pretrained/), from a finished run:
# `make default-model RUN=runs/NAME`. Commit the files it writes and paste the row it prints
# into README.md's default-model table (tests/test_default_model.py checks both).
default-model: install
	@test -n "$(RUN)" || { echo "usage: make default-model RUN=runs/NAME (a finished training run)" >&2; exit 2; }
	$(BIN)/python -m mnist_cnn.default_model $(RUN)

# The browser test drives Debian's chromium (Playwright's own browser download does not work on
# machines without internet); install it when missing, as root (CI) or through sudo.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y chromium; }

test: install browser
	$(BIN)/python -m pytest $(ARGS)

# The quick loop while working: every test but the slow ones (training runs, tests needing the
# trained model, processes, the browser). `make test` runs them all (what CI runs).
.PHONY: test-fast
test-fast: install
	$(BIN)/python -m pytest -m "not slow" $(ARGS)

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
