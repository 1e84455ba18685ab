"""One error tree for hpcinfer; every message says what went wrong and how to fix it.

Only failures of a whole run raise. A bad record is data (an error row), never an exception.
"""

from __future__ import annotations


class HpcinferError(Exception):
    """Base of every error hpcinfer raises on purpose; the CLI prints it without a traceback."""

    exit_code = 1


class SpecError(HpcinferError):
    """The job spec (YAML file or CLI flags) is invalid; nothing was started."""

    exit_code = 2


class InputError(HpcinferError):
    """An input path or input option cannot be used at all (as opposed to one bad record)."""

    exit_code = 2


class ResumeConflictError(HpcinferError):
    """The output directory holds results of a different spec; resuming would mix them."""

    exit_code = 2


class HardwareError(HpcinferError):
    """A hardware profile or placement request cannot be satisfied."""

    exit_code = 2


class EngineError(HpcinferError):
    """The inference engine failed as a whole (not one record)."""

    exit_code = 1


class LaunchError(HpcinferError):
    """The ranks could not be started where asked (e.g. ssh cannot reach a host)."""

    exit_code = 1


class RayClusterError(HpcinferError):
    """A Ray cluster did not come up as asked, cannot be reached, or is not as recorded."""

    exit_code = 1


class ProvisionError(HpcinferError):
    """A `cluster` command failed on a node of a cluster of one's own (each host named)."""

    exit_code = 1


class ModelBuildError(HpcinferError):
    """The built-in tiny model could not be built."""

    exit_code = 1


class StoppedError(HpcinferError):
    """A stop was requested (signal, `StopSignal`) before there was anything to keep."""

    exit_code = 4  # ExitCode.INCOMPLETE: rerun the same command to resume
