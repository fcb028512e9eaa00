"""The serial rig bridge over real DDS and a real pseudo-terminal, against the rig emulator.

The emulator runs in its own process behind a pty (reached through a symlink, as a rig is
through /dev/serial/by-id/...), the bridge in another; the test plays the controller.
The emulator records every STATE it composed, so each joint state the bridge publishes can
be checked against what the rig really sent.
"""

import json
import math
import signal
import sys

import pytest
from ros_testing import NodeStatusProbe, node_command, write_params

pytestmark = pytest.mark.ros
ERROR = 2  # diagnostic_msgs/DiagnosticStatus.ERROR

BRIDGE = {
    'task': 'pendulum',
    'action_names': ['torque'],
    'action_low': [-2.0],
    'action_high': [2.0],
    'control_period': 0.05,
    'joint_names': ['pendulum_joint'],
    'diagnostics_period': 0.1,
    'link_timeout': 0.3,
    'reconnect_min': 0.05,
    'reconnect_max': 0.2,
}


def emulator_command(link, *options: str) -> list[str]:
    return [sys.executable, '-m', 'sindyrl_ros.rig_emulator', '--link', str(link), *options]


class RigProbe(NodeStatusProbe):
    """Plays the controller: sends commands, keeps the bridge's joint states and diagnostics."""

    def __init__(self, context, executor) -> None:
        from sensor_msgs.msg import JointState
        from std_msgs.msg import Float64MultiArray

        from sindyrl_ros.nodes.common import RELIABLE_QOS, SENSOR_QOS

        super().__init__('rig_probe', context, executor, '/serial_bridge')
        self.states: list[tuple[int, list, list, list, list]] = []
        self.late: list[int] = []  # stamps later than the time they arrived
        self.node.create_subscription(JointState, '/joint_states', self._on_state, SENSOR_QOS)
        self.commands = self.node.create_publisher(
            Float64MultiArray, '/effort_controller/commands', RELIABLE_QOS
        )

    def _on_state(self, message) -> None:
        from sindyrl_ros.nodes.common import stamp_to_ns

        stamp = stamp_to_ns(message.header.stamp)
        if stamp > self.node.get_clock().now().nanoseconds:
            self.late.append(stamp)
        self.states.append(
            (
                stamp,
                list(message.name),
                list(message.position),
                list(message.velocity),
                list(message.effort),
            )
        )

    def send(self, values) -> None:
        from sindyrl_ros.nodes.common import command_message

        self.commands.publish(command_message(values))

    def commanding(self, values, predicate, timeout: float) -> bool:
        """Send ``values`` at each spin until ``predicate()`` holds (like a controller)."""

        def check() -> bool:
            self.send(values)
            return predicate()

        return self.spin_until(check, timeout)

    def frame_rejects(self) -> int:
        if self.status is None:
            return 0
        return sum(
            int(entry.value)
            for entry in self.status.values
            if entry.key.startswith('rejected.frame_')
        )


def recorded_states(path) -> set[tuple]:
    """(positions, velocities, efforts) of every STATE the emulator composed."""
    lines = path.read_text().splitlines()
    return {
        (tuple(r['positions']), tuple(r['velocities']), tuple(r['efforts']))
        for r in map(json.loads, lines)
    }


def check_published_states(probe, record_path) -> None:
    """Every joint state is one the rig sent, named right, stamped in order, never ahead."""
    sent = recorded_states(record_path)
    assert probe.states
    for _, names, positions, velocities, efforts in probe.states:
        assert names == ['pendulum_joint']
        assert (tuple(positions), tuple(velocities), tuple(efforts)) in sent
    stamps = [state[0] for state in probe.states]
    assert all(b > a for a, b in zip(stamps, stamps[1:])), 'stamps must increase'
    assert not probe.late, 'a stamp later than its arrival: the clock mapping is off'


def test_joint_states_flow_and_commands_reach_the_rig(ros_context, start_process, tmp_path):
    context, executor = ros_context
    link, record = tmp_path / 'rig', tmp_path / 'states.jsonl'
    emulator = start_process(emulator_command(link, '--record', str(record)), name='emulator')
    assert emulator.wait_for_output('rig emulator ready', timeout=30), emulator.output()
    params = write_params(tmp_path / 'bridge.yaml', {'/**': {**BRIDGE, 'port': str(link)}})
    bridge = start_process(node_command('serial_bridge', params), name='bridge')
    probe = RigProbe(context, executor)

    assert probe.spin_until(lambda: len(probe.states) >= 10, timeout=30), bridge.output()
    # Commands reach the rig: it echoes the applied effort in its joint states.
    assert probe.commanding([1.25], lambda: probe.states[-1][4] == [1.25], timeout=10), (
        probe.states[-3:]
    )
    assert probe.spin_until(
        lambda: (
            probe.value('link') == 'up'
            and probe.value('command_round_trip_ms') not in (None, 'unknown')
        ),
        timeout=5,
    ), probe.status
    # Beyond the limits: clipped by the bridge (the rig applies 2.0).
    assert probe.commanding([5.0], lambda: probe.states[-1][4] == [2.0], timeout=10)
    assert probe.spin_until(lambda: probe.counter('clipped_commands') >= 1, timeout=5)
    # Refused, counted, never written.
    sent_before = probe.counter('commands_sent')
    probe.send([math.nan])
    probe.send([1.0, 2.0])
    assert probe.spin_until(
        lambda: (
            probe.counter('rejected.command_nonfinite') == 1
            and probe.counter('rejected.command_length') == 1
        ),
        timeout=5,
    ), probe.status
    assert probe.counter('commands_sent') == sent_before
    # The pendulum moves: torque 2 N·m changes its velocity.
    velocities = {state[3][0] for state in probe.states}
    assert len(velocities) > 5
    assert probe.counter('frames') > 0 and probe.frame_rejects() == 0
    assert probe.counter('rejected.frame_internal_error') == 0

    emulator.stop()
    check_published_states(probe, record)
    probe.destroy()
    assert bridge.stop() == 0, bridge.output()


def test_corrupt_bytes_are_dropped_and_counted_never_published(
    ros_context, start_process, tmp_path
):
    context, executor = ros_context
    link, record = tmp_path / 'rig', tmp_path / 'states.jsonl'
    emulator = start_process(
        emulator_command(
            link,
            '--record',
            str(record),
            '--corrupt-rate',
            '0.004',
            '--drop-rate',
            '0.1',
            '--noise',
            '0.01',
            '--seed',
            '5',
        ),
        name='emulator',
    )
    params = write_params(tmp_path / 'bridge.yaml', {'/**': {**BRIDGE, 'port': str(link)}})
    bridge = start_process(node_command('serial_bridge', params), name='bridge')
    probe = RigProbe(context, executor)

    assert probe.commanding(
        [0.5],
        lambda: len(probe.states) >= 40 and probe.frame_rejects() >= 5,
        timeout=40,
    ), (len(probe.states), probe.status, bridge.output()[-2000:])
    assert probe.counter('rejected.frame_internal_error') == 0
    assert probe.counter('frames') > probe.frame_rejects()

    emulator.stop()
    check_published_states(probe, record)
    probe.destroy()
    assert bridge.stop() == 0, bridge.output()


def test_unplug_reports_error_stops_states_and_reconnects(ros_context, start_process, tmp_path):
    context, executor = ros_context
    link = tmp_path / 'rig'
    first = start_process(emulator_command(link), name='emulator_a')
    params = write_params(tmp_path / 'bridge.yaml', {'/**': {**BRIDGE, 'port': str(link)}})
    bridge = start_process(node_command('serial_bridge', params), name='bridge')
    probe = RigProbe(context, executor)

    assert probe.spin_until(lambda: len(probe.states) >= 5, timeout=30), bridge.output()
    first.signal(signal.SIGUSR1)  # pull the cable
    assert first.wait_for_output('rig emulator unplugged', timeout=30), first.output()
    assert probe.spin_until(
        lambda: probe.level() == ERROR and probe.value('link') == 'disconnected', timeout=10
    ), (probe.status, bridge.output()[-2000:])
    assert 'lost' in probe.message() or 'cannot open' in probe.message(), probe.message()
    # No joint states while unplugged: the controller's watchdog takes over.
    count = len(probe.states)
    probe.commanding([1.0], lambda: False, timeout=1.0)
    assert len(probe.states) == count
    assert probe.counter('commands_not_sent') > 0

    # The rig comes back under the same name: the bridge reopens it.
    second = start_process(emulator_command(link), name='emulator_b')
    assert probe.spin_until(
        lambda: (
            len(probe.states) >= count + 5
            and probe.value('link') == 'up'
            and probe.counter('connects') == 2
        ),
        timeout=30,
    ), (probe.status, bridge.output()[-2000:], second.output())
    second.stop()
    probe.destroy()
    assert bridge.stop() == 0, bridge.output()
