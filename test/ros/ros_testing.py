"""Tools for tests that run real DDS between real processes.

Every test gets its own ROS domain (held with a file lock, so parallel test runs on one
machine never share one) and discovery is kept on localhost. Nodes under test run in
separate OS processes that are always stopped, even when the test fails.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
import signal
import subprocess
import sys
import tempfile
import time

# Fast DDS maps a domain id to UDP ports; 1..100 stays clear of the usual defaults (0).
_DOMAIN_RANGE = range(1, 101)
_LOCK_DIR = Path(tempfile.gettempdir()) / 'sindyrl_ros_test_domains'


class DomainLease:
    """Exclusive use of one ROS_DOMAIN_ID on this machine until `release()`."""

    def __init__(self) -> None:
        _LOCK_DIR.mkdir(exist_ok=True)
        start = os.getpid() % len(_DOMAIN_RANGE)
        for offset in range(len(_DOMAIN_RANGE)):
            domain_id = _DOMAIN_RANGE[(start + offset) % len(_DOMAIN_RANGE)]
            handle = open(_LOCK_DIR / f'{domain_id}.lock', 'w')  # noqa: SIM115
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            self.domain_id = domain_id
            self._handle = handle
            return
        raise RuntimeError(f'all ROS domains {_DOMAIN_RANGE} are in use by other tests')

    def release(self) -> None:
        fcntl.flock(self._handle, fcntl.LOCK_UN)
        self._handle.close()


def ros_environment(domain_id: int) -> dict[str, str]:
    """The environment for a process that joins the test's domain, localhost only."""
    env = dict(os.environ)
    env['ROS_DOMAIN_ID'] = str(domain_id)
    env['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
    env['PYTHONUNBUFFERED'] = '1'
    env.pop('ROS_LOCALHOST_ONLY', None)  # deprecated; conflicts with the range above
    return env


class NodeProcess:
    """A node (or any program) in its own process group, with its output in a log file."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.args = args
        self.log_path = log_path
        self._log = open(log_path, 'wb')  # noqa: SIM115
        self.process = subprocess.Popen(
            args, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    @classmethod
    def python_module(cls, module: str, *args: str, env, log_path) -> NodeProcess:
        return cls([sys.executable, '-m', module, *args], env, log_path)

    def alive(self) -> bool:
        return self.process.poll() is None

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors='replace')

    def signal(self, signum: int) -> None:
        if self.alive():
            os.killpg(self.process.pid, signum)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGINT (what Ctrl-C sends), then SIGTERM, then SIGKILL; returns the exit code."""
        for signum, wait in ((signal.SIGINT, timeout), (signal.SIGTERM, 3.0)):
            if not self.alive():
                break
            self.signal(signum)
            try:
                self.process.wait(wait)
            except subprocess.TimeoutExpired:
                continue
        if self.alive():
            self.signal(signal.SIGKILL)
            self.process.wait()
        self._log.close()
        return self.process.returncode

    def wait_for_output(self, text: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.output():
                return True
            if not self.alive():
                return text in self.output()
            time.sleep(0.05)
        return False


def spin_until(executor, predicate, timeout: float, step: float = 0.02) -> bool:
    """Spin `executor` until `predicate()` holds or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        executor.spin_once(timeout_sec=step)
    return predicate()
