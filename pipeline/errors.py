"""One base exception and a few subclasses; the CLI maps each to an exit code."""


class PipelineError(Exception):
    """Base class: the message is one line that names the value received and what is accepted."""
    exit_code = 1


class ConfigError(PipelineError):
    """A target file, gate file or option is malformed or names something unknown."""
    exit_code = 2


class InputError(PipelineError):
    """A user input (model file, image folder, output folder) is missing or unusable."""
    exit_code = 2


class StageError(PipelineError):
    """A stage failed while doing its work; the message says where the full log is."""
    exit_code = 3


class MissingDependencyError(PipelineError):
    """A tool or package the step needs is not installed or not reachable."""
    exit_code = 4


class BusyError(PipelineError):
    """Another process holds the lock on the same output (e.g. two compiles of one target)."""
    exit_code = 5
