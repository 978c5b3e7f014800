# Every target does its own set-up on a fresh machine: a .venv made with pip, torch from a pinnable spec, then the
# package with its dev extras. Override e.g. `make test TORCH_SPEC="torch==2.5.1" PYTHON=python3.10`.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ctxdiff-installed
E2E_STAMP := $(VENV)/.ctxdiff-e2e-installed
NOTEBOOKS := $(sort $(wildcard notebooks/*.ipynb))
# Progress bars off and one plot backend, identically when notebooks are executed and when nbval checks them.
NB_ENV := TQDM_DISABLE=1 MPLBACKEND=module://matplotlib_inline.backend_inline PYTHONHASHSEED=0

.PHONY: setup demo test test-unit test-notebooks test-e2e notebooks reproduce benchmarks time-to-quality clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

$(E2E_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev,e2e]"
	touch $(E2E_STAMP)

demo: setup
	$(PY) -m ctxdiff_from_scratch demo --out outputs

test: test-unit test-notebooks

test-unit: setup
	$(PY) -m pytest tests --ignore=tests/e2e

test-notebooks: setup
	$(NB_ENV) $(PY) -m pytest --nbval --nbval-current-env --nbval-sanitize-with notebooks/sanitize.cfg -p no:cacheprovider notebooks

# The real-browser test: JupyterLab and the system's headless Chromium (Debian's `chromium`; another binary with
# CHROMIUM=/path) run notebooks 00 and 01 and use their widgets; screenshots go to outputs/e2e/.
test-e2e: $(E2E_STAMP)
	$(PY) -m pytest tests/e2e

# Re-execute every notebook top to bottom on a fresh kernel, in place, so committed outputs match the code.
notebooks: setup
	@for nb in $(NOTEBOOKS); do \
		echo "executing $$nb"; \
		(cd notebooks && $(NB_ENV) ../$(PY) -m papermill --log-level WARNING --execution-timeout 1200 --kernel python3 $$(basename $$nb) $$(basename $$nb)) || exit 1; \
	done

# Full-length runs of the notebooks through papermill parameters, executed copies in $(REPRODUCE_OUT)/ (~45 min on a
# 2-core CPU): 07 trains the denoiser part of the 45-minute recipe on the shipped frozen parts (stage 1 for up to 8
# minutes, stage 2 for 27 with the wsd schedule), 08 samples the shipped models on 96 test episodes per number, 03 and
# 04 measure the shipped autoencoders and encoders as their cards do. REPRODUCE_MINUTES shortens the training.
REPRODUCE_OUT ?= outputs/reproduce
REPRODUCE_MINUTES ?= [8, 27]
PAPERMILL := $(NB_ENV) ../$(PY) -m papermill --log-level WARNING --kernel python3

reproduce: setup
	mkdir -p $(REPRODUCE_OUT)
	cd notebooks && $(PAPERMILL) 07_training.ipynb ../$(REPRODUCE_OUT)/07_training.ipynb -y "{full_run: true, \
		threads: 2, full_minutes: $(REPRODUCE_MINUTES), full_steps: [2000, 50000], stage2_lr_decay: wsd, \
		out_root: ../$(REPRODUCE_OUT)/runs/07_training, eval_episodes: 64}"
	cd notebooks && $(PAPERMILL) 08_sampling.ipynb ../$(REPRODUCE_OUT)/08_sampling.ipynb -p n_episodes 96
	cd notebooks && $(PAPERMILL) 03_autoencoder.ipynb ../$(REPRODUCE_OUT)/03_autoencoder.ipynb -p N_EVAL 256
	cd notebooks && $(PAPERMILL) 04_context_encoders.ipynb ../$(REPRODUCE_OUT)/04_context_encoders.ipynb \
		-p eval_rounds 4
	@echo "executed notebooks in $(REPRODUCE_OUT)/"

# The quick speed scripts; time_to_quality.py trains a whole stack (~45 min) and has a target of its own.
QUICK_BENCHMARKS := $(filter-out benchmarks/time_to_quality.py,$(wildcard benchmarks/*.py))
WORLD ?= shapes

benchmarks: setup
	@for script in $(QUICK_BENCHMARKS); do echo "== $$script"; $(PY) $$script || exit 1; done

time-to-quality: setup
	$(PY) benchmarks/time_to_quality.py --world $(WORLD)

clean:
	rm -rf $(VENV) outputs .pytest_cache
