# steelseg: `make demo` runs the main job on the embedded synthetic data, `make test` runs the suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# Offline model hubs, no albumentations update check, and the glibc settings that make CPU
# forward/backward 1.4-3.7x faster (they must be set before Python starts).
export HF_HUB_OFFLINE := 1
export NO_ALBUMENTATIONS_UPDATE := 1
export MALLOC_MMAP_MAX_ := 0
export MALLOC_TRIM_THRESHOLD_ := 68719476736
export PYTHONUNBUFFERED := 1

.PHONY: demo quality lint test test-slow test-e2e test-runtime bench venv clean

# The demo: synthetic data -> joint two-headed models (2 folds) -> ensemble OOF predicted as infer.py predicts ->
# threshold search (kept honest by the held-out-fold estimate) -> infer.py on the held-out synthetic test set ->
# validated submission + CV report; prints the share of the gap between all-empty and 1.0 closed.
# DATA=... picks another dataset variant, e.g. make demo DATA="data=synthetic_real_shapes" OUT=outputs/demo-real
DATA ?=
OUT ?= outputs/demo
DEMO_ARGS := data.folds.n_splits=2 data.synthetic.n_train=2000 data.synthetic.n_test=100 $(DATA)
DEMO_RECIPES := experiment=joint/demo
RUN_NAME ?= demo

# The longer CPU recipe (<= 60 minutes on 2 cores): more data and a 5x longer training.
QUALITY_OUT ?= outputs/quality
QUALITY_ARGS := data.folds.n_splits=2 data.synthetic.n_train=3000 data.synthetic.n_test=100 $(DATA)
QUALITY_RECIPES := experiment=joint/quality
QUALITY_RUN_NAME ?= quality

# The folds train side by side (Hydra's joblib launcher), each on its share of the cores: on 2 cores two 1-thread
# runs train 1.34x faster than one 2-thread run after the other (3-epoch demo runs: 116 s against 2 x 78 s).
# FOLD_JOBS=1 trains them one after the other.
FOLD_JOBS ?= 2
FOLD_THREADS := $(shell n=$$(( $$(nproc) / $(FOLD_JOBS) )); echo $$(( n > 0 ? n : 1 )))
LAUNCH := hydra/launcher=joblib hydra.launcher.n_jobs=$(FOLD_JOBS) trainer.threads=$(FOLD_THREADS) trainer.progress=false

# pipeline(recipes, data args, out folder, run name): the project's own commands, in order.
define pipeline
	@start=$$(date +%s); set -e; \
	$(PY) prepare.py $(2); \
	for recipe in $(1); do $(PY) train.py -m $(LAUNCH) $$recipe fold=0,1 run_name=$(4) $(2); done; \
	runs=$$(for recipe in $(1); do stage=$${recipe#experiment=}; echo outputs/train/$${stage%%/*}/$(4); done | sort -u); \
	$(PY) -m tuning.threshold_search $$runs --out $(3)/thresholds.json $(2); \
	images=$$($(PY) -c "import sys; from ensemble.settings import compose_infer; \
	    print(compose_infer(sys.argv[1:]).data.root)" $(2)); \
	$(PY) infer.py "checkpoints.runs=[$$(echo $$runs | tr ' ' ',')]" thresholds=$(3)/thresholds.json evaluate=true \
	    output=$(3)/submission.csv hydra.run.dir=$(3)/infer $(2) | tee $(3)/infer.log; \
	$(PY) -m common.submission validate $(3)/submission.csv --images $$images/test_images; \
	$(PY) -m analysis.report $$runs --oof $(3)/thresholds_oof --out $(3)/report \
	    --images $$images/test_images --truth $$images/test_truth.csv --limit 100 $(2); \
	echo; echo "finished in $$(( $$(date +%s) - start )) s"; \
	echo "  held-out test: $$(grep 'gap closed' $(3)/infer.log)"; \
	echo "  submission: $(3)/submission.csv (validated)   thresholds: $(3)/thresholds.json"; \
	echo "  CV report:  $(3)/report/report.html (summary: $(3)/report/report.md)"; \
	echo "  training runs: $$runs"
endef

venv: $(STAMP)

$(STAMP): requirements.txt setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: $(STAMP)
	$(call pipeline,$(DEMO_RECIPES),$(DEMO_ARGS),$(OUT),$(RUN_NAME))

quality: $(STAMP)
	$(call pipeline,$(QUALITY_RECIPES),$(QUALITY_ARGS),$(QUALITY_OUT),$(QUALITY_RUN_NAME))

# Lint and type check: ruff's rules, ruff's formatting, mypy --strict on the light core (settings and the checked
# files in pyproject.toml). `make test` runs it first, so a lint or type error fails `make test` and CI.
lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

test: $(STAMP) lint
	$(PY) -m pytest -q -m "not slow and not browser"

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

# End to end (slow, a few minutes on 2 cores): every configs/experiment recipe trains with debug=smoke, then the
# threshold search and infer.py run on the outputs; the GPU check's CPU dry run. .ci/run runs it after `make test`.
test-e2e: $(STAMP)
	$(PY) -m pytest -q -s tests/test_recipes.py tests/test_gpu_check.py
	$(PY) -m pytest -q -m "browser and not slow" tests/test_dashboard_e2e.py tests/test_dashboard_browser.py

# The torch-free runtime as a line PC gets it: a fresh venv from requirements-runtime.txt alone (+ the steelseg
# wheel), torch absent, infer.py runtime=onnx and deploy.serve --load-test on an exported bundle (~4 min first,
# faster once ~/.cache/pip holds the wheels). .ci/run runs it.
test-runtime: $(STAMP)
	$(PY) -m pytest -q tests/test_runtime.py

bench: $(STAMP)
	$(PY) benchmarks/bench_rle.py
	$(PY) benchmarks/bench_threshold.py
	$(PY) benchmarks/bench_infer.py
	$(PY) benchmarks/bench_postprocess.py
	$(PY) benchmarks/bench_tail.py
	$(PY) benchmarks/bench_onnx.py
	$(PY) benchmarks/bench_train_cpu.py

clean:
	rm -rf outputs multirun .pytest_cache data/synthetic
