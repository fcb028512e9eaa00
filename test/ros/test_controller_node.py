"""The controller over real DDS: exploration, policy swaps, e-stop, watchdog, limits, shutdown."""

import json
import math
import signal
import time

import numpy as np
import pytest
from ros_testing import DiagnosticsWatcher, node_command, spin_until, write_params

pytestmark = pytest.mark.ros

SHARED = {
    'observation_names': ['cos_theta', 'sin_theta', 'theta_dot'],
    'action_names': ['torque'],
    'action_low': [-2.0],
    'action_high': [2.0],
    'control_period': 0.05,
}
LOW, HIGH = -2.0, 2.0


def sparse_policy(coefficients, names=None, low=LOW, high=HIGH):
    """torque = c0 + c1 cos_theta + c2 theta_dot, clipped (a readable SINDy-RL style policy)."""
    from sindyrl_ros.core.policies import SparsePolynomialPolicy

    return SparsePolynomialPolicy(
        powers=[[0, 0, 0], [1, 0, 0], [0, 0, 1]],
        coefficients=[[c] for c in coefficients],
        observation_names=names or SHARED['observation_names'],
        action_names=['torque'],
        action_low=[low],
        action_high=[high],
        metadata={'source': 'test'},
    )


class ControllerProbe:
    """Publishes observations, policies and e-stops; records commands and actions."""

    def __init__(self, node) -> None:
        from sensor_msgs.msg import JointState
        from std_msgs.msg import Bool, Float64MultiArray, String

        from sindyrl_ros.ros.messages import stamp_to_ns
        from sindyrl_ros.ros.qos import LATCHED_QOS, RELIABLE_QOS

        self.node = node
        self.commands: list[tuple[float, list[float], int | None]] = []  # (time, values, stamp)
        self.actions: list[tuple[int, str, list[float]]] = []  # (stamp, frame_id, effort)
        self.observations = node.create_publisher(JointState, '/sindyrl/observation', RELIABLE_QOS)
        self.policy = node.create_publisher(String, '/sindyrl/policy', LATCHED_QOS)
        self.estop = node.create_publisher(Bool, '/sindyrl/estop', LATCHED_QOS)

        def on_command(message):
            from sindyrl_ros.ros.messages import command_stamp_ns

            self.commands.append((time.monotonic(), list(message.data), command_stamp_ns(message)))

        node.create_subscription(
            Float64MultiArray, '/effort_controller/commands', on_command, RELIABLE_QOS
        )
        node.create_subscription(
            JointState,
            '/sindyrl/action',
            lambda m: self.actions.append(
                (stamp_to_ns(m.header.stamp), m.header.frame_id, list(m.effort))
            ),
            RELIABLE_QOS,
        )
        self.stamp_ns = 1_000_000_000

    def send_observation(self, values) -> int:
        from sensor_msgs.msg import JointState

        from sindyrl_ros.ros.messages import ns_to_stamp

        self.stamp_ns += 50_000_000
        message = JointState(name=SHARED['observation_names'], position=list(values))
        message.header.stamp = ns_to_stamp(self.stamp_ns)
        self.observations.publish(message)
        return self.stamp_ns


def _all_commands_safe(commands):
    values = np.array([c[1] for c in commands])
    assert values.shape[1] == 1
    assert np.all(np.isfinite(values)) and np.all(values >= LOW) and np.all(values <= HIGH)


def test_controller_explores_swaps_policies_and_stays_safe(ros_context, start_process, tmp_path):
    import rclpy.node
    from std_msgs.msg import Bool, String
    from std_srvs.srv import SetBool

    context, executor = ros_context
    params = write_params(
        tmp_path / 'controller.yaml',
        {
            '/**': SHARED,
            'controller': {
                'trigger': 'observation',
                'observation_timeout': 0.3,
                'seed': 1,
                'exploration_noise': 0.2,
                'diagnostics_period': 0.2,
                'sanity_check_observations': 50,
                'soft_start_time': 0.0,  # follow a new policy at once (soft start: safety tests)
            },
        },
    )
    node = rclpy.node.Node('controller_probe', context=context)
    executor.add_node(node)
    probe = ControllerProbe(node)
    watcher = DiagnosticsWatcher(node)
    controller = start_process(node_command('controller', params), name='controller')
    assert spin_until(
        executor,
        lambda: (
            probe.observations.get_subscription_count() > 0
            and node.count_publishers('/effort_controller/commands') > 0
            and probe.policy.get_subscription_count() > 0
            and probe.estop.get_subscription_count() > 0
        ),
        timeout=30,
    ), controller.output()

    def counter(key):
        return watcher.count('/controller', key)

    rng = np.random.default_rng(0)

    def observation():
        theta = rng.uniform(-math.pi, math.pi)
        return [math.cos(theta), math.sin(theta), rng.uniform(-8.0, 8.0)]

    def answer(values):
        """Send one observation; return the (stamp, frame, effort) action answering it."""
        stamp = probe.send_observation(values)
        assert spin_until(
            executor, lambda: any(a[0] == stamp for a in probe.actions), timeout=10
        ), controller.output()
        return next(a for a in probe.actions if a[0] == stamp)

    # No policy, explore mode: uniform random actions within the limits, one per observation.
    explored = [answer(observation()) for _ in range(60)]
    assert all(frame == 'explore' for _, frame, _ in explored)
    efforts = np.array([e for _, _, e in explored])
    assert efforts.min() < -1.0 and efforts.max() > 1.0  # spread over the range
    assert spin_until(executor, lambda: len(probe.commands) >= 60, timeout=10)
    assert [c[2] for c in probe.commands[:60]] == [a[0] for a in explored]  # tagged stamps
    assert spin_until(
        executor, lambda: watcher.value('/controller', 'torch_loaded') is not None, timeout=10
    )
    assert watcher.value('/controller', 'torch_loaded') == 'False'

    # A good policy is swapped in; evaluate mode makes the actions deterministic.
    good = sparse_policy([0.1, 1.5, -0.2])
    probe.policy.publish(String(data=good.to_json()))
    assert spin_until(executor, lambda: counter('policy_swaps') == 1, timeout=10)
    client = node.create_client(SetBool, '/controller/set_mode')
    assert client.wait_for_service(timeout_sec=10)
    future = client.call_async(SetBool.Request(data=False))
    assert spin_until(executor, future.done, timeout=10) and future.result().success

    def check_follows(policy, count=20):
        for _ in range(count):
            values = observation()
            _, frame, effort = answer(values)
            assert frame == 'evaluate'
            expected = policy(np.array(values))
            assert effort == pytest.approx(expected.tolist(), abs=1e-12)

    check_follows(good)

    # Malformed policies are refused and counted; the good one stays.
    names_wrong = sparse_policy([0.0, 1.0, 0.0], names=['a', 'b', 'c']).to_json()
    nonfinite = good.to_dict()
    nonfinite['coefficients'][1][0] = float('nan')
    out_of_limits = sparse_policy([0.0, 50.0, 0.0], low=-100.0, high=100.0).to_json()
    refusals = [
        ('policy_format', 'not json {'),
        ('policy_format', names_wrong),
        ('policy_format', json.dumps(nonfinite)),  # NaN token
        ('policy_format', json.dumps({'format': 'sindyrl_ros/policy', 'version': 99})),
        ('policy_output', out_of_limits),
    ]
    for index, (reason, text) in enumerate(refusals):
        probe.policy.publish(String(data=text))
        expected = sum(1 for r, _ in refusals[: index + 1] if r == reason)
        assert spin_until(
            executor, lambda r=reason, e=expected: counter(f'rejected.{r}') == e, timeout=10
        ), (reason, watcher.latest.get('/controller'))
    assert counter('policy_swaps') == 1
    check_follows(good, count=10)

    # Explore mode with a policy: the policy's action plus noise, still within the limits.
    future = client.call_async(SetBool.Request(data=True))
    assert spin_until(executor, future.done, timeout=10) and future.result().success
    noisy = []
    for _ in range(20):
        values = observation()
        _, frame, effort = answer(values)
        assert frame == 'explore'
        noisy.append(effort[0] - good(np.array(values))[0])
    assert np.std(noisy) > 0.05

    # E-stop latches the safe command until released.
    probe.estop.publish(Bool(data=True))
    assert spin_until(executor, lambda: probe.actions[-1][1] == 'safe', timeout=10)
    for _ in range(5):
        _, frame, effort = answer(observation())
        assert frame == 'safe' and effort == [0.0]
    assert spin_until(executor, lambda: watcher.value('/controller', 'estop') == 'True', 10)
    probe.estop.publish(Bool(data=False))
    assert spin_until(executor, lambda: watcher.value('/controller', 'estop') == 'False', 10)
    assert answer(observation())[1] == 'explore'

    # Watchdog: observations stop -> the safe command follows without any new observation.
    last_observation = time.monotonic()
    count = len(probe.commands)
    assert spin_until(
        executor,
        lambda: (
            any(c[1] == [0.0] for c in probe.commands[count:]) and probe.actions[-1][1] == 'safe'
        ),
        timeout=10,
    )
    first_safe = next(c[0] for c in probe.commands[count:] if c[1] == [0.0])
    # observation_timeout (0.3 s) + two control periods (0.1 s), with slack for a loaded machine.
    assert first_safe - last_observation < 0.3 + 0.1 + 1.0
    assert spin_until(
        executor, lambda: watcher.value('/controller', 'watchdog_active') == 'True', timeout=10
    )
    assert counter('watchdog_trips') >= 1
    _all_commands_safe(probe.commands)

    # Shutdown (SIGINT) leaves the actuators with the safe command.
    answer(observation())
    count = len(probe.commands)
    controller.signal(signal.SIGINT)
    assert spin_until(executor, lambda: not controller.alive(), timeout=15)
    assert controller.process.returncode == 0, controller.output()
    assert spin_until(executor, lambda: len(probe.commands) > count, timeout=5)
    assert probe.commands[-1][1] == [0.0]


def test_timer_controller_rate_limits_a_policy_from_file(ros_context, start_process, tmp_path):
    """Timer trigger on the steady clock: safe before data, rate-limited ramp, watchdog."""
    import rclpy.node

    context, executor = ros_context
    policy_file = tmp_path / 'policy.json'
    sparse_policy([1.5, 0.0, 0.0]).save(policy_file)  # constant 1.5
    params = write_params(
        tmp_path / 'controller.yaml',
        {
            '/**': SHARED,
            'controller': {
                'trigger': 'timer',
                'clock': 'steady',
                'control_rate': 50.0,
                'rate_limit': 2.0,
                'mode': 'evaluate',
                'policy_file': str(policy_file),
                'observation_timeout': 0.3,
                'diagnostics_period': 0.2,
                'safe_command': [-0.5],
            },
        },
    )
    node = rclpy.node.Node('controller_probe', context=context)
    executor.add_node(node)
    probe = ControllerProbe(node)
    watcher = DiagnosticsWatcher(node)
    controller = start_process(node_command('controller', params), name='controller')
    # Before any observation: the safe command, at the control rate.
    assert spin_until(executor, lambda: len(probe.commands) >= 5, timeout=30), controller.output()
    assert all(c[1] == [-0.5] for c in probe.commands)
    start = len(probe.actions)
    # Observations at ~20 Hz for a while: the 50 Hz loop ramps at 2 units/s towards 1.5.
    deadline = time.monotonic() + 1.6
    while time.monotonic() < deadline:
        probe.send_observation([1.0, 0.0, 0.0])
        spin_until(executor, lambda: False, timeout=0.05)
    ramp = [a[2][0] for a in probe.actions[start:] if a[1] == 'evaluate']
    assert len(ramp) > 20
    steps = np.diff([-0.5] + ramp)
    assert np.all(steps <= 2.0 / 50.0 + 1e-12) and np.all(steps >= -1e-12)
    assert max(ramp) == pytest.approx(1.5)  # reached the policy's action, at the rate limit
    # Watchdog: back to the safe command once observations stop.
    assert spin_until(executor, lambda: probe.actions[-1][1] == 'safe', timeout=10)
    assert spin_until(executor, lambda: watcher.count('/controller', 'watchdog_trips') >= 1, 10)
    assert watcher.value('/controller', 'policy') == 'sparse_polynomial'
    _all_commands_safe(probe.commands)
    # SIGTERM (what a process manager sends) also ends with the safe command.
    probe.send_observation([1.0, 0.0, 0.0])
    assert spin_until(executor, lambda: probe.actions[-1][1] == 'evaluate', timeout=10)
    count = len(probe.commands)
    controller.signal(signal.SIGTERM)
    assert spin_until(executor, lambda: not controller.alive(), timeout=15)
    assert controller.process.returncode == 0, controller.output()
    assert spin_until(executor, lambda: len(probe.commands) > count, timeout=5)
    assert probe.commands[-1][1] == [-0.5]
