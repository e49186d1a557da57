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

.PHONY: demo test test-slow test-e2e bench venv clean

# The demo: synthetic data -> classifier and segmenter (2 folds each) -> threshold search on the
# out-of-fold predictions -> infer.py on the synthetic test set -> validated submission + CV report.
DEMO_ARGS := data.folds.n_splits=2
DEMO_DATA := data/synthetic/drawn_seed0_train200_test40
DEMO_OUT := outputs/demo
CLS_RUN := outputs/train/classifier/demo
SEG_RUN := outputs/train/segmenter/demo

venv: $(STAMP)

$(STAMP): requirements.txt setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: $(STAMP)
	@start=$$(date +%s); set -e; \
	$(PY) prepare.py $(DEMO_ARGS); \
	$(PY) train.py -m experiment=classifier/demo fold=0,1 $(DEMO_ARGS); \
	$(PY) train.py -m experiment=segmenter/demo fold=0,1 $(DEMO_ARGS); \
	$(PY) -m ensemble.threshold_search $(CLS_RUN) $(SEG_RUN) --out $(DEMO_OUT)/thresholds.json; \
	$(PY) infer.py checkpoints.classifier=[$(CLS_RUN)] checkpoints.segmenter=[$(SEG_RUN)] \
	    thresholds=$(DEMO_OUT)/thresholds.json evaluate=true output=$(DEMO_OUT)/submission.csv \
	    hydra.run.dir=$(DEMO_OUT)/infer; \
	$(PY) -m common.submission validate $(DEMO_OUT)/submission.csv --images $(DEMO_DATA)/test_images; \
	$(PY) -m analysis.report $(CLS_RUN) $(SEG_RUN) --out $(DEMO_OUT)/report \
	    --images $(DEMO_DATA)/test_images --truth $(DEMO_DATA)/test_truth.csv; \
	echo; echo "demo finished in $$(( $$(date +%s) - start )) s"; \
	echo "  submission: $(DEMO_OUT)/submission.csv (validated)"; \
	echo "  thresholds: $(DEMO_OUT)/thresholds.json"; \
	echo "  CV report:  $(DEMO_OUT)/report/report.html (summary: $(DEMO_OUT)/report/report.md)"; \
	echo "  training runs: $(CLS_RUN)/fold{0,1}, $(SEG_RUN)/fold{0,1}"

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

# End to end (slow, a few minutes on 2 cores): every configs/experiment recipe trains with debug=smoke, then the
# threshold search and infer.py run on the outputs; the GPU check's CPU dry run. .ci/run runs it after `make test`.
test-e2e: $(STAMP)
	$(PY) -m pytest -q -s tests/test_recipes.py tests/test_gpu_check.py

bench: $(STAMP)
	$(PY) benchmarks/bench_rle.py
	$(PY) benchmarks/bench_threshold.py
	$(PY) benchmarks/bench_infer.py
	$(PY) benchmarks/bench_postprocess.py

clean:
	rm -rf outputs multirun .pytest_cache data/synthetic
