"""The project's one error hierarchy (defined in benchmarks/errors.py, which the device-side runner
shares); the CLI maps each class to its exit code."""
from benchmarks.errors import (BenchError, BusyError, ConfigError, InputError, MissingDependencyError,  # noqa: F401
                               PipelineError, StageError, first_line)
