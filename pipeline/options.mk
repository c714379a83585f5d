# generated from pipeline/options.py by `python3 -m pipeline.options --write`; do not edit

TARGET ?= host
WEIGHTS ?= auto
CALIB ?=
CALIB_N ?= 100
CALIB_METHOD ?= minmax
RECOVER ?= 1
RECOVER_CAP ?= 8
EQUALIZE ?= auto
RECOVER_RUNGS ?= cle,bias,16x8,float
ANALYZE_N ?= 16
PREPROCESS ?=
RESIZE ?=
CROP ?=
LABELS ?=
EVAL ?=
EVAL_N ?= 0
INPUT_SIZE ?=
CLASSES ?= 1000
OUT ?= build
CACHE_DIR ?=
REFERENCE_DIR ?=
TARGETS_DIR ?=
GATES ?=
BASELINES ?=
DEVICE ?=
PORT ?=
SSH_OPTS ?=
REMOTE_PYTHON ?=
LOG ?=
PHONE ?=
SHA256 ?=
RPC ?=
KEY ?=
TRIALS ?= 1000
TUNE_TIMEOUT ?= 60
TUNING_DIR ?=
TUNED ?= 1
THREADS ?= 0
MIN_RUNS ?= 10
MIN_SECONDS ?= 2
MAX_SECONDS ?= 30
ACC_SECONDS ?= 120
BENCH_EVAL_N ?= 0
MSG ?=
VERIFY_N ?= 4
VERIFY_CORE ?=
ESTIMATE_CORE ?=
PYTEST_ARGS ?=
TEST_WORKERS ?= auto
PYTHON ?= python3
VENV ?= .venv

ARGS_compile = --target=$(call q,TARGET) \
  --weights=$(call q,WEIGHTS) \
  $(if $(call set,CALIB),--calib=$(call q,CALIB)) \
  --calib-n=$(call q,CALIB_N) \
  --calib-method=$(call q,CALIB_METHOD) \
  --recover=$(call q,RECOVER) \
  --recover-cap=$(call q,RECOVER_CAP) \
  --equalize=$(call q,EQUALIZE) \
  --recover-rungs=$(call q,RECOVER_RUNGS) \
  $(if $(call set,PREPROCESS),--preprocess=$(call q,PREPROCESS)) \
  $(if $(call set,RESIZE),--resize=$(call q,RESIZE)) \
  $(if $(call set,CROP),--crop=$(call q,CROP)) \
  $(if $(call set,LABELS),--labels=$(call q,LABELS)) \
  $(if $(call set,EVAL),--eval=$(call q,EVAL)) \
  --eval-n=$(call q,EVAL_N) \
  $(if $(call set,INPUT_SIZE),--input-size=$(call q,INPUT_SIZE)) \
  --classes=$(call q,CLASSES) \
  --out=$(call q,OUT) \
  $(if $(call set,CACHE_DIR),--cache-dir=$(call q,CACHE_DIR)) \
  $(if $(call set,REFERENCE_DIR),--reference-dir=$(call q,REFERENCE_DIR)) \
  $(if $(call set,TARGETS_DIR),--targets-dir=$(call q,TARGETS_DIR)) \
  $(if $(call set,TUNING_DIR),--tuning-dir=$(call q,TUNING_DIR)) \
  --tuned=$(call q,TUNED)
ARGS_analyze = --target=$(call q,TARGET) \
  --weights=$(call q,WEIGHTS) \
  $(if $(call set,CALIB),--calib=$(call q,CALIB)) \
  --calib-n=$(call q,CALIB_N) \
  --calib-method=$(call q,CALIB_METHOD) \
  --analyze-n=$(call q,ANALYZE_N) \
  $(if $(call set,PREPROCESS),--preprocess=$(call q,PREPROCESS)) \
  $(if $(call set,RESIZE),--resize=$(call q,RESIZE)) \
  $(if $(call set,CROP),--crop=$(call q,CROP)) \
  $(if $(call set,LABELS),--labels=$(call q,LABELS)) \
  $(if $(call set,EVAL),--eval=$(call q,EVAL)) \
  --eval-n=$(call q,EVAL_N) \
  $(if $(call set,INPUT_SIZE),--input-size=$(call q,INPUT_SIZE)) \
  --classes=$(call q,CLASSES) \
  --out=$(call q,OUT) \
  $(if $(call set,CACHE_DIR),--cache-dir=$(call q,CACHE_DIR)) \
  $(if $(call set,REFERENCE_DIR),--reference-dir=$(call q,REFERENCE_DIR)) \
  $(if $(call set,TARGETS_DIR),--targets-dir=$(call q,TARGETS_DIR))
ARGS_tune = --target=$(call q,TARGET) \
  --weights=$(call q,WEIGHTS) \
  $(if $(call set,CALIB),--calib=$(call q,CALIB)) \
  --calib-n=$(call q,CALIB_N) \
  --recover=$(call q,RECOVER) \
  --recover-cap=$(call q,RECOVER_CAP) \
  --equalize=$(call q,EQUALIZE) \
  --recover-rungs=$(call q,RECOVER_RUNGS) \
  $(if $(call set,PREPROCESS),--preprocess=$(call q,PREPROCESS)) \
  $(if $(call set,RESIZE),--resize=$(call q,RESIZE)) \
  $(if $(call set,CROP),--crop=$(call q,CROP)) \
  $(if $(call set,LABELS),--labels=$(call q,LABELS)) \
  $(if $(call set,INPUT_SIZE),--input-size=$(call q,INPUT_SIZE)) \
  --classes=$(call q,CLASSES) \
  --out=$(call q,OUT) \
  $(if $(call set,CACHE_DIR),--cache-dir=$(call q,CACHE_DIR)) \
  $(if $(call set,REFERENCE_DIR),--reference-dir=$(call q,REFERENCE_DIR)) \
  $(if $(call set,TARGETS_DIR),--targets-dir=$(call q,TARGETS_DIR)) \
  $(if $(call set,RPC),--rpc=$(call q,RPC)) \
  $(if $(call set,KEY),--key=$(call q,KEY)) \
  --trials=$(call q,TRIALS) \
  --timeout=$(call q,TUNE_TIMEOUT) \
  $(if $(call set,TUNING_DIR),--tuning-dir=$(call q,TUNING_DIR))
ARGS_bench = --target=$(call q,TARGET) \
  --out=$(call q,OUT) \
  $(if $(call set,CACHE_DIR),--cache-dir=$(call q,CACHE_DIR)) \
  $(if $(call set,DEVICE),--device=$(call q,DEVICE)) \
  $(if $(call set,PORT),--port=$(call q,PORT)) \
  $(if $(call set,SSH_OPTS),--ssh-opts=$(call q,SSH_OPTS)) \
  $(if $(call set,REMOTE_PYTHON),--remote-python=$(call q,REMOTE_PYTHON)) \
  $(if $(call set,RPC),--rpc=$(call q,RPC)) \
  $(if $(call set,KEY),--key=$(call q,KEY)) \
  --threads=$(call q,THREADS) \
  --min-runs=$(call q,MIN_RUNS) \
  --min-seconds=$(call q,MIN_SECONDS) \
  --max-seconds=$(call q,MAX_SECONDS) \
  --accuracy-seconds=$(call q,ACC_SECONDS) \
  --eval-n=$(call q,BENCH_EVAL_N)
ARGS_report = --target=$(call q,TARGET) \
  --out=$(call q,OUT)
ARGS_verify = --target=$(call q,TARGET) \
  --out=$(call q,OUT) \
  $(if $(call set,CACHE_DIR),--cache-dir=$(call q,CACHE_DIR)) \
  $(if $(call set,TARGETS_DIR),--targets-dir=$(call q,TARGETS_DIR)) \
  --n=$(call q,VERIFY_N) \
  $(if $(call set,VERIFY_CORE),--core=$(call q,VERIFY_CORE))
ARGS_gate = --target=$(call q,TARGET) \
  --out=$(call q,OUT) \
  $(if $(call set,GATES),--gates=$(call q,GATES)) \
  $(if $(call set,BASELINES),--baselines=$(call q,BASELINES))
ARGS_baseline = --target=$(call q,TARGET) \
  --out=$(call q,OUT) \
  $(if $(call set,BASELINES),--baselines=$(call q,BASELINES)) \
  $(if $(call set,MSG),--msg=$(call q,MSG))
ARGS_provision = --target=$(call q,TARGET) \
  $(if $(call set,CACHE_DIR),--cache-dir=$(call q,CACHE_DIR)) \
  $(if $(call set,TARGETS_DIR),--targets-dir=$(call q,TARGETS_DIR)) \
  $(if $(call set,DEVICE),--device=$(call q,DEVICE)) \
  $(if $(call set,PORT),--port=$(call q,PORT)) \
  $(if $(call set,SSH_OPTS),--ssh-opts=$(call q,SSH_OPTS))
ARGS_import = --target=$(call q,TARGET) \
  --out=$(call q,OUT) \
  $(if $(call set,LOG),--log=$(call q,LOG)) \
  $(if $(call set,PHONE),--phone=$(call q,PHONE)) \
  $(if $(call set,SHA256),--sha256=$(call q,SHA256))
ARGS_estimate = --target=$(call q,TARGET) \
  --out=$(call q,OUT) \
  $(if $(call set,CACHE_DIR),--cache-dir=$(call q,CACHE_DIR)) \
  $(if $(call set,TARGETS_DIR),--targets-dir=$(call q,TARGETS_DIR)) \
  $(if $(call set,ESTIMATE_CORE),--core=$(call q,ESTIMATE_CORE))
ARGS_peers = $(if $(call set,INPUT_SIZE),--input-size=$(call q,INPUT_SIZE)) \
  --out=$(call q,OUT) \
  $(if $(call set,CACHE_DIR),--cache-dir=$(call q,CACHE_DIR)) \
  $(if $(call set,TUNING_DIR),--tuning-dir=$(call q,TUNING_DIR)) \
  --threads=$(call q,THREADS) \
  --max-seconds=$(call q,MAX_SECONDS)
ARGS_clean = --out=$(call q,OUT) \
  $(if $(call set,CACHE_DIR),--cache-dir=$(call q,CACHE_DIR)) \
  $(if $(call set,REFERENCE_DIR),--reference-dir=$(call q,REFERENCE_DIR)) \
  $(if $(call set,TARGETS_DIR),--targets-dir=$(call q,TARGETS_DIR))
ARGS_targets = $(if $(call set,TARGETS_DIR),--targets-dir=$(call q,TARGETS_DIR))
ARGS_profile = --threads=$(call q,THREADS)
PROGRAM_VERBS = compile analyze tune bench report verify gate baseline provision import estimate peers clean targets
