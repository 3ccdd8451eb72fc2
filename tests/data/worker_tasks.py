"""A task function for tests of :mod:`mlvicx_monai.data.workers`, in a module light enough for spawned workers."""

import os
import signal


def square_or_die(task: int) -> int:
    """``task * 10``, except task 2, whose worker kills itself with SIGKILL as the out-of-memory killer would."""
    if task == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return task * 10
