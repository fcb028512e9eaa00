"""Thread priority of long learning jobs, so that they yield the CPU to control.

Fits (the model updater's worker) and SAC training (the policy trainer's worker thread) are
CPU-bound for seconds to minutes, on the same cores as the controller's fixed-rate loop and
every node's callbacks.
"""

from __future__ import annotations

import os
import threading

__all__ = ['lower_thread_priority']


def lower_thread_priority(niceness: int) -> bool:
    """Give the calling thread a nice value (Linux: per thread) so learning yields to control.

    Fits and SAC training are long CPU-bound jobs; at a higher nice value the scheduler
    hands the core back to the controller as soon as it wakes.

    Parameters
    ----------
    niceness : int
        The thread's nice value, 0 to 19 (0 or less: leave its priority as it is).

    Returns
    -------
    bool
        False where the OS refuses or has no per-thread priorities.
    """
    if niceness <= 0:
        return True
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), int(niceness))
    except (AttributeError, OSError):
        return False
    return True
