# resgrad: set-up, demo, tests. `make demo` and `make test` set up .venv first when it is missing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
SHARED_MNIST := ../shared/data/MNIST

.PHONY: setup demo test bench-smoke results data clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,ray]'
	touch $@

setup: $(VENV)/.installed

# Offline machines (development, CI) keep the four official MNIST files beside the
# checkout; copy them into the git-ignored data/ so torchvision finds them there.
data/MNIST/raw:
	@if [ -d $(SHARED_MNIST)/raw ]; then \
		mkdir -p data && cp -r $(SHARED_MNIST) data/ && chmod -R u+w data; \
		echo "copied MNIST from $(SHARED_MNIST) into data/"; \
	else echo "no local MNIST mirror: torchvision downloads it into data/ on first use"; fi

data: data/MNIST/raw

demo: setup data
	$(VENV)/bin/resgrad train --arch residual --depth 20 --steps 300 --train-subset 20000 --out runs/demo

# The tests, then the benchmark suite once without timing so that it cannot rot.
test: setup data
	$(PY) -m pytest tests
	$(PY) -m pytest benchmarks --benchmark-disable -q

clean:
	rm -rf runs .pytest_cache .benchmarks
