# Xception edge compiler. `make help` lists the targets; README.md documents every variable.
PYTHON     ?= python3
VENV       ?= .venv
TARGET     ?= host
WEIGHTS    ?= auto
CALIB      ?=
CALIB_N    ?= 100
CALIB_METHOD ?= minmax
RECOVER    ?= 1
RECOVER_CAP ?= 8
ANALYZE_N  ?= 16
EVAL       ?=
EVAL_N     ?= 0
INPUT_SIZE ?=
CLASSES    ?= 1000
OUT        ?= build
CACHE_DIR  ?=
REFERENCE_DIR ?=
TARGETS_DIR ?=
PREPROCESS ?=
RESIZE     ?=
CROP       ?=
LABELS     ?=
GATES      ?=
BASELINES  ?=
PYTEST_ARGS ?=
TEST_WORKERS ?= auto
DEVICE     ?=
PORT       ?=
SSH_OPTS   ?=
REMOTE_PYTHON ?= python3
RPC        ?=
KEY        ?=
THREADS    ?= 0
BENCH_EVAL_N ?= 0
MIN_RUNS   ?= 10
MIN_SECONDS ?= 2
MAX_SECONDS ?= 30
ACC_SECONDS ?= 120

# Every variable reaches the program exactly as typed, whatever it holds (quotes, spaces, ;, $, `...`, $(...)):
#  - $(value V): make never expands what a user typed, so $(shell ...) text stays text;
#  - q / qv make one shell word of it: inside single quotes the shell interprets nothing, and a ' in the value
#    is written as '"'"' (close the quotes, a quoted ', reopen);
#  - command-line variables are not exported to the recipes' environment: make would expand them to do so.
qs = '$(subst ','"'"',$(1))'
q = $(call qs,$(value $(1)))
# non-empty when the variable is set (tested on its raw value, never expanded)
set = $(strip $(value $(1)))
$(foreach v,$(.VARIABLES),$(if $(filter command line,$(origin $(v))),$(eval unexport $(v))))
PYQ = $(call qs,$(value VENV)/bin/python)

# the target and model as compile and analyze take them
MODEL_ARGS = --target=$(call q,TARGET) --weights=$(call q,WEIGHTS) \
  $(if $(call set,CALIB),--calib=$(call q,CALIB)) --calib-n=$(call q,CALIB_N) \
  $(if $(call set,EVAL),--eval=$(call q,EVAL)) --eval-n=$(call q,EVAL_N) \
  $(if $(call set,INPUT_SIZE),--input-size=$(call q,INPUT_SIZE)) --classes=$(call q,CLASSES) --calib-method=$(call q,CALIB_METHOD) \
  --preprocess=$(call q,PREPROCESS) $(if $(call set,RESIZE),--resize=$(call q,RESIZE)) \
  $(if $(call set,CROP),--crop=$(call q,CROP)) $(if $(call set,LABELS),--labels=$(call q,LABELS))
TARGETS = $(if $(call set,TARGETS_DIR),--targets-dir=$(call q,TARGETS_DIR))
COMMON = --out=$(call q,OUT) $(if $(call set,CACHE_DIR),--cache-dir=$(call q,CACHE_DIR)) \
         $(if $(call set,REFERENCE_DIR),--reference-dir=$(call q,REFERENCE_DIR)) $(TARGETS)
GATE_FILES = $(if $(call set,GATES),--gates=$(call q,GATES)) $(if $(call set,BASELINES),--baselines=$(call q,BASELINES))

MSG        ?=
VERIFY_N   ?= 4
VERIFY_CORE ?=
TRIALS     ?= 1000
TUNING_DIR ?=
TUNED      ?= 1
TUNE_TIMEOUT ?= 60

TUNING = $(if $(call set,TUNING_DIR),--tuning-dir=$(call q,TUNING_DIR))

VERBS = compile tune bench report analyze verify gate baseline peers profile targets test test-system test-slow clean clean-cache
.PHONY: help setup $(VERBS) $(addprefix .run-,$(VERBS))

# `make <verb>` exits with the program's own code (0 ok, 1 gate failed, 2 bad input, 3, 4, 5, 130, 143; pytest's
# for test), not make's 2 for every failure. Each verb's program runs in a prerequisite, .run-<verb>, whose shell
# records the code and succeeds; the verb's recipe then calls $(xc-exit FILE), a function of our make plugin
# (pipeline/native/make_exit.c, built here on first use) that ends make with that code. Without a C compiler or
# a make that can `load`, plain recipes run and a failure is make's 2.
-load .make/xc_exit.so
.make/xc_exit.so: pipeline/native/make_exit.c
	@mkdir -p .make && { $(CC) -shared -fPIC -O2 -o $@.$$$$ $< 2>/dev/null && mv -f $@.$$$$ $@; } || rm -f $@.$$$$
ifneq ($(filter xc_exit.so,$(notdir $(.LOADED))),)
EXIT_FILE := .make/exit.$(shell echo $$PPID)
$(addprefix .run-,$(VERBS)): .SHELLFLAGS = -c '/bin/sh -c "$$0"; echo $$? > $(EXIT_FILE)'
PASS_EXIT = @:$(xc-exit $(EXIT_FILE))
endif

help:
	@echo "make setup                       create .venv (VENV=) with the pinned dependencies (automatic)"
	@echo "make compile TARGET=rpi4         compile a target into build/<target>/ (OUT=; see README for variables)"
	@echo "make tune TARGET=host [TRIALS=n] [RPC=host:port KEY=k]   MetaSchedule tuning; records in targets/tuning/"
	@echo "make bench TARGET=rpi4 [DEVICE=user@host | RPC=host:port KEY=k]   benchmark the artifacts"
	@echo "make report TARGET=rpi4          Markdown, plots and HTML from the newest results"
	@echo "make analyze TARGET=host         int8 per-layer error and sensitivity (table, JSON, plot in OUT/TARGET/analysis)"
	@echo "make verify TARGET=rpi4          run the ARM CPU artifacts under qemu and compare with the host"
	@echo "make gate TARGET=host            int8 accuracy/size/speed gates; exit 1 on failure; JUnit in OUT/<t>/gate/"
	@echo "make baseline TARGET=host MSG=.. record the current int8 figures as the committed baseline"
	@echo "make peers                       LiteRT / ONNX Runtime / TVM on Xception 299x299 here, one run"
	@echo "make profile TARGET=host         per-function time of the TVM libraries (where the time goes)"
	@echo "make targets                     list the targets"
	@echo "make test                        run the fast test suite (every change; under 5 minutes)"
	@echo "make test-system                 tiny models through qemu boards, OpenCL on CPU, tuning (CI; minutes)"
	@echo "make test-slow                   run the Xception-size tests (minutes)"
	@echo "make clean                       remove build/ (OUT=); make clean-cache also removes the stage cache"

# (a shell test rather than a file target: make cannot name a file whose path has a space)
STAMP = $(call qs,$(value VENV)/.installed)
setup:
	@if [ ! -f $(STAMP) ] || [ requirements.lock -nt $(STAMP) ]; then \
	  $(call q,PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	    { echo "error: Python 3.11 or newer is needed (PYTHON="$(call q,PYTHON)"); set PYTHON=python3.11"; exit 2; }; \
	  echo "creating "$(call q,VENV)" with the pinned dependencies (requirements.lock)"; \
	  $(call q,PYTHON) -m venv $(call q,VENV) && \
	  $(call qs,$(value VENV)/bin/pip) install --quiet --disable-pip-version-check -r requirements.lock && \
	  touch $(STAMP); \
	fi

compile: .run-compile ; $(PASS_EXIT)
.run-compile: setup
	$(PYQ) -m pipeline compile $(MODEL_ARGS) --recover=$(call q,RECOVER) --recover-cap=$(call q,RECOVER_CAP) $(TUNING) $(if $(filter 0,$(value TUNED)),--no-tuning) $(COMMON)

tune: .run-tune ; $(PASS_EXIT)
.run-tune: setup
	$(PYQ) -m pipeline tune --target=$(call q,TARGET) --weights=$(call q,WEIGHTS) \
	  $(if $(call set,CALIB),--calib=$(call q,CALIB)) --calib-n=$(call q,CALIB_N) \
	  $(if $(call set,INPUT_SIZE),--input-size=$(call q,INPUT_SIZE)) --classes=$(call q,CLASSES) --trials=$(call q,TRIALS) --timeout=$(call q,TUNE_TIMEOUT) \
  --preprocess=$(call q,PREPROCESS) $(if $(call set,RESIZE),--resize=$(call q,RESIZE)) $(if $(call set,CROP),--crop=$(call q,CROP)) $(if $(call set,LABELS),--labels=$(call q,LABELS)) \
	  --recover=$(call q,RECOVER) --recover-cap=$(call q,RECOVER_CAP) \
	  $(if $(call set,RPC),--rpc=$(call q,RPC)) $(if $(call set,KEY),--key=$(call q,KEY)) $(TUNING) $(COMMON)

bench: .run-bench ; $(PASS_EXIT)
.run-bench: setup
	$(PYQ) -m pipeline bench --target=$(call q,TARGET) --out=$(call q,OUT) \
	  $(if $(call set,DEVICE),--device=$(call q,DEVICE) --remote-python=$(call q,REMOTE_PYTHON) --ssh-opts=$(call q,SSH_OPTS)) \
	  $(if $(call set,PORT),--port=$(call q,PORT)) $(if $(call set,RPC),--rpc=$(call q,RPC)) $(if $(call set,KEY),--key=$(call q,KEY)) \
	  --threads=$(call q,THREADS) --eval-n=$(call q,BENCH_EVAL_N) --min-runs=$(call q,MIN_RUNS) \
	  --min-seconds=$(call q,MIN_SECONDS) --max-seconds=$(call q,MAX_SECONDS) --accuracy-seconds=$(call q,ACC_SECONDS)

peers: .run-peers ; $(PASS_EXIT)
.run-peers: setup
	$(PYQ) -m pipeline peers --out=$(call q,OUT) --threads=$(call q,THREADS) $(TUNING) $(if $(call set,CACHE_DIR),--cache-dir=$(call q,CACHE_DIR))

profile: .run-profile ; $(PASS_EXIT)
.run-profile: setup
	$(PYQ) -m benchmarks.profile $(call qs,$(value OUT)/$(value TARGET)) --threads=$(call q,THREADS)

analyze: .run-analyze ; $(PASS_EXIT)
.run-analyze: setup
	$(PYQ) -m pipeline analyze $(MODEL_ARGS) --analyze-n=$(call q,ANALYZE_N) $(COMMON)

verify: .run-verify ; $(PASS_EXIT)
.run-verify: setup
	$(PYQ) -m pipeline verify --target=$(call q,TARGET) --out=$(call q,OUT) --n=$(call q,VERIFY_N) $(if $(call set,VERIFY_CORE),--core=$(call q,VERIFY_CORE)) $(if $(call set,CACHE_DIR),--cache-dir=$(call q,CACHE_DIR)) $(TARGETS)

gate: .run-gate ; $(PASS_EXIT)
.run-gate: setup
	$(PYQ) -m pipeline gate --target=$(call q,TARGET) --out=$(call q,OUT) $(GATE_FILES)

baseline: .run-baseline ; $(PASS_EXIT)
.run-baseline: setup
	$(PYQ) -m pipeline baseline --target=$(call q,TARGET) --out=$(call q,OUT) --msg=$(call q,MSG) $(if $(call set,BASELINES),--baselines=$(call q,BASELINES))

report: .run-report ; $(PASS_EXIT)
.run-report: setup
	$(PYQ) -m pipeline report --target=$(call q,TARGET) --out=$(call q,OUT)

targets: .run-targets ; $(PASS_EXIT)
.run-targets: setup
	$(PYQ) -m pipeline targets $(TARGETS)

test: .run-test ; $(PASS_EXIT)
.run-test: setup
	PYTEST_ADDOPTS="$$PYTEST_ADDOPTS "$(call q,PYTEST_ARGS) $(PYQ) -m pytest -n $(call q,TEST_WORKERS) --dist loadfile

test-system: .run-test-system ; $(PASS_EXIT)
.run-test-system: setup
	PYTEST_ADDOPTS="$$PYTEST_ADDOPTS "$(call q,PYTEST_ARGS) $(PYQ) -m pytest -m system -n $(call q,TEST_WORKERS) --dist loadfile

test-slow: .run-test-slow ; $(PASS_EXIT)
.run-test-slow: setup
	PYTEST_ADDOPTS="$$PYTEST_ADDOPTS "$(call q,PYTEST_ARGS) $(PYQ) -m pytest -m slow

clean: .run-clean ; $(PASS_EXIT)
.run-clean: setup
	$(PYQ) -m pipeline clean $(COMMON)

clean-cache: .run-clean-cache ; $(PASS_EXIT)
.run-clean-cache: setup
	$(PYQ) -m pipeline clean --cache $(COMMON)
