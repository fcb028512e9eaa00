"""A node's counters and status on /diagnostics, what it waits for, and its episode reports."""

from __future__ import annotations

import json
import math
import time
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from std_msgs.msg import String

from sindyrl_ros.core.serialization import json_safe
from sindyrl_ros.ros.qos import EPISODE_QOS

__all__ = ['Diagnostics', 'EpisodeReporter', 'Waits']

class Diagnostics:
    """Counters and status values of one node, published on /diagnostics at a fixed period.

    The publish timer runs on the steady clock: in lockstep simulation sim time stops
    while the plant waits, and diagnostics must keep flowing exactly then.

    Parameters
    ----------
    node : rclpy.node.Node
    period : float
        Seconds between two DiagnosticArray messages.
    log_throttle : float
        Seconds between two log lines about the same reject reason.
    """

    def __init__(self, node: Node, period: float, log_throttle: float = 2.0) -> None:
        self._node = node
        self.counters: dict[str, int] = {}
        self.values: dict[str, Any] = {}
        self.warnings: dict[str, str] = {}
        self.errors: dict[str, str] = {}
        self._log_throttle = log_throttle
        self._last_log: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._rejects_at_last_publish = 0
        self._publisher = node.create_publisher(DiagnosticArray, '/diagnostics', 10)
        self._timer = node.create_timer(
            period, self.publish, clock=Clock(clock_type=ClockType.STEADY_TIME)
        )

    def increment(self, key: str, amount: int = 1) -> None:
        self.counters[key] = self.counters.get(key, 0) + amount

    def set(self, key: str, value: Any) -> None:
        self.values[key] = value

    def reject(self, reason: str, detail: str, severity: str = 'warning') -> None:
        """Count a refused input under ``rejected.<reason>`` and log it (throttled per reason).

        ``severity`` is the logger method: 'warning' for bad sensor data (throttled), 'error'
        for rare events an operator must act on (a refused policy; never throttled).
        """
        self.increment(f'rejected.{reason}')
        now = time.monotonic()
        if severity == 'error' or now - self._last_log.get(reason, -math.inf) >= (
            self._log_throttle
        ):
            suppressed = self._suppressed.pop(reason, 0)
            more = f' ({suppressed} more since the last report)' if suppressed else ''
            text = f'refused ({reason}): {detail}{more}'
            # One call site per severity: rclpy refuses a call site whose severity changes.
            if severity == 'error':
                self._node.get_logger().error(text)
            else:
                self._node.get_logger().warning(text)
            self._last_log[reason] = now
        else:
            self._suppressed[reason] = self._suppressed.get(reason, 0) + 1

    def rejected_total(self) -> int:
        return sum(v for k, v in self.counters.items() if k.startswith('rejected.'))

    def publish(self) -> None:
        """Publish one DiagnosticStatus for this node: counters, values, level and summary."""
        rejects = self.rejected_total()
        if self.errors:
            level, message = DiagnosticStatus.ERROR, '; '.join(self.errors.values())
        elif self.warnings:
            level, message = DiagnosticStatus.WARN, '; '.join(self.warnings.values())
        elif rejects > self._rejects_at_last_publish:
            level = DiagnosticStatus.WARN
            message = f'{rejects - self._rejects_at_last_publish} inputs refused'
        else:
            level, message = DiagnosticStatus.OK, 'ok'
        self._rejects_at_last_publish = rejects
        entries = [KeyValue(key=k, value=str(v)) for k, v in sorted(self.counters.items())]
        entries += [KeyValue(key=k, value=str(v)) for k, v in sorted(self.values.items())]
        status = DiagnosticStatus(
            level=level,
            name=self._node.get_fully_qualified_name(),
            message=message,
            hardware_id=self._node.get_name(),
            values=entries,
        )
        array = DiagnosticArray(status=[status])
        array.header.stamp = self._node.get_clock().now().to_msg()
        self._publisher.publish(array)


# --------------------------------------------------------------------------- messages


class Waits:
    """What a node waits for, said once it has waited ``after`` seconds.

    A run that waits silently looks hung: each thing waited for (a service, a first
    message, an operator) is logged once as ``WAITING: <what> (<n> s so far)`` (the line
    ``sindyrl-ros train`` shows on the terminal) and listed in the node's ``/diagnostics``
    warning until it is over, which is logged too. Call :meth:`check` periodically.
    """

    def __init__(self, node: Node, diagnostics: Diagnostics, after: float) -> None:
        self._node = node
        self._diagnostics = diagnostics
        self.after = float(after)
        self._since: dict[str, float] = {}
        self._reported: set[str] = set()

    def start(self, what: str) -> None:
        """Waiting for ``what`` from now (no-op while already waiting for it)."""
        self._since.setdefault(what, time.monotonic())

    def stop(self, what: str) -> None:
        """No longer waiting for ``what``."""
        self._since.pop(what, None)

    def waiting(self, what: str, waiting: bool) -> None:
        """:meth:`start` or :meth:`stop`, as ``waiting`` says."""
        if waiting:
            self.start(what)
        else:
            self.stop(what)

    def check(self) -> None:
        now = time.monotonic()
        long = sorted(what for what, since in self._since.items() if now - since >= self.after)
        for what in long:
            if what not in self._reported:
                self._reported.add(what)
                self._node.get_logger().warning(
                    f'WAITING: {what} ({now - self._since[what]:.0f} s so far)'
                )
        for what in sorted(self._reported - set(self._since)):
            self._reported.discard(what)
            self._node.get_logger().info(f'no longer waiting: {what}')
        if long:
            self._diagnostics.warnings['waiting'] = 'waiting for ' + '; '.join(long)
        else:
            self._diagnostics.warnings.pop('waiting', None)


class EpisodeReporter:
    """Publishes the episode records of a plant's EpisodeLedger on /sindyrl/episode.

    One place for what the simulated plant, the serial bridge and the episodes node report
    about an episode: the record (JSON, transient local, for the run supervisor), the
    ``episodes`` counter and ``last_return`` in /diagnostics, and one log line.
    """

    def __init__(self, node: Node, diagnostics: Diagnostics) -> None:
        self._node = node
        self._diagnostics = diagnostics
        self._publisher = node.create_publisher(String, 'sindyrl/episode', EPISODE_QOS)
        self.episodes = 0
        diagnostics.counters['episodes'] = 0

    def publish(self, records: list[dict]) -> None:
        for record in records:
            self.episodes += 1
            self._diagnostics.counters['episodes'] = self.episodes
            self._diagnostics.set('last_return', f'{record["return"]:.6g}')
            # A return with missing rewards is NaN: JSON null, which the supervisor reads.
            self._publisher.publish(String(data=json.dumps(json_safe(record))))
            missing = record.get('missing_rewards', 0)
            self._node.get_logger().info(
                f'episode {record["episode"]} ({record["mode"]}, {record["end"]}): return '
                f'{record["return"]:.3f}, {record["length"]} steps, {record["real_steps"]} '
                'real steps in all' + (f', {missing} rewards missing' if missing else '')
            )
