# Xception edge compiler. `make help` lists the targets; README.md documents every variable.
# Each variable's default, and the arguments each verb's program gets, come from the one table of options,
# pipeline/options.py (`python3 -m pipeline.options --write` regenerates pipeline/options.mk from it).
include pipeline/options.mk

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

VERBS = compile tune bench import report analyze verify estimate provision gate baseline peers profile targets test test-system test-slow clean clean-cache
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
	@echo "make import TARGET=android-arm64 LOG=bm.txt   LiteRT benchmark_model output from a phone into the results"
	@echo "make report TARGET=rpi4          Markdown, plots and HTML from the newest results"
	@echo "make analyze TARGET=host         int8 per-layer error and sensitivity (table, JSON, plot in OUT/TARGET/analysis)"
	@echo "make verify TARGET=rpi4          run the ARM CPU artifacts under qemu and compare with the host"
	@echo "make provision TARGET=rpi4 DEVICE=user@host   install on the board the runtimes make verify proved (offline)"
	@echo "make estimate TARGET=rpi4        instructions and latency bounds per inference of each ARM CPU artifact (qemu)"
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
	@if [ -L $(call q,VENV) ] && [ ! -d $(call q,VENV) ]; then \
	  echo "error: "$(call q,VENV)" is a link to no usable folder; remove it (or set VENV= to a folder)"; exit 2; \
	fi
	@if [ ! -f $(STAMP) ] || [ requirements.lock -nt $(STAMP) ]; then \
	  $(call q,PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	    { echo "error: Python 3.11 or newer is needed (PYTHON="$(call q,PYTHON)"); set PYTHON=python3.11"; exit 2; }; \
	  echo "creating "$(call q,VENV)" with the pinned dependencies (requirements.lock)"; \
	  $(call q,PYTHON) -m venv $(call q,VENV) && \
	  $(call qs,$(value VENV)/bin/pip) install --quiet --disable-pip-version-check -r requirements.lock && \
	  touch $(STAMP); \
	fi

# every verb of the Python CLI: `make <verb>` runs `python -m pipeline <verb>` with that verb's arguments
$(PROGRAM_VERBS): %: .run-% ; $(PASS_EXIT)
$(addprefix .run-,$(PROGRAM_VERBS)): .run-%: setup
	$(PYQ) -m pipeline $* $(ARGS_$*)

profile: .run-profile ; $(PASS_EXIT)
.run-profile: setup
	$(PYQ) -m benchmarks.profile $(call qs,$(value OUT)/$(value TARGET)) $(ARGS_profile)

test: .run-test ; $(PASS_EXIT)
.run-test: setup
	PYTEST_ADDOPTS="$$PYTEST_ADDOPTS "$(call q,PYTEST_ARGS) $(PYQ) -m pytest -n $(call q,TEST_WORKERS) --dist loadfile

test-system: .run-test-system ; $(PASS_EXIT)
.run-test-system: setup
	PYTEST_ADDOPTS="$$PYTEST_ADDOPTS "$(call q,PYTEST_ARGS) $(PYQ) -m pytest -m system -n $(call q,TEST_WORKERS) --dist loadfile

test-slow: .run-test-slow ; $(PASS_EXIT)
.run-test-slow: setup
	PYTEST_ADDOPTS="$$PYTEST_ADDOPTS "$(call q,PYTEST_ARGS) $(PYQ) -m pytest -m slow

clean-cache: .run-clean-cache ; $(PASS_EXIT)
.run-clean-cache: setup
	$(PYQ) -m pipeline clean --cache $(ARGS_clean)
