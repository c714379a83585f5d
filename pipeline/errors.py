"""The project's one error hierarchy (defined in benchmarks/errors.py, which the device-side runner
shares); the CLI maps each class to its exit code."""
from benchmarks.errors import (GATE_CHECKED_NOTHING, GATE_FAILED, BenchError, BusyError, ConfigError,  # noqa: F401
                               InputError, MissingDependencyError, PipelineError, StageError, StorageError, fail,
                               first_line, megabytes, storage_error)
