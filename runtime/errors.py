"""The errors the runtime's commands raise for situations a user, not a bug, caused.

Like a DataError or a CheckpointError, the CLI prints the message (which names the file,
run or device concerned) and exits with status 1; Interrupted exits with 130, the
status of a process ended by Ctrl-C; RankStopped exits with its status and says nothing.
"""


class TrainError(Exception):
    """A run that cannot start or go on: diverged, cannot resume, no recipe, bad input file."""


class DeviceError(Exception):
    """A device that was asked for but is not there (no GPU, no CuPy)."""


class Interrupted(Exception):
    """Ctrl-C during training: the checkpoint is written and the message says how to resume."""


class RunError(Exception):
    """A run directory that cannot be created or read as asked."""


class RankStopped(Exception):
    """A rank of a data-parallel run stops because the run stopped elsewhere, where the reason
    is printed (rank 0, or the rank that failed): it ends with `status`, silently."""

    def __init__(self, status: int = 1):
        super().__init__(f"stopped with status {status}")
        self.status = status
