"""A ROS domain of one's own on this machine: for tests, benchmarks and parallel runs.

Processes that must not hear anyone else (a test's nodes, a benchmark's graph) take a
ROS_DOMAIN_ID held with a file lock, so parallel runs on one machine never share one, and
keep discovery on localhost.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
import tempfile

# Fast DDS maps a domain id to UDP ports; 1..100 stays clear of the usual default (0).
DOMAIN_RANGE = range(1, 101)
LOCK_DIR = Path(tempfile.gettempdir()) / 'sindyrl_ros_test_domains'


class DomainLease:
    """Exclusive use of one ROS_DOMAIN_ID on this machine until :meth:`release`."""

    def __init__(self) -> None:
        LOCK_DIR.mkdir(exist_ok=True)
        start = os.getpid() % len(DOMAIN_RANGE)
        for offset in range(len(DOMAIN_RANGE)):
            domain_id = DOMAIN_RANGE[(start + offset) % len(DOMAIN_RANGE)]
            handle = open(LOCK_DIR / f'{domain_id}.lock', 'w')  # noqa: SIM115
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            self.domain_id = domain_id
            self._handle = handle
            return
        raise RuntimeError(f'all ROS domains {DOMAIN_RANGE} are in use on this machine')

    def release(self) -> None:
        fcntl.flock(self._handle, fcntl.LOCK_UN)
        self._handle.close()


def localhost_environment(domain_id: int, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a process joining ``domain_id``, discovery on this machine only."""
    env = dict(os.environ if base is None else base)
    env['ROS_DOMAIN_ID'] = str(domain_id)
    env['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
    env['PYTHONUNBUFFERED'] = '1'
    env.pop('ROS_LOCALHOST_ONLY', None)  # deprecated; conflicts with the range above
    return env
