# make test: set up .venv (pip, torch 2.14.1 / torchvision 0.29.1 from this machine's disk) and run ruff, the strict docs build and pytest.
# make demo: set up, fetch Fashion-MNIST offline (Debian package) and run the main job.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.hmc-installed
export HF_HUB_OFFLINE := 1
export WANDB_SILENT := true
export NO_MKDOCS_2_WARNING := 1

.PHONY: install test lint format docs docs-serve demo clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[dev,docs]'
	touch $(STAMP)

install: $(STAMP)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# make docs: build the documentation site into build/site; --strict turns a broken link, a
# missing page or an unparsable docstring into an error (part of make test, so CI fails on it).
docs: install
	$(BIN)/mkdocs build --strict --quiet

# make docs-serve: the site on http://127.0.0.1:8000, rebuilt on every edit.
docs-serve: install
	$(BIN)/mkdocs serve

test: lint docs
	$(BIN)/python -m pytest -q -p no:cacheprovider --timeout=900

# make demo: Fashion-MNIST from the Debian package (installed when apt-get is available; else
# torchvision downloads it), then `hmc fit --config configs/base.yaml --config configs/demo.yaml`
# on the CPU and `hmc test` on its final checkpoint: prints the per-level results table and
# writes the per-level accuracy plot to runs/demo/. Offline once the data is there (W&B falls
# back to offline by itself).
# One intra-op thread by default (OMP_NUM_THREADS=2 make demo to change): at 32 px threads gain
# little, and on cores shared with other work OpenMP's spinning threads slow training 10-30x.
demo: install
	@if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null 2>&1; then \
		echo "make demo: installing the Debian package dataset-fashion-mnist"; \
		(apt-get update -q && apt-get install -y -q dataset-fashion-mnist) >/dev/null 2>&1 \
			|| echo "make demo: apt-get failed; torchvision will download Fashion-MNIST"; \
	fi
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/hmc fit --config configs/base.yaml --config configs/demo.yaml
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/hmc test --config configs/base.yaml --config configs/demo.yaml \
		--ckpt_path runs/demo/checkpoints/last.ckpt --verbose false
	@echo "make demo: plot runs/demo/per_level_accuracy.png, metrics runs/demo/test_metrics.json"

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
