"""Tools for tests (and benchmarks) that run real DDS between real processes.

Every test gets its own ROS domain (held through ROS 2's domain_coordinator, so parallel
test runs and benchmarks on one machine never share one) and discovery is kept on
localhost. Nodes under test run in separate OS processes (sindyrl_ros.processes) that are
always stopped, even when the test fails.
"""

from __future__ import annotations

from pathlib import Path
import sys
import time

import domain_coordinator

from sindyrl_ros.processes import ChildProcess as NodeProcess  # noqa: F401
from sindyrl_ros.processes import ros_environment  # noqa: F401


class DomainLease:
    """Exclusive use of one ROS_DOMAIN_ID (1 to 100) on this machine until :meth:`release`.

    ``domain_coordinator.domain_id()`` (what ROS 2's own isolated tests use) holds a local
    port per domain; this keeps it held between a fixture's set-up and its teardown, or a
    benchmark's start and end. It is never left with an exception: that context manager
    would swallow an OSError and raise a RuntimeError in its place.
    """

    def __init__(self) -> None:
        self._held = domain_coordinator.domain_id()
        self.domain_id: int = self._held.__enter__()

    def release(self) -> None:
        self._held.__exit__(None, None, None)


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
