# Xception edge compiler. `make help` lists the targets; README.md documents every variable.
PYTHON     ?= python3
VENV       ?= .venv
PY         := $(VENV)/bin/python
TARGET     ?= host
WEIGHTS    ?= auto
CALIB      ?=
CALIB_N    ?= 100
EVAL       ?=
EVAL_N     ?= 0
INPUT_SIZE ?= 299
CLASSES    ?= 1000
OUT        ?= build
CACHE_DIR  ?=
REFERENCE_DIR ?=
PYTEST_ARGS ?=
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

COMMON = --out '$(OUT)' $(if $(CACHE_DIR),--cache-dir '$(CACHE_DIR)') \
         $(if $(REFERENCE_DIR),--reference-dir '$(REFERENCE_DIR)')

MSG        ?=
VERIFY_N   ?= 4
TRIALS     ?= 1000
TUNING_DIR ?=
TUNED      ?= 1
TUNE_TIMEOUT ?= 60

TUNING = $(if $(TUNING_DIR),--tuning-dir '$(TUNING_DIR)')

.PHONY: help setup compile tune bench report verify gate baseline peers profile targets test test-slow clean clean-cache

help:
	@echo "make setup                       create $(VENV) with the pinned dependencies (automatic)"
	@echo "make compile TARGET=rpi4         compile a target into $(OUT)/<target>/ (see README for variables)"
	@echo "make tune TARGET=host [TRIALS=n] [RPC=host:port KEY=k]   MetaSchedule tuning; records in targets/tuning/"
	@echo "make bench TARGET=rpi4 [DEVICE=user@host | RPC=host:port KEY=k]   benchmark the artifacts"
	@echo "make report TARGET=rpi4          Markdown, plots and HTML from the newest results"
	@echo "make verify TARGET=rpi4          run the ARM CPU artifacts under qemu and compare with the host"
	@echo "make gate TARGET=host            int8 accuracy/size/speed gates; exit 1 on failure; JUnit in OUT/<t>/gate/"
	@echo "make baseline TARGET=host MSG=.. record the current int8 figures as the committed baseline"
	@echo "make peers                       LiteRT / ONNX Runtime / TVM on Xception 299x299 here, one run"
	@echo "make profile TARGET=host         per-function time of the TVM libraries (where the time goes)"
	@echo "make targets                     list the targets"
	@echo "make test                        run the fast test suite"
	@echo "make test-slow                   run the Xception-size tests (minutes)"
	@echo "make clean                       remove $(OUT)/ ; make clean-cache also removes the stage cache"

$(VENV)/.installed: requirements.lock
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "error: Python 3.11 or newer is needed (PYTHON=$(PYTHON)); set PYTHON=python3.11"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements.lock
	@touch $@

setup: $(VENV)/.installed

compile: setup
	$(PY) -m pipeline compile --target '$(TARGET)' --weights '$(WEIGHTS)' \
	  $(if $(CALIB),--calib '$(CALIB)') --calib-n '$(CALIB_N)' \
	  $(if $(EVAL),--eval '$(EVAL)') --eval-n '$(EVAL_N)' \
	  --input-size '$(INPUT_SIZE)' --classes '$(CLASSES)' $(TUNING) $(if $(filter 0,$(TUNED)),--no-tuning) $(COMMON)

tune: setup
	$(PY) -m pipeline tune --target '$(TARGET)' --weights '$(WEIGHTS)' \
	  $(if $(CALIB),--calib '$(CALIB)') --calib-n '$(CALIB_N)' \
	  --input-size '$(INPUT_SIZE)' --classes '$(CLASSES)' --trials '$(TRIALS)' --timeout '$(TUNE_TIMEOUT)' \
	  $(if $(RPC),--rpc '$(RPC)') $(if $(KEY),--key '$(KEY)') $(TUNING) $(COMMON)

bench: setup
	$(PY) -m pipeline bench --target '$(TARGET)' --out '$(OUT)' \
	  $(if $(DEVICE),--device '$(DEVICE)' --remote-python '$(REMOTE_PYTHON)' --ssh-opts '$(SSH_OPTS)') \
	  $(if $(PORT),--port '$(PORT)') $(if $(RPC),--rpc '$(RPC)') $(if $(KEY),--key '$(KEY)') \
	  --threads '$(THREADS)' --eval-n '$(BENCH_EVAL_N)' --min-runs '$(MIN_RUNS)' \
	  --min-seconds '$(MIN_SECONDS)' --max-seconds '$(MAX_SECONDS)' --accuracy-seconds '$(ACC_SECONDS)'

peers: setup
	$(PY) -m pipeline peers --out '$(OUT)' --threads '$(THREADS)' $(TUNING) $(if $(CACHE_DIR),--cache-dir '$(CACHE_DIR)')

profile: setup
	$(PY) -m benchmarks.profile '$(OUT)/$(TARGET)' --threads '$(THREADS)'

verify: setup
	$(PY) -m pipeline verify --target '$(TARGET)' --out '$(OUT)' --n '$(VERIFY_N)' $(if $(CACHE_DIR),--cache-dir '$(CACHE_DIR)')

gate: setup
	$(PY) -m pipeline gate --target '$(TARGET)' --out '$(OUT)'

baseline: setup
	$(PY) -m pipeline baseline --target '$(TARGET)' --out '$(OUT)' --msg '$(MSG)'

report: setup
	$(PY) -m pipeline report --target '$(TARGET)' --out '$(OUT)'

targets: setup
	$(PY) -m pipeline targets

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

test-slow: setup
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

clean: setup
	$(PY) -m pipeline clean $(COMMON)

clean-cache: setup
	$(PY) -m pipeline clean --cache $(COMMON)
