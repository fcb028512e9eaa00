"""Tools for tests that run real DDS between real processes.

Every test gets its own ROS domain (held with a file lock, so parallel test runs on one
machine never share one) and discovery is kept on localhost. Nodes under test run in
separate OS processes that are always stopped, even when the test fails.
"""

from __future__ import annotations

import os
from pathlib import Path
import signal
import subprocess
import sys
import time

from sindyrl_ros.ros_domains import DomainLease, localhost_environment  # noqa: F401


def ros_environment(domain_id: int) -> dict[str, str]:
    """The environment for a process that joins the test's domain, localhost only."""
    return localhost_environment(domain_id)


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
        if not self._log.closed:  # still running: make what it wrote readable
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


class NodeStatusProbe:
    """A test-side node that keeps the latest /diagnostics status of one node under test.

    Subclasses add their own publishers and subscriptions to ``self.node``.
    """

    def __init__(self, name: str, context, executor, watched: str) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        import rclpy.node

        self.node = rclpy.node.Node(name, context=context)
        self.executor = executor
        executor.add_node(self.node)
        self.watched = watched
        self.status = None
        self.node.create_subscription(DiagnosticArray, '/diagnostics', self._on_status, 50)

    def _on_status(self, message) -> None:
        for status in message.status:
            if status.name == self.watched:
                self.status = status

    def spin_until(self, predicate, timeout: float) -> bool:
        return spin_until(self.executor, predicate, timeout)

    def value(self, key: str) -> str | None:
        """The latest reported value of ``key`` (diagnostic values are strings)."""
        if self.status is None:
            return None
        for entry in self.status.values:
            if entry.key == key:
                return entry.value
        return None

    def counter(self, key: str) -> int:
        value = self.value(key)
        try:
            return int(value) if value is not None else 0
        except ValueError:
            return 0

    def level(self) -> int | None:
        if self.status is None:
            return None
        level = self.status.level
        return level[0] if isinstance(level, bytes) else int(level)

    def message(self) -> str:
        return '' if self.status is None else self.status.message

    def destroy(self) -> None:
        self.executor.remove_node(self.node)
        self.node.destroy_node()


def write_params(path: Path, sections: dict) -> Path:
    """Write a ROS params file: ``{node_name_or_/**: {key: value}}`` -> ros__parameters."""
    import yaml

    document = {name: {'ros__parameters': values} for name, values in sections.items()}
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def node_command(module: str, params_file: Path | None = None, *ros_args: str) -> list[str]:
    """Command line that runs ``sindyrl_ros.nodes.<module>`` with a params file and ros args."""
    args = [sys.executable, '-m', f'sindyrl_ros.nodes.{module}', '--ros-args']
    if params_file is not None:
        args += ['--params-file', str(params_file)]
    return args + list(ros_args)


class DiagnosticsWatcher:
    """Keeps the latest /diagnostics key-values of every node (keyed by node name)."""

    def __init__(self, node) -> None:
        from diagnostic_msgs.msg import DiagnosticArray

        self.latest: dict[str, dict[str, str]] = {}
        self.levels: dict[str, int] = {}
        self.reports: dict[str, int] = {}  # statuses received per node
        self.messages: dict[str, str] = {}  # latest status message per node
        node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diagnostics, 50)

    def _on_diagnostics(self, message) -> None:
        for status in message.status:
            self.latest[status.name] = {kv.key: kv.value for kv in status.values}
            self.reports[status.name] = self.reports.get(status.name, 0) + 1
            self.messages[status.name] = status.message
            level = status.level
            self.levels[status.name] = level[0] if isinstance(level, bytes) else int(level)

    def value(self, node_name: str, key: str, default: str | None = None) -> str | None:
        return self.latest.get(node_name, {}).get(key, default)

    def count(self, node_name: str, key: str) -> int:
        return int(self.value(node_name, key, '0'))


def diagnostic_array(name: str, values: dict):
    """A /diagnostics message with one status ``name`` (as a node's Diagnostics publishes)."""
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

    status = DiagnosticStatus(
        name=name,
        hardware_id=name.rsplit('/', 1)[-1],
        message='ok',
        values=[KeyValue(key=key, value=str(value)) for key, value in values.items()],
    )
    return DiagnosticArray(status=[status])


def process_running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's adopter need not reap it at once)."""
    try:
        stat = Path(f'/proc/{pid}/stat').read_text()
    except OSError:
        return False
    return stat.rsplit(')', 1)[1].split()[0] not in ('Z', 'X')


def child_pids(parent: int) -> list[int]:
    """Pids of the running children of ``parent`` (a /proc scan)."""
    pids = []
    for entry in Path('/proc').iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / 'stat').read_text()
        except OSError:
            continue
        if int(stat.rsplit(')', 1)[1].split()[1]) == parent and process_running(int(entry.name)):
            pids.append(int(entry.name))
    return pids
