# The README's two commands: `make demo` (set-up + main job) and `make test` (set-up + tests).
# Set-up is idempotent: it reuses .venv and reinstalls only when pyproject.toml changes.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz
# Two cores: let torch use both in single-process jobs; multi-process tests set their own.
export OMP_NUM_THREADS ?= 2
export HF_HUB_DISABLE_TELEMETRY := 1

.PHONY: setup demo leaderboard test test-slow zoo experiments

setup: $(STAMP) $(FMNIST)

# The test extra's adv-lib (ALMA, and the second implementation the FMN / DDN tests compare with) needs
# the build constraint on Python < 3.12 (build-constraints.txt): its dependency visdom is there an sdist
# that setuptools >= 81 cannot build. The package itself installs without it.
$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --build-constraint build-constraints.txt -e '.[test]'
	@touch $(STAMP)

# Real data the project evaluates on: Debian ships Fashion-MNIST. Without apt (or root) the
# code falls back to the Hugging Face Hub id, so this step is best-effort.
$(FMNIST):
	@if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	else echo "note: cannot apt-get install dataset-fashion-mnist here; data will come from the Hub"; fi

# The main job: benchmark the bundled zoo backbones (leaderboard tables + plots): 50 test images,
# hard-label budgets up to 1000, the attack ensemble; about 2 minutes on 2 idle cores (benchmarks/README.md).
demo: setup
	$(PY) -m repspec_zoo.cli leaderboard --out runs/leaderboard

# The published leaderboard: README table, results/leaderboard/ and the bundled model cards.
# N and BUDGETS are the intended settings; on 2 CPU cores budgets up to 10k take many hours
# (the README says which settings made the committed table).
N ?= 500
BUDGETS ?= 1000,2000,5000,10000
leaderboard: setup
	$(PY) -m repspec_zoo.cli leaderboard --n $(N) --budgets $(BUDGETS) --out results/leaderboard \
		--update-readme README.md --update-cards

# Evaluate and re-bundle the zoo's CPU-scale models from the experiments' seed-0 runs (recipes/build_zoo.py;
# run `make experiments` first).
zoo: setup
	$(PY) recipes/build_zoo.py

# The papers' experiments at CPU scale (results/experiments/), then their tables into EXPERIMENTS.md.
# About 3 hours on 2 cores; each is also one command of its own (python -m experiments.<name>).
experiments: setup
	$(PY) -m experiments.xor_toy
	$(PY) -m experiments.slp_fmnist
	$(PY) -m experiments.transfer_digits
	$(PY) -m experiments.roth_fmnist
	$(PY) -m experiments.ssl_fmnist
	$(PY) -m experiments.bn_resnet_fmnist --arms none rep repbn convwd adv --zoo-arms
	$(PY) -m experiments.render_readme

test: setup
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest -q

test-slow: setup
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest -q -m slow
