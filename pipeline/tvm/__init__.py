"""Everything the pipeline does with TVM, one module a job: int8 (import and the integer rewrite), dot (int8
dot-product forms), schedules (default CPU schedules), tuning (MetaSchedule), link (zig / native / cross linker),
records (the tuning records' files, TVM-free), library (reading built libraries), adreno (Adreno GPU builds).
Nothing here imports the stages, the compiler or the orchestration.
"""
