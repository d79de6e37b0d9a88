# resgrad: set-up, demo, tests. `make demo` and `make test` set up .venv first when it is missing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
RESGRAD := $(VENV)/bin/resgrad
SHARED_MNIST := ../shared/data/MNIST

.PHONY: setup demo test test-fast lint format results results-lesion results-landscape results-docs profile bf16 perf-goals data clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,ray,tensorboard,lightning]'
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

# The main job end to end: a small sweep (plain vs residual, depths 8 20 56) and its report.
demo: setup data
	$(RESGRAD) sweep --config sweeps/demo.toml
	$(RESGRAD) report runs/demo

# The tests, then the benchmark suite once without timing so that it cannot rot (what CI runs).
test: setup data lint
	$(PY) -m pytest tests
	$(PY) -m pytest benchmarks --benchmark-disable -q

# Lint and formatting (configured in pyproject.toml); `make format` rewrites in place.
lint: setup
	$(VENV)/bin/ruff check src tests benchmarks conftest.py results/make_docs.py
	$(VENV)/bin/ruff format --check src tests benchmarks conftest.py results/make_docs.py

format: setup
	$(VENV)/bin/ruff check --fix src tests benchmarks conftest.py results/make_docs.py
	$(VENV)/bin/ruff format src tests benchmarks conftest.py results/make_docs.py

# The edit loop: everything not marked slow (longer trainings on real MNIST, killed processes).
test-fast: setup data
	$(PY) -m pytest tests -m "not slow"
	$(PY) -m pytest benchmarks --benchmark-disable -q -m "not slow"

# The committed reference results (about 100 minutes on a 2-core CPU). A rerun resumes
# the sweeps; delete a folder to make it afresh.
results: setup data
	rm -f results/mnist-depth-sweep/PROVENANCE.md results/activation-sweep/PROVENANCE.md \
		results/seed-resnet/PROVENANCE.md results/bench/cpu/PROVENANCE.md
	results/record.sh results/mnist-depth-sweep $(RESGRAD) sweep --config sweeps/mnist-depth-sweep.toml --quiet
	results/record.sh results/mnist-depth-sweep $(RESGRAD) report results/mnist-depth-sweep
	results/record.sh results/activation-sweep $(RESGRAD) sweep --config sweeps/activation-sweep.toml --quiet
	results/record.sh results/activation-sweep $(RESGRAD) report results/activation-sweep
	results/record.sh results/seed-resnet $(RESGRAD) sweep --config sweeps/seed-resnet.toml --quiet
	results/record.sh results/seed-resnet $(RESGRAD) report results/seed-resnet
	results/record.sh results/bench/cpu $(RESGRAD) bench --devices cpu --archs plain residual \
		--depths 8 14 20 32 44 56 --widths 16 --batch-sizes 32 128 --modes forward forward_backward train_step \
		--dtype float32 --threads 2 --min-run-time 4 --warmup 1 --quiet --out results/bench/cpu
	$(PY) results/make_docs.py

# Block lesions and shattered gradients (about 35 minutes on a 2-core CPU: the sweep 26, the
# lesion study 7, report and shatter 2). A rerun resumes the sweep.
results-lesion: setup data
	rm -f results/lesion/PROVENANCE.md results/shattered/PROVENANCE.md
	results/record.sh results/lesion $(RESGRAD) sweep --config sweeps/lesion.toml --quiet
	results/record.sh results/lesion $(RESGRAD) lesion results/lesion --max-deleted 10 --draws 10 --threads 1 --device cpu
	results/record.sh results/lesion $(RESGRAD) report results/lesion
	results/record.sh results/shattered $(RESGRAD) shatter --archs plain residual --depths 8 14 20 32 44 56 110 \
		--widths 8 --norms batch --inits kaiming --seeds 0 1 2 --sweep results/lesion --images 32 \
		--threads 1 --device cpu --out results/shattered
	$(PY) results/make_docs.py

# results/README.md and the generated tables in README.md, from the committed results and
# results/README.template.md (tests/test_docs.py checks they are current). Run it after remaking a result.
results-docs: setup
	$(PY) results/make_docs.py

# Loss landscapes of the trained twins of results/lesion (Li et al. 2018): 21 x 21 surfaces, the line
# from init and the Hessian's extremes, on 1,000 training images. Needs results/lesion's runs (make
# results-lesion). Time on a quiet 2-core CPU: see docs/landscape.md.
results-landscape: setup data
	rm -f results/landscape/PROVENANCE.md
	results/record.sh results/landscape $(RESGRAD) landscape results/lesion --out results/landscape \
		--threads 2 --device cpu --quiet
	$(PY) results/make_docs.py

# CPU performance (docs/performance.md): run these on a quiet machine, nothing else running.
# `make profile`: where a step's and a sweep run's time goes (about 30 minutes on 2 cores);
# `make bf16`: what bfloat16 does to the recorded quantities and the curves (about 30 minutes);
# `make perf-goals`: the ratios issue 23 set goals for, each measured side by side, and the depth sweep's floor (about 25 minutes).
profile: setup data
	$(PY) benchmarks/profile_step.py --threads 1 --run-steps 100 --out results/profile --docs docs/performance.md

bf16: setup data
	$(PY) benchmarks/bf16_effect.py --threads 1 --out results/bf16 --docs docs/performance.md

perf-goals: setup data
	results/record.sh results/bench/cpu bash -c "$(PY) benchmarks/tutorial_vs_resgrad.py --skip 1 2 --pairs 5 2>/dev/null > results/bench/cpu/end_to_end.txt"
	results/record.sh results/bench/cpu bash -c "$(PY) benchmarks/depth_sweep_speed.py 2>/dev/null > results/bench/cpu/depth_sweep_speed.txt"
	results/record.sh results/bench/cpu bash -c "$(PY) benchmarks/depth_sweep_floor.py 2>/dev/null > results/bench/cpu/depth_sweep_floor.txt"
	results/record.sh results/bench/cpu bash -c "$(PY) benchmarks/recorder_overhead.py 2>/dev/null > results/bench/cpu/recorder_overhead.txt"
	$(MAKE) results-docs

clean:
	rm -rf runs .pytest_cache .benchmarks
