"""The simulated plant over real DDS: lockstep determinism, late commands, episodes, realtime."""

import json
import math

import numpy as np
import pytest
from ros_testing import DiagnosticsWatcher, node_command, spin_until, write_params

pytestmark = pytest.mark.ros

PENDULUM = {
    'task': 'pendulum',
    'joint_names': ['pendulum_joint'],
    'joint_positions': ['atan2(sin_theta, cos_theta)'],
    'joint_velocities': ['theta_dot'],
    'diagnostics_period': 0.2,
}


class PlantDriver:
    """Plays the controller for one plant: answers states, records them (by stamp)."""

    def __init__(self, node, prefix: str, commands=None, tag: bool = True) -> None:
        from rosgraph_msgs.msg import Clock
        from sensor_msgs.msg import JointState
        from std_msgs.msg import Float64MultiArray, String

        from sindyrl_ros.ros.qos import EPISODE_QOS, RELIABLE_QOS

        self.states: dict[int, tuple] = {}  # stamp ns -> (positions, velocities)
        self.received = 0
        self.clock_ns: list[int] = []
        self.episodes: list[dict] = []
        self.commands = commands  # None: do not answer
        self.tag = tag
        self.command_publisher = node.create_publisher(
            Float64MultiArray, f'{prefix}/effort_controller/commands', RELIABLE_QOS
        )
        self.action_publisher = node.create_publisher(
            JointState, f'{prefix}/sindyrl/action', RELIABLE_QOS
        )
        node.create_subscription(
            JointState, f'{prefix}/joint_states', self._on_state, RELIABLE_QOS
        )
        node.create_subscription(Clock, f'{prefix}/clock', self._on_clock, 10)
        node.create_subscription(
            String,
            f'{prefix}/sindyrl/episode',
            lambda m: self.episodes.append(json.loads(m.data)),
            EPISODE_QOS,
        )

    def _on_clock(self, message) -> None:
        from sindyrl_ros.ros.messages import stamp_to_ns

        self.clock_ns.append(stamp_to_ns(message.clock))

    def _on_state(self, message) -> None:
        from sindyrl_ros.ros.messages import stamp_to_ns

        self.received += 1
        stamp = stamp_to_ns(message.header.stamp)
        first = stamp not in self.states
        self.states[stamp] = (list(message.name), list(message.position), list(message.velocity))
        self.last_stamp = stamp
        if self.commands is not None and first and len(self.states) <= len(self.commands):
            self.send([self.commands[len(self.states) - 1]], stamp)

    def send(self, values, stamp=None) -> None:
        from sindyrl_ros.ros.messages import command_message

        self.command_publisher.publish(command_message(values, stamp if self.tag else None))


def _states_array(driver, count):
    stamps = sorted(driver.states)[:count]
    return np.array(stamps), np.array([driver.states[s][1] + driver.states[s][2] for s in stamps])


def test_lockstep_is_deterministic_and_maps_joints(ros_context, start_process, tmp_path):
    """Two plants with the same seed and the same commands produce identical states."""
    import rclpy.node

    context, executor = ros_context
    params = write_params(
        tmp_path / 'plant.yaml', {'/**': {**PENDULUM, 'seed': 7, 'lockstep_timeout': 0.5}}
    )
    node = rclpy.node.Node('plant_driver', context=context)
    executor.add_node(node)
    commands = list(np.random.default_rng(3).uniform(-3.0, 3.0, 40))  # some beyond the limits
    drivers = [PlantDriver(node, f'/run{i}', commands) for i in range(2)]
    for i in range(2):
        start_process(
            node_command(
                'plant',
                params,
                '-r',
                f'__node:=plant{i}',
                '-r',
                f'__ns:=/run{i}',
                '-r',
                f'/clock:=/run{i}/clock',
                '-r',
                f'/effort_controller/commands:=/run{i}/effort_controller/commands',
            ),
            name=f'plant{i}',
        )
    watcher = DiagnosticsWatcher(node)
    assert spin_until(
        executor, lambda: all(len(d.states) >= len(commands) + 1 for d in drivers), timeout=60
    ), [len(d.states) for d in drivers]
    stamps0, states0 = _states_array(drivers[0], len(commands) + 1)
    stamps1, states1 = _states_array(drivers[1], len(commands) + 1)
    np.testing.assert_array_equal(stamps0, stamps1)
    np.testing.assert_array_equal(states0, states1)
    # Sim time: one control period per step, /clock matches the state stamps.
    np.testing.assert_array_equal(np.diff(stamps0), 50_000_000)
    assert spin_until(
        executor, lambda: set(stamps0.tolist()) <= set(drivers[0].clock_ns), timeout=10
    )
    name, position, velocity = drivers[0].states[stamps0[0]]
    assert name == ['pendulum_joint'] and -np.pi <= position[0] <= np.pi
    # A clipped command is counted, the real steps are counted.
    assert spin_until(
        executor, lambda: watcher.count('/run0/plant0', 'steps') >= len(commands), timeout=10
    )
    assert watcher.count('/run0/plant0', 'clipped_commands') > 0
    # A different seed gives a different start.
    assert not np.allclose(states0[0], 0.0)


def test_lockstep_refuses_bad_and_late_commands_and_counts_episodes(
    ros_context, start_process, tmp_path
):
    import rclpy.node
    from sensor_msgs.msg import JointState
    from std_srvs.srv import Trigger

    from sindyrl_ros.ros.messages import ns_to_stamp

    context, executor = ros_context
    params = write_params(
        tmp_path / 'plant.yaml',
        {
            '/**': {'task': 'pendulum'},
            'plant': {
                **PENDULUM,
                'episode_length': 4,
                'lockstep_timeout': 0.4,
                'reset_time_gap': 2.0,
            },
        },
    )
    node = rclpy.node.Node('plant_driver', context=context)
    executor.add_node(node)
    driver = PlantDriver(node, '', commands=None)
    watcher = DiagnosticsWatcher(node)
    plant = start_process(node_command('plant', params), name='plant')

    def wait_states(count):
        assert spin_until(executor, lambda: len(driver.states) >= count, timeout=30), (
            plant.output()
        )

    def counter(key):
        return watcher.count('/plant', key)

    wait_states(1)
    first = driver.last_stamp
    # Without an answer, the same state is published again and counted.
    assert spin_until(
        executor, lambda: counter('lockstep_timeouts') >= 1 and driver.received >= 2, timeout=20
    )
    assert len(driver.states) == 1

    # Wrong length and NaN: refused and counted, never applied (no new state).
    driver.send([0.1, 0.2], first)
    driver.send([float('nan')], first)
    driver.send([float('inf')])
    assert spin_until(
        executor,
        lambda: (
            counter('rejected.command_length') == 1 and counter('rejected.command_nonfinite') == 2
        ),
        timeout=20,
    ), watcher.latest.get('/plant')
    assert len(driver.states) == 1 and counter('steps') == 0

    # The controller's mode, on /sindyrl/action stamped with the state it answered, goes
    # into the episode record (the other steps' modes are unknown here).
    action = JointState(name=['torque'], effort=[0.0])
    action.header.frame_id = 'explore'
    action.header.stamp = ns_to_stamp(first)
    driver.action_publisher.publish(action)
    spin_until(executor, lambda: False, timeout=0.3)

    # The answer to the state applies; a second answer to the same state is late.
    driver.send([0.5], first)
    wait_states(2)
    driver.send([0.5], first)
    assert spin_until(executor, lambda: counter('late_commands') >= 1, timeout=20)
    assert len(driver.states) == 2 and counter('steps') == 1

    # Finish the episode (4 steps): the terminal state's answer is consumed, not applied.
    for expected in range(3, 7):
        driver.send([0.0], driver.last_stamp)
        wait_states(expected)
    assert spin_until(executor, lambda: len(driver.episodes) == 1, timeout=20)
    record = driver.episodes[0]
    assert record['episode'] == 1 and record['length'] == 4 and record['real_steps'] == 4
    assert record['mode'] == 'explore' and record['end'] == 'episode_length'
    assert np.isfinite(record['return']) and record['return'] <= 0.0
    stamps = sorted(driver.states)
    assert stamps[5] - stamps[4] == 2_000_000_000  # the reset is a gap in sim time
    assert spin_until(executor, lambda: counter('steps') == 4, timeout=10)

    # Reset service: ends the running episode (1 step) and starts a new one.
    driver.send([0.0], driver.last_stamp)
    wait_states(7)
    client = node.create_client(Trigger, '/plant/reset')
    assert client.wait_for_service(timeout_sec=20)
    future = client.call_async(Trigger.Request())
    assert spin_until(executor, future.done, timeout=20)
    assert future.result().success
    assert spin_until(executor, lambda: len(driver.episodes) == 2, timeout=20)
    assert driver.episodes[1]['end'] == 'reset' and driver.episodes[1]['length'] == 1
    assert driver.episodes[1]['real_steps'] == 5
    assert spin_until(executor, lambda: counter('episodes') == 2, timeout=10)
    assert watcher.value('/plant', 'last_return') not in (None, 'none')
    assert plant.alive(), plant.output()


def test_lockstep_pause_holds_and_resumes_where_it_left_off(ros_context, start_process, tmp_path):
    """/plant/pause: no state and no real step while held; the same run as without a pause."""
    import rclpy.node
    from std_srvs.srv import SetBool, Trigger

    from sindyrl_ros.core.tasks import get_task

    context, executor = ros_context
    params = write_params(
        tmp_path / 'plant.yaml',
        {
            'plant': {
                **PENDULUM,
                'seed': 5,
                'start_paused': True,
                'episode_length': 12,
                'lockstep_timeout': 1.0,
                'reset_time_gap': 1.0,
                'diagnostics_period': 0.1,
            }
        },
    )
    node = rclpy.node.Node('plant_driver', context=context)
    executor.add_node(node)
    commands = [float(c) for c in np.random.default_rng(4).uniform(-2.5, 2.5, 40)]
    driver = PlantDriver(node, '', commands=commands[:5])  # answers states 1-5 on arrival
    watcher = DiagnosticsWatcher(node)
    plant = start_process(node_command('plant', params), name='plant')
    pause = node.create_client(SetBool, '/plant/pause')
    reset = node.create_client(Trigger, '/plant/reset')

    def call(client, request):
        assert client.wait_for_service(timeout_sec=20)
        future = client.call_async(request)
        assert spin_until(executor, future.done, timeout=20)
        assert future.result().success, future.result().message

    def wait(predicate):
        assert spin_until(executor, predicate, timeout=30), (
            plant.output(),
            watcher.latest.get('/plant'),
        )

    def plant_reports(count):
        """Let the plant publish ``count`` more diagnostics (its own steady clock)."""
        target = watcher.reports.get('/plant', 0) + count
        wait(lambda: watcher.reports.get('/plant', 0) >= target)

    def diagnostics(key):
        return watcher.value('/plant', key)

    # Started paused: nothing happens until the first resume.
    wait(lambda: diagnostics('paused') == 'True')
    plant_reports(3)
    assert driver.received == 0
    call(pause, SetBool.Request(data=False))

    # Paused while waiting for the answer to state 6: that answer still applies (the step
    # completes, as the model updater recorded it), and state 7 is held.
    wait(lambda: len(driver.states) >= 6)
    call(pause, SetBool.Request(data=True))
    state6 = driver.last_stamp
    driver.send([commands[5]], state6)
    wait(lambda: diagnostics('steps') == '6' and diagnostics('paused') == 'True')
    driver.send([0.0], state6)  # e.g. the controller's watchdog: counted, not applied
    received = driver.received
    plant_reports(5)
    assert driver.received == received and len(driver.states) == 6
    assert watcher.count('/plant', 'steps') == 6
    assert watcher.count('/plant', 'commands_while_paused') == 1
    assert watcher.count('/plant', 'late_commands') == 0

    # Resumed: state 7 goes out and the loop runs on (through the end of episode 1, 12
    # steps) until state 17, which the driver leaves unanswered.
    driver.commands = commands[:16]
    call(pause, SetBool.Request(data=False))
    wait(lambda: len(driver.states) >= 17 and len(driver.episodes) == 1)
    call(pause, SetBool.Request(data=True))
    wait(lambda: diagnostics('paused') == 'True')
    timeouts = watcher.count('/plant', 'lockstep_timeouts')
    received = driver.received
    plant_reports(12)  # longer than lockstep_timeout: no re-publication while paused
    assert driver.received == received and len(driver.states) == 17
    assert watcher.count('/plant', 'lockstep_timeouts') == timeouts
    assert watcher.count('/plant', 'steps') == 15

    # Resumed without an answer: state 17 is published again at once (same stamp), and
    # its answer moves the plant.
    state17 = driver.last_stamp
    driver.commands = commands[:20]
    call(pause, SetBool.Request(data=False))
    wait(lambda: driver.received > received)
    assert len(driver.states) == 17 and driver.last_stamp == state17
    driver.send([commands[16]], state17)
    wait(lambda: len(driver.states) >= 21)
    wait(lambda: watcher.count('/plant', 'steps') == 19)
    assert watcher.count('/plant', 'lockstep_timeouts') == timeouts

    # A reset while paused ends the episode and holds the first state of the next one.
    call(pause, SetBool.Request(data=True))
    call(reset, Trigger.Request())
    wait(lambda: len(driver.episodes) == 2)
    plant_reports(3)
    assert len(driver.states) == 21
    call(pause, SetBool.Request(data=False))
    wait(lambda: len(driver.states) == 22)

    # The same run as the environment stepped directly: the pauses left no trace.
    env = get_task('pendulum').make_env(seed=5)
    observation, _ = env.reset(seed=5)
    expected = [observation]
    for k in range(12):  # episode 1; the answer to its terminal state (command 12) is consumed
        expected.append(env.step(np.clip([commands[k]], -2.0, 2.0))[0])
    expected.append(env.reset()[0])
    for k in range(13, 20):  # episode 2, 7 steps until the reset
        expected.append(env.step(np.clip([commands[k]], -2.0, 2.0))[0])
    expected.append(env.reset()[0])
    expected = np.array(expected, dtype=np.float64)
    stamps, states = _states_array(driver, 22)
    angles = [math.atan2(sin, cos) for cos, sin, _ in expected]  # as the plant computes them
    np.testing.assert_array_equal(states[:, 0], angles)
    np.testing.assert_array_equal(states[:, 1], expected[:, 2])
    # Sim time stood still while paused: one control period per step, gaps only at resets.
    steps = np.diff(stamps)
    np.testing.assert_array_equal(np.delete(steps, [12, 20]), 50_000_000)
    assert steps[12] == steps[20] == 1_000_000_000
    assert [(e['length'], e['end'], e['real_steps']) for e in driver.episodes] == [
        (12, 'episode_length', 12),
        (7, 'reset', 19),
    ]
    wait(lambda: diagnostics('paused') == 'False')
    assert watcher.count('/plant', 'pauses') == 4
    assert float(diagnostics('held_seconds')) > 0.0
    assert plant.alive(), plant.output()


def test_realtime_cartpole_maps_joints_and_counts_missing_commands(
    ros_context, start_process, tmp_path
):
    """Realtime mode steps on its own; the swing-up starts with the pole hanging down."""
    import rclpy.node

    context, executor = ros_context
    params = write_params(
        tmp_path / 'plant.yaml',
        {
            'plant': {
                'task': 'cartpole_swingup',
                'mode': 'realtime',
                'diagnostics_period': 0.2,
                'joint_names': ['slider', 'hinge'],
                'joint_positions': ['cart_x', 'atan2(sin_theta, cos_theta)'],
                'joint_velocities': ['cart_x_dot', 'theta_dot'],
                'command_timeout': 0.1,
            }
        },
    )
    node = rclpy.node.Node('plant_driver', context=context)
    executor.add_node(node)
    driver = PlantDriver(node, '', commands=None, tag=False)
    watcher = DiagnosticsWatcher(node)
    plant = start_process(node_command('plant', params), name='plant')
    assert spin_until(executor, lambda: len(driver.states) >= 20, timeout=60), plant.output()
    name, position, velocity = driver.states[min(driver.states)]
    assert name == ['slider', 'hinge'] and len(velocity) == 2
    assert abs(position[0]) < 0.5 and abs(abs(position[1]) - np.pi) < 0.5
    assert spin_until(executor, lambda: watcher.count('/plant', 'missing_commands') > 0, 20)
    # Latest command applied: pushing the cart right moves it right.
    x0 = driver.states[max(driver.states)][1][0]

    def pushed():
        driver.send([1.0])
        return driver.states[max(driver.states)][1][0] > x0 + 0.05

    assert spin_until(executor, pushed, timeout=30)

    # Paused: the simulation stops (no step, no state) until resumed.
    from std_srvs.srv import SetBool

    pause = node.create_client(SetBool, '/plant/pause')
    assert pause.wait_for_service(timeout_sec=20)

    def call(hold):
        future = pause.call_async(SetBool.Request(data=hold))
        assert spin_until(executor, future.done, timeout=20) and future.result().success

    call(True)
    assert spin_until(executor, lambda: watcher.value('/plant', 'paused') == 'True', 20)
    steps, states = watcher.count('/plant', 'steps'), len(driver.states)
    reports = watcher.reports['/plant']
    assert spin_until(executor, lambda: watcher.reports['/plant'] >= reports + 3, 20)
    assert watcher.count('/plant', 'steps') == steps and len(driver.states) == states
    call(False)
    assert spin_until(executor, lambda: len(driver.states) > states, timeout=20)
