# Two commands: `make reports` (the main job) and `make test`. Each creates .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
RUN    ?=
# PRESET=facecom_cpu (params/<notebook>/facecom_cpu.yml for each notebook that has one) or PRESET=path/to/file.yml;
# empty: the FACECOM preset for this machine when Task_A/, Task_B/ hold FACECOM, else the notebooks' demo defaults
PRESET ?=
# Extra arguments for the runner, e.g. make reports ARGS="-p epochs 3"
ARGS   ?=

export PYTHONHASHSEED := 0
export MPLBACKEND := Agg

.PHONY: help venv reports reference test test-fast demo bench lab notebooks clean

help:
	@echo "make reports   set up .venv, run notebooks 01-04 on FACECOM in Task_A/, Task_B/ with its preset for this machine (else on the demo data), write reports/<run>/index.html; ARGS=--plan shows the plan only"
	@echo "make reference run the CPU presets on FACECOM (DATA_ROOT=DIR) without dataset images and publish the compact copy to docs/reference-run/"
	@echo "make test      set up .venv, run the unit tests, the real-data tests (skipped without the FACECOM training split at FACECOM_TEST_ROOT) and nbval on the notebooks"
	@echo "make demo      write the synthetic demo dataset to data/demo_synthetic"
	@echo "make bench     run the speed benchmarks (prints JSON)"
	@echo "make lab       start JupyterLab on the project's environment (notebooks/, progress bars on)"
	@echo "make notebooks after editing notebooks in JupyterLab: sync each .ipynb with its .py twin, strip outputs"

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade --quiet pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

reports: $(STAMP)
	$(BIN)/facecom run $(if $(filter %.yml %.yaml,$(PRESET)),-f $(PRESET),$(if $(PRESET),--preset $(PRESET))) $(if $(RUN),--name $(RUN)) $(ARGS)

# The published reference run (docs/reference-run/): the CPU presets on FACECOM (DATA_ROOT=DIR, default: Task_A/,
# Task_B/ of this checkout), figures without dataset images, then the compact, path-free copy (about 1 h on 2 cores).
reference: $(STAMP)
	$(BIN)/facecom run --preset facecom_cpu --name reference --publish docs/reference-run $(if $(DATA_ROOT),--data-root $(DATA_ROOT)) $(ARGS)

# nbval runs the notebooks with their default parameters on the synthetic demo (FACECOM_DATA_ROOT=demo,
# so the checked counts never depend on what sits in Task_A/ and Task_B/); 03 runs before 04, which reads it.
test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest tests
	HF_HUB_OFFLINE=1 TQDM_DISABLE=1 FACECOM_DATA_ROOT=demo $(BIN)/python -m pytest --nbval-lax --nbval-current-env -p no:cacheprovider notebooks/

test-fast: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest tests -m "not slow and not realdata"

demo: $(STAMP)
	$(BIN)/facecom make-demo data/demo_synthetic

# DATA_ROOT=DIR benchmarks FACECOM in DIR; without it, the synthetic demo (written first when missing).
bench: $(STAMP)
	$(if $(DATA_ROOT),,test -d data/demo_synthetic/Task_B || $(BIN)/facecom make-demo data/demo_synthetic)
	$(BIN)/python -m facecom_utils.bench --data-root $(or $(DATA_ROOT),data/demo_synthetic) --out reports/bench.json

# JupyterLab on this environment: the notebooks' python3 kernel is this .venv's interpreter, figures inline,
# progress bars on; jupytext (installed with [dev]) keeps each .ipynb paired with its .py on every save.
lab: $(STAMP)
	MPLBACKEND=module://matplotlib_inline.backend_inline $(BIN)/jupyter lab --notebook-dir=notebooks $(ARGS)

# After editing notebooks: sync each pair (the newer file wins) and strip what a save stores, keeping the
# outputs of the "# NBVAL_CHECK_OUTPUT" cells. NB=... limits it to some notebooks; EXECUTE=1 re-runs them on
# the demo data to refresh those checked outputs.
notebooks: $(STAMP)
	$(BIN)/python tools/sync_notebooks.py $(if $(EXECUTE),--execute) $(NB)

clean:
	rm -rf reports/nbval .pytest_cache
