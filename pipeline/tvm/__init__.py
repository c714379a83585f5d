"""Everything the pipeline does with TVM, one module a job:

int8       TFLite -> Relax import, and the rewrite of int8 conv / depthwise / FC chains into LiteRT's
           integer arithmetic
schedules  default CPU schedules and the fusion passes the build and the tuner share
tuning     MetaSchedule tuning of the fused functions, and the database of winners a build applies
link       the native, zig or cross linker for exported libraries
records    the tuning records' files and the rule for using them (no TVM import: the compiler and
           the tune summary read it without loading TVM)

The TVM stage (pipeline/stages/tvm_build.py) and `make tune` (pipeline/tuning.py) use these; nothing
here imports the stages, the compiler or the orchestration.
"""
