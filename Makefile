# Every target does its own set-up on a fresh machine: a .venv made with pip, torch from a pinnable spec, then the
# package with its dev extras. Override e.g. `make test TORCH_SPEC="torch==2.5.1" PYTHON=python3.10`.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ctxdiff-installed
NOTEBOOKS := $(sort $(wildcard notebooks/*.ipynb))
# Progress bars off and one plot backend, identically when notebooks are executed and when nbval checks them.
NB_ENV := TQDM_DISABLE=1 MPLBACKEND=module://matplotlib_inline.backend_inline PYTHONHASHSEED=0

.PHONY: setup demo test test-unit test-notebooks notebooks benchmarks time-to-quality clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

demo: setup
	$(PY) -m ctxdiff_from_scratch demo --out outputs

test: test-unit test-notebooks

test-unit: setup
	$(PY) -m pytest tests

test-notebooks: setup
	$(NB_ENV) $(PY) -m pytest --nbval --nbval-current-env --nbval-sanitize-with notebooks/sanitize.cfg -p no:cacheprovider notebooks

# Re-execute every notebook top to bottom on a fresh kernel, in place, so committed outputs match the code.
notebooks: setup
	@for nb in $(NOTEBOOKS); do \
		echo "executing $$nb"; \
		(cd notebooks && $(NB_ENV) ../$(PY) -m papermill --log-level WARNING --execution-timeout 1200 --kernel python3 $$(basename $$nb) $$(basename $$nb)) || exit 1; \
	done

# The quick speed scripts; time_to_quality.py trains a whole stack (~45 min) and has a target of its own.
QUICK_BENCHMARKS := $(filter-out benchmarks/time_to_quality.py,$(wildcard benchmarks/*.py))
WORLD ?= shapes

benchmarks: setup
	@for script in $(QUICK_BENCHMARKS); do echo "== $$script"; $(PY) $$script || exit 1; done

time-to-quality: setup
	$(PY) benchmarks/time_to_quality.py --world $(WORLD)

clean:
	rm -rf $(VENV) outputs .pytest_cache
