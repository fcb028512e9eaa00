"""Child processes: started in their own process group with their output in a log file,
stopped as Ctrl-C would stop them, then harder.

One implementation for everything that starts programs of the graph: the `sindyrl-ros`
command (its nodes and the rig emulator), the tests over real DDS and the benchmarks.

Why a process group of its own: a node's worker processes (the model updater's fit worker)
are stopped with it, and a Ctrl-C on the terminal reaches only the program that started
the nodes, which then stops them in order (the controller first sends its safe command).

Why the thread that starts a child matters: a node asks Linux for SIGTERM when its parent
dies (PR_SET_PDEATHSIG, see ``ros.runtime.run_node``), and Linux sends it when the *thread*
that forked the node exits. Start children from a thread that outlives them (the main
thread), never from a short-lived worker thread.
"""

from __future__ import annotations

from collections.abc import Iterable
import os
from pathlib import Path
import signal
import subprocess
import sys
import time

# Seconds to wait after SIGTERM and after SIGKILL (SIGINT's wait is the caller's timeout).
TERM_TIMEOUT = 3.0
KILL_TIMEOUT = 3.0


def ros_environment(
    domain_id: int | None = None, localhost: bool = True, base: dict[str, str] | None = None
) -> dict[str, str]:
    """The environment of a process that joins a ROS domain.

    Parameters
    ----------
    domain_id : int, optional
        ROS_DOMAIN_ID to set (default: keep the one of ``base``).
    localhost : bool
        Keep discovery on this machine (``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``); the
        deprecated ``ROS_LOCALHOST_ONLY``, which conflicts with it, is removed.
    base : dict, optional
        The environment to start from (default: this process's).

    Returns
    -------
    dict
        A new environment; Python output unbuffered, so logs are written as they happen.
    """
    env = dict(os.environ if base is None else base)
    env['PYTHONUNBUFFERED'] = '1'
    if domain_id is not None:
        env['ROS_DOMAIN_ID'] = str(domain_id)
    if localhost:
        env['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
        env.pop('ROS_LOCALHOST_ONLY', None)
    return env


class ChildProcess:
    """A program in its own process group, its standard output and error in ``log_path``.

    Parameters
    ----------
    args : list of str
        Command line.
    env : dict
        Its environment.
    log_path : path-like
        File its output goes to (created or truncated).
    cwd : path-like, optional
        Its working directory (default: this process's).
    announce_parent : bool
        Put this process's pid in the child's environment (``graph.PARENT_PID_ENV``): a
        node that finds another parent at start-up (this process died while it imported)
        then exits at once. Only for a child that is the node itself; a wrapper that starts
        the node as *its* child would make the node refuse to start.
    """

    def __init__(
        self,
        args: list[str],
        env: dict[str, str],
        log_path: str | os.PathLike,
        cwd: str | os.PathLike | None = None,
        announce_parent: bool = False,
    ) -> None:
        self.args = list(args)
        self.log_path = Path(log_path)
        if announce_parent:
            from sindyrl_ros.graph import PARENT_PID_ENV

            env = dict(env, **{PARENT_PID_ENV: str(os.getpid())})
        with open(self.log_path, 'wb') as log:  # the child keeps its own descriptor
            self.process = subprocess.Popen(
                self.args,
                env=env,
                cwd=cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @classmethod
    def python_module(
        cls, module: str, *args: str, env: dict[str, str], log_path: str | os.PathLike
    ) -> ChildProcess:
        """``python -m module args...`` with this process's Python."""
        return cls([sys.executable, '-m', module, *args], env, log_path)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        """Exit code (negative: killed by that signal); None while it runs."""
        return self.process.poll()

    def alive(self) -> bool:
        return self.process.poll() is None

    def output(self) -> str:
        """Everything it has written so far."""
        try:
            return self.log_path.read_text(errors='replace')
        except FileNotFoundError:
            return ''

    def tail(self, lines: int = 15) -> str:
        """Its last ``lines`` lines of output."""
        return '\n'.join(self.output().splitlines()[-lines:])

    def wait_for_output(self, text: str, timeout: float) -> bool:
        """Wait until ``text`` is in its output; False after ``timeout`` s or if it exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.output():
                return True
            if not self.alive():
                return text in self.output()
            time.sleep(0.05)
        return False

    def signal(self, signum: int) -> bool:
        """Send ``signum`` to its process group while it runs; whether it was sent."""
        if not self.alive():
            return False
        try:
            os.killpg(self.process.pid, signum)
        except ProcessLookupError:  # exited in between
            return False
        return True

    def wait(self, timeout: float | None = None) -> int | None:
        """Its exit code once it exits, or None if it still runs after ``timeout`` s."""
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float = 10.0) -> int | None:
        """Stop it (see :func:`stop_processes`); returns its exit code."""
        stop_processes([self], timeout)
        return self.returncode


def stop_processes(
    children: Iterable[ChildProcess],
    timeout: float = 10.0,
    term_timeout: float = TERM_TIMEOUT,
    kill_timeout: float = KILL_TIMEOUT,
) -> dict[int, int | None]:
    """Stop processes together: SIGINT (what Ctrl-C sends), then SIGTERM, then SIGKILL.

    Each signal goes to the process group of every child still running at once, then all
    are given the same time to exit: ``timeout`` s after SIGINT (a node's clean shutdown,
    the controller's safe command), ``term_timeout`` after SIGTERM, ``kill_timeout`` after
    SIGKILL.

    Returns
    -------
    dict
        ``{pid: exit code}``; None for one still not gone ``kill_timeout`` s after SIGKILL
        (a process stuck in the kernel).
    """
    children = list(children)
    escalation = (
        (signal.SIGINT, timeout),
        (signal.SIGTERM, term_timeout),
        (signal.SIGKILL, kill_timeout),
    )
    for signum, wait in escalation:
        signalled = [child for child in children if child.signal(signum)]
        if not signalled:
            break
        deadline = time.monotonic() + wait
        for child in signalled:
            child.wait(max(0.0, deadline - time.monotonic()))
    return {child.pid: child.returncode for child in children}
