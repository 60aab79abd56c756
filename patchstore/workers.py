"""Worker processes that end with the process that started them, however it ends.

A build killed with SIGKILL can't stop its ``ProcessPoolExecutor``: the workers would write on
into a folder whose lock the kernel has already released. ``die_with_parent`` (the pool's
initializer) asks Linux to SIGKILL the worker when its parent dies (prctl PR_SET_PDEATHSIG);
where that is not available, a thread watches the parent's pid.
"""

from __future__ import annotations

import ctypes
import os
import signal
import threading
import time

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def die_with_parent(parent: int) -> None:
    """Pool initializer: end this worker when process ``parent`` ends, even by SIGKILL."""
    try:
        if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
            raise OSError(ctypes.get_errno(), "prctl failed")
    except (OSError, AttributeError):
        threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    if os.getppid() != parent:  # the build died before the signal was armed
        os._exit(1)
