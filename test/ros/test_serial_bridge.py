"""The serial rig bridge over real DDS and a real pseudo-terminal, against the rig emulator.

The emulator runs in its own process behind a pty (reached through a symlink, as a rig is
through /dev/serial/by-id/...), the bridge in another; the test plays the controller.
The emulator records every STATE it composed, so each joint state the bridge publishes can
be checked against what the rig really sent.
"""

import itertools
import json
import math
import signal
import sys

import pytest
from ros_testing import NodeStatusProbe, node_command, write_params

from sindyrl_ros.hardware.protocol import StateFlag

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
SHARED_KEYS = ('task', 'action_names', 'action_low', 'action_high', 'control_period')


def emulator_command(link, *options: str) -> list[str]:
    return [sys.executable, '-m', 'sindyrl_ros.hardware.emulator', '--link', str(link), *options]


class RigProbe(NodeStatusProbe):
    """Plays the controller: sends commands, keeps the bridge's joint states and diagnostics."""

    def __init__(self, context, executor) -> None:
        from sensor_msgs.msg import JointState
        from std_msgs.msg import Float64MultiArray

        from sindyrl_ros.ros.qos import RELIABLE_QOS, SENSOR_QOS

        super().__init__('rig_probe', context, executor, '/serial_bridge')
        self.states: list[tuple[int, list, list, list, list]] = []
        self.late: list[int] = []  # stamps later than the time they arrived
        self.node.create_subscription(JointState, '/joint_states', self._on_state, SENSOR_QOS)
        self.commands = self.node.create_publisher(
            Float64MultiArray, '/effort_controller/commands', RELIABLE_QOS
        )

    def _on_state(self, message) -> None:
        from sindyrl_ros.ros.messages import stamp_to_ns

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
        from sindyrl_ros.ros.messages import command_message

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


# ---------------------------------------------------------------- the bridge as a training plant

SPEED = 5  # the emulated rig samples every 10 ms
EPISODE = 30  # steps per episode


class PlantProbe(RigProbe):
    """Plays the run supervisor: calls /plant/reset and /plant/pause, keeps what the bridge
    reports (episodes, rewards) next to the joint states it published."""

    def __init__(self, context, executor) -> None:
        from sensor_msgs.msg import JointState
        from std_msgs.msg import String
        from std_srvs.srv import SetBool, Trigger

        from sindyrl_ros.ros.qos import EPISODE_QOS, TRANSITION_QOS

        super().__init__(context, executor)
        self.episodes: list[dict] = []
        self.rewards: list[tuple[int, float]] = []
        self.node.create_subscription(String, '/sindyrl/episode', self._on_episode, EPISODE_QOS)
        self.node.create_subscription(
            JointState, '/sindyrl/reward', self._on_reward, TRANSITION_QOS
        )
        self.reset_client = self.node.create_client(Trigger, '/plant/reset')
        self.pause_client = self.node.create_client(SetBool, '/plant/pause')

    def _on_episode(self, message) -> None:
        self.episodes.append(json.loads(message.data))

    def _on_reward(self, message) -> None:
        from sindyrl_ros.ros.messages import stamp_to_ns

        self.rewards.append((stamp_to_ns(message.header.stamp), message.position[0]))

    def call(self, client, request, timeout: float = 10.0):
        assert client.wait_for_service(timeout_sec=timeout)
        future = client.call_async(request)
        assert self.spin_until(future.done, timeout), 'no answer'
        return future.result()

    def pause(self, hold: bool):
        from std_srvs.srv import SetBool

        response = self.call(self.pause_client, SetBool.Request(data=hold))
        assert response.success, response.message
        return response

    def reset(self):
        from std_srvs.srv import Trigger

        response = self.call(self.reset_client, Trigger.Request())
        assert response.success, response.message
        return response


def pendulum_reward(position: float, velocity: float, torque: float) -> float:
    """Pendulum-v1's reward from a joint state and the torque applied after it."""
    theta = math.atan2(math.sin(position), math.cos(position))
    return -(theta**2 + 0.1 * velocity**2 + 0.001 * torque**2)


def test_bridge_is_the_plant_reset_pause_and_episodes_scored_as_the_rig_ran(
    ros_context, start_process, tmp_path
):
    """Rig emulator (5x real time) -> bridge -> sensor ingestion -> controller (exploring).

    The test plays the run supervisor. It checks each published reward against the states
    and torques the emulator recorded, each return against those rewards, that a pause
    holds the rig with the zero command and counts no step, and that a reset answers once
    the rig's EPISODE_START state arrived, which is then the next published state.
    """
    context, executor = ros_context
    link, record_path = tmp_path / 'rig', tmp_path / 'states.jsonl'
    emulator = start_process(
        emulator_command(
            link, '--speed', str(SPEED), '--reset-periods', '4', '--record', str(record_path)
        ),
        name='emulator',
    )
    params = write_params(
        tmp_path / 'graph.yaml',
        {
            '/**': {
                'task': 'pendulum',
                'observation_names': ['cos_theta', 'sin_theta', 'theta_dot'],
                'action_names': ['torque'],
                'action_low': [-2.0],
                'action_high': [2.0],
                'control_period': 0.05 / SPEED,
                'episode_length': EPISODE,
            },
            'serial_bridge': {
                **{k: v for k, v in BRIDGE.items() if k not in SHARED_KEYS},
                'port': str(link),
                'start_paused': True,
                'reset_on_connect': True,
            },
            'sensor_ingestion': {
                'observation_features': [
                    'cos(pendulum_joint.position)',
                    'sin(pendulum_joint.position)',
                    'pendulum_joint.velocity',
                ],
            },
            'controller': {'trigger': 'observation', 'soft_start_time': 0.0, 'seed': 4},
        },
    )
    assert emulator.wait_for_output('rig emulator ready', timeout=30), emulator.output()
    nodes = {
        name: start_process(node_command(name, params), name=name)
        for name in ('serial_bridge', 'sensor_ingestion', 'controller')
    }
    probe = PlantProbe(context, executor)

    def outputs() -> dict:
        return {name: p.output()[-1500:] for name, p in {**nodes, 'emulator': emulator}.items()}

    # The rewards of the first steps need the sensor's observations and the controller's
    # answers: unpause only once every node is up and the topics between them are wired
    # (volatile topics drop what was published before a subscription matched). On a loaded
    # machine a node's start-up can take seconds longer than the bridge's.
    ready = {'serial_bridge': 'serial bridge:', 'sensor_ingestion': 'sensor ingestion ready'}
    for name, process in nodes.items():
        assert process.wait_for_output(ready.get(name, f'{name} ready'), timeout=60), outputs()
    graph = probe.node
    wired = {
        '/joint_states': ('sensor_ingestion',),
        '/sindyrl/observation': ('controller', 'serial_bridge'),
        '/sindyrl/action': ('serial_bridge',),
    }

    def topics_wired() -> bool:
        for topic, readers in wired.items():
            reading = graph.get_subscriptions_info_by_topic(topic)
            nodes_reading = {info.node_name for info in reading}
            if not set(readers) <= nodes_reading or graph.count_publishers(topic) == 0:
                return False
        return True

    assert probe.spin_until(topics_wired, timeout=30), outputs()
    probe.spin_until(lambda: False, timeout=0.5)  # matching completes on the nodes' side too

    # Started paused, reset once the port opened: the rig is held, nothing is published.
    assert probe.spin_until(
        lambda: probe.counter('resets') == 1 and probe.counter('states_paused') >= 10, timeout=40
    ), (probe.status, outputs())
    assert probe.states == [] and probe.counter('steps') == 0

    # Running: whole episodes, reset after each.
    probe.pause(False)
    assert probe.spin_until(lambda: len(probe.episodes) >= 2, timeout=20), outputs()

    # Paused: the zero command holds the rig, no state is published, no step counted.
    probe.pause(True)
    probe.spin_until(lambda: False, timeout=0.2)  # states published before the answer land
    published, steps = len(probe.states), probe.counter('steps')
    paused = probe.counter('states_paused')
    # Waits, not time limits: a loaded machine delays diagnostics and rewards by seconds.
    probe.spin_until(lambda: probe.counter('states_paused') >= paused + 30, timeout=30)
    assert len(probe.states) == published
    assert probe.counter('steps') == steps
    last_before_pause = probe.states[-1]

    # A reset while paused: answered once the rig is at its start state, held until resumed.
    response = probe.reset()
    assert 'held until' in response.message
    probe.pause(False)
    assert probe.spin_until(lambda: len(probe.states) >= published + 10, timeout=30)
    first_after_pause = probe.states[published]
    # A reset while running cuts the episode: the next published state is EPISODE_START.
    cut = len(probe.states)
    probe.reset()
    assert probe.spin_until(lambda: len(probe.states) >= cut + 5, timeout=30)
    probe.reset()  # closes the episode in progress, so every step is in a record
    assert probe.spin_until(
        lambda: (
            sum(e['length'] for e in probe.episodes) == len(probe.rewards) > 0
            and probe.counter('steps') == len(probe.rewards)
        ),
        timeout=30,
    ), (probe.episodes, len(probe.rewards), probe.status)
    emulator.stop()

    # ---- everything against the emulator's record of what the rig did
    record = [json.loads(line) for line in record_path.read_text().splitlines()]
    # Each published state is matched to the rig's samples in order. A rig at its start
    # state repeats the same values (RESETTING samples, then EPISODE_START, the one that is
    # published), and a later reset repeats them again: a lookup by value alone could name a
    # sample of a later reset, so take the last sample of the first run of equal values.
    def values(sample):
        return tuple(sample['positions']), tuple(sample['velocities'])

    index, k = {}, 0
    for state in probe.states:
        published_values = (tuple(state[2]), tuple(state[3]))
        while k < len(record) and values(record[k]) != published_values:
            k += 1
        assert k < len(record), f'published state {state[0]} is not in the rig record'
        while k + 1 < len(record) and values(record[k + 1]) == published_values:
            k += 1
        index[state[0]] = k
        k += 1
    # Every reward is the task's reward of a published state and the torque the rig applied
    # in the step that followed it (the effort it reports at its next sample).
    for stamp, reward in probe.rewards:
        state = record[index[stamp]]
        torque = record[index[stamp] + 1]['efforts'][0]
        expected = pendulum_reward(state['positions'][0], state['velocities'][0], torque)
        assert reward == pytest.approx(expected, abs=1e-5), (stamp, reward, expected)
    # Returns add up the rewards; whole episodes have episode_length steps.
    assert sum(e['return'] for e in probe.episodes) == pytest.approx(
        sum(r for _, r in probe.rewards), rel=1e-9
    )
    ends = [e['end'] for e in probe.episodes]
    assert ends[:2] == ['episode_length'] * 2 and ends.count('reset') >= 2, ends
    for episode in probe.episodes:
        assert episode['task'] == 'pendulum' and episode['missing_rewards'] == 0
        assert episode['mode'] == 'explore'  # the controller explores (random actions)
        if episode['end'] == 'episode_length':
            assert episode['length'] == EPISODE
    assert [e['real_steps'] for e in probe.episodes] == list(
        itertools.accumulate(e['length'] for e in probe.episodes)
    )
    # While paused the rig got the zero command: from three samples after the last published
    # state (the controller's last answers may still land) to the next published one.
    held = record[index[last_before_pause[0]] + 3 : index[first_after_pause[0]]]
    assert len(held) >= 30
    assert all(r['efforts'] == [0.0] for r in held)
    # The held stretch ends with the reset: four RESETTING states, then EPISODE_START (an
    # earlier one may be there too: the rig is reset after each episode).
    flags = [r['flags'] & (StateFlag.RESETTING | StateFlag.EPISODE_START) for r in held]
    flags = [flag for flag in flags if flag]
    assert flags[-5:] == [StateFlag.RESETTING] * 4 + [StateFlag.EPISODE_START], flags
    # After the reset while running, the first published state is the rig's EPISODE_START.
    assert record[index[probe.states[cut][0]]]['flags'] & StateFlag.EPISODE_START
    assert probe.counter('resets') >= 4 and probe.counter('resets_failed') == 0
    assert probe.counter('rejected.frame_internal_error') == 0
    probe.destroy()
    for name, process in nodes.items():
        assert process.stop() == 0, (name, process.output()[-2000:])
