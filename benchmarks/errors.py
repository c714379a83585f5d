"""The one error hierarchy of the project, with exit codes on the classes.

It lives in the device-side package because the benchmark runner travels to boards without the
compiler (``pipeline/``), and both must raise the same errors; ``pipeline.errors`` re-exports it.
Every message is one line that names the value received and what is accepted. The CLI prints
``error: <message>`` and exits with the class's code; nothing else maps errors to codes.

Exit codes: 0 ok; 1 a gate failed; 2 bad input or configuration; 3 a stage or an artifact failed;
4 a missing dependency; 5 busy (another run holds the lock); 130 / 143 interrupted.
"""


def first_line(exc: BaseException) -> str:
    """An exception's message as one line for an error message: its first non-blank line, or its type."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class PipelineError(Exception):
    """Base class: the message is one line that names the value received and what is accepted."""
    exit_code = 1


class ConfigError(PipelineError):
    """A target file, gate file or option is malformed or names something unknown."""
    exit_code = 2


class InputError(PipelineError):
    """A user input (model file, image folder, output folder, build folder, board) is missing or unusable."""
    exit_code = 2


class BenchError(InputError):
    """Bad input for the benchmark harness (no manifest, tampered artifact, bad option, unreachable board)."""


class StageError(PipelineError):
    """A stage failed while doing its work; the message says where the full log is."""
    exit_code = 3


class MissingDependencyError(PipelineError):
    """A tool or package the step needs is not installed or not reachable."""
    exit_code = 4


class BusyError(PipelineError):
    """Another process holds the lock on the same output (e.g. two compiles of one target)."""
    exit_code = 5
