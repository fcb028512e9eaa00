"""Deployment safety of the controller, each property checked over real DDS.

The controller runs in its own process; the test node plays the sensor (observations), the
operator (e-stop, ``~/activate``), the policy trainer (policies) and the actuators (it
records every command). Properties: commands within the limits and rate limits; the e-stop
latches until an explicit release; the safe command on SIGINT and SIGTERM and while
deactivated; the watchdog for a silent sensor and a silent serial link; soft start of a
swapped-in policy.

Under ``trigger: observation`` every observation is answered by exactly one command, tagged
with its stamp, so those checks are exact sequences, not timings. The watchdog checks count
control ticks (commands tagged with the last observation's stamp); the one wall-clock
bound left has a slack of many control periods, for a loaded machine.
"""

import signal
import sys
import time

import numpy as np
import pytest
from ros_testing import DiagnosticsWatcher, node_command, spin_until, write_params

pytestmark = pytest.mark.ros

OBSERVATION_NAMES = ['cos_theta', 'sin_theta', 'theta_dot']
SHARED = {
    'observation_names': OBSERVATION_NAMES,
    'action_names': ['torque'],
    'action_low': [-2.0],
    'action_high': [2.0],
    'control_period': 0.05,
}
PERIOD = 0.05  # s: control_period, and the stamp step between two test observations
ERROR, WARN = 2, 1  # diagnostic_msgs/DiagnosticStatus levels


def polynomial_policy(powers, coefficients, action_names=('torque',), low=-2.0, high=2.0):
    """A SparsePolynomialPolicy: ``action_j = sum_i coefficients[i][j] * Θ_i(observation)``."""
    from sindyrl_ros.core.policies import SparsePolynomialPolicy

    m = len(action_names)
    return SparsePolynomialPolicy(
        powers=powers,
        coefficients=coefficients,
        observation_names=OBSERVATION_NAMES,
        action_names=list(action_names),
        action_low=[low] * m,
        action_high=[high] * m,
        metadata={'source': 'test_controller_safety'},
    )


def constant_policy(value: float):
    """torque = value, whatever the observation."""
    return polynomial_policy([[0, 0, 0]], [[value]])


class SafetyProbe:
    """The controller's world: observations, policies, e-stop, services; records its outputs.

    ``commands[controller_name]`` holds (arrival monotonic time, values, tagged stamp) of
    every command, ``actions`` (stamp, frame_id, effort) of every /sindyrl/action.
    """

    def __init__(self, context, executor, controller_names=('effort_controller',)) -> None:
        import rclpy.node
        from sensor_msgs.msg import JointState
        from std_msgs.msg import Bool, Float64MultiArray, String

        from sindyrl_ros.ros.messages import stamp_to_ns
        from sindyrl_ros.ros.qos import LATCHED_QOS, RELIABLE_QOS

        self.node = rclpy.node.Node('safety_probe', context=context)
        self.executor = executor
        executor.add_node(self.node)
        self.watcher = DiagnosticsWatcher(self.node)
        self.commands: dict[str, list[tuple[float, list[float], int | None]]] = {}
        self.actions: list[tuple[int, str, list[float]]] = []
        self.observations = self.node.create_publisher(
            JointState, '/sindyrl/observation', RELIABLE_QOS
        )
        self.policy = self.node.create_publisher(String, '/sindyrl/policy', LATCHED_QOS)
        self.estop = self.node.create_publisher(Bool, '/sindyrl/estop', LATCHED_QOS)
        self.stamp_ns = 1_000_000_000
        for name in controller_names:
            self.commands[name] = []
            self.node.create_subscription(
                Float64MultiArray,
                f'/{name}/commands',
                lambda message, log=self.commands[name]: self._on_command(log, message),
                RELIABLE_QOS,
            )
        self.node.create_subscription(
            JointState,
            '/sindyrl/action',
            lambda m: self.actions.append(
                (stamp_to_ns(m.header.stamp), m.header.frame_id, list(m.effort))
            ),
            RELIABLE_QOS,
        )

    @staticmethod
    def _on_command(log, message) -> None:
        from sindyrl_ros.ros.messages import command_stamp_ns

        log.append((time.monotonic(), list(message.data), command_stamp_ns(message)))

    def spin_until(self, predicate, timeout: float = 10.0) -> bool:
        return spin_until(self.executor, predicate, timeout)

    def spin_for(self, seconds: float) -> None:
        spin_until(self.executor, lambda: False, seconds, step=min(0.02, seconds))

    def send_observation(self, values=(1.0, 0.0, 0.0), again: bool = False) -> int:
        """Publish an observation stamped one control period after the previous one.

        ``again``: the previous stamp (a re-sent state, which the controller answers again).
        """
        from sensor_msgs.msg import JointState

        from sindyrl_ros.ros.messages import ns_to_stamp

        if not again:
            self.stamp_ns += int(PERIOD * 1e9)
        message = JointState(name=OBSERVATION_NAMES, position=[float(v) for v in values])
        message.header.stamp = ns_to_stamp(self.stamp_ns)
        self.observations.publish(message)
        return self.stamp_ns

    def answer(self, values=(1.0, 0.0, 0.0), process=None) -> tuple[int, str, list[float]]:
        """Send one observation; the (stamp, frame_id, effort) action that answers it."""
        stamp = self.send_observation(values)
        start = len(self.actions)
        assert self.spin_until(lambda: any(a[0] == stamp for a in self.actions[start:])), (
            process.output()[-3000:] if process else 'no answer'
        )
        return next(a for a in self.actions[start:] if a[0] == stamp)

    def handshake(self, process=None) -> tuple[int, str, list[float]]:
        """The first observation, re-sent with its stamp until the controller answers it.

        Matching is not symmetric in DDS: the controller's reader may match this writer
        after this writer matched it, and a volatile reader drops what came before. Any
        duplicate answers (same stamp) arrive before this returns.
        """
        stamp = self.send_observation()
        for _ in range(40):
            if self.spin_until(lambda: any(a[0] == stamp for a in self.actions), 0.5):
                self.spin_for(0.2)
                return next(a for a in self.actions if a[0] == stamp)
            self.send_observation(again=True)
        raise AssertionError(process.output()[-3000:] if process else 'no answer')

    def publish_estop(self, engaged: bool) -> None:
        from std_msgs.msg import Bool

        self.estop.publish(Bool(data=engaged))

    def call_set_bool(self, service: str, data: bool):
        from std_srvs.srv import SetBool

        client = self.node.create_client(SetBool, service)
        try:
            assert client.wait_for_service(timeout_sec=10), service
            future = client.call_async(SetBool.Request(data=data))
            assert self.spin_until(future.done), service
            return future.result()
        finally:
            self.node.destroy_client(client)

    def value(self, key: str, node: str = '/controller') -> str | None:
        return self.watcher.value(node, key)

    def connected(self, controller_name: str = 'effort_controller') -> bool:
        return (
            self.observations.get_subscription_count() > 0
            and self.policy.get_subscription_count() > 0
            and self.estop.get_subscription_count() > 0
            and self.node.count_publishers(f'/{controller_name}/commands') > 0
        )


def start_controller(start_process, tmp_path, settings: dict, shared=None, name='controller'):
    """The controller in its own process with ``settings`` in its params-file section."""
    params = write_params(
        tmp_path / f'{name}.yaml',
        {'/**': shared or SHARED, name: {'diagnostics_period': 0.1, **settings}},
    )
    args = [] if name == 'controller' else ['-r', f'__node:={name}']
    return start_process(node_command('controller', params, *args), name=name)


# ---------------------------------------------------------------------------- (a) limits


def test_commands_stay_within_limits_and_rate_limits(ros_context, start_process, tmp_path):
    """A policy and noise far beyond the limits, jumping sign: every command stays inside.

    Two channels with different limits; the policy outputs ±hundreds (its own limits are
    ±1000) and explore mode adds noise of 3 action ranges. Across 320 ticks every command
    is within the limits and moves at most rate_limit * control_period per tick, and both
    the clip and the rate limit really act (the bounds are reached, full steps occur).
    """
    context, executor = ros_context
    names, low, high = ['shoulder', 'elbow'], [-2.0, -0.5], [2.0, 3.0]
    rate_limit = 8.0  # units/s: 0.4 per 50 ms tick, 10 ticks across the shoulder's range
    # shoulder = 100 theta_dot, elbow = -80 theta_dot + 50 sin_theta; 0 on a zero observation
    # (what the start-up sanity check evaluates), hundreds on the observations below.
    wild = polynomial_policy(
        [[0, 0, 1], [0, 1, 0]], [[100.0, -80.0], [0.0, 50.0]], names, -1000.0, 1000.0
    )
    wild.save(tmp_path / 'wild.json')
    shared = {**SHARED, 'action_names': names, 'action_low': low, 'action_high': high}
    controller = start_controller(
        start_process,
        tmp_path,
        {
            'trigger': 'observation',
            'mode': 'explore',
            'exploration_noise': 3.0,
            'rate_limit': rate_limit,
            'policy_file': str(tmp_path / 'wild.json'),
            'observation_timeout': 30.0,  # no watchdog: every command comes from the policy
            'seed': 3,
        },
        shared=shared,
    )
    probe = SafetyProbe(context, executor)
    assert probe.spin_until(probe.connected, timeout=30), controller.output()
    probe.handshake(controller)

    rng = np.random.default_rng(7)
    ticks = 320
    for tick in range(ticks):
        # Blocks of 12 ticks of one sign (long enough to reach a bound), single-tick flips.
        sign = 1.0 if (tick // 12) % 2 == 0 else -1.0
        if rng.random() < 0.2:
            sign = -sign
        theta_dot = sign * rng.uniform(2.0, 10.0)
        theta = rng.uniform(-np.pi, np.pi)
        stamp, frame, effort = probe.answer([np.cos(theta), np.sin(theta), theta_dot], controller)
        assert frame == 'explore', (tick, frame)
    commands = probe.commands['effort_controller']
    assert probe.spin_until(lambda: len(commands) == len(probe.actions) > ticks)

    values = np.array([c[1] for c in commands])
    assert values.shape[1] == 2
    assert np.all(np.isfinite(values))
    assert np.all(values >= np.array(low)) and np.all(values <= np.array(high))
    max_step = rate_limit * PERIOD
    steps = np.abs(np.diff(np.vstack([np.zeros((1, 2)), values]), axis=0))  # from safe [0, 0]
    assert np.all(steps <= max_step + 1e-12), steps.max(axis=0)
    # Both mechanisms acted: full rate-limited steps, and each channel at both limits.
    assert np.all(steps.max(axis=0) == pytest.approx(max_step, abs=1e-9))
    assert np.all(values.min(axis=0) == np.array(low)), values.min(axis=0)
    assert np.all(values.max(axis=0) == np.array(high)), values.max(axis=0)
    # The /sindyrl/action copy says the same (what the model updater learns from).
    efforts = np.array([a[2] for a in probe.actions])
    assert np.array_equal(efforts, values)


# ---------------------------------------------------------------------------- (b, d) e-stop


def test_estop_latches_until_explicit_release_and_deactivation_holds_safe(
    ros_context, start_process, tmp_path
):
    """E-stop: latched by true; more observations, a repeated true, a restarted publisher and
    re-activation keep the safe command; only false releases it. Deactivation (~/activate
    false) sends the safe command at once and answers every observation with it; true
    gives the policy back.
    """
    from std_msgs.msg import Bool

    from sindyrl_ros.ros.qos import LATCHED_QOS

    context, executor = ros_context
    constant_policy(1.5).save(tmp_path / 'policy.json')
    controller = start_controller(
        start_process,
        tmp_path,
        {
            'trigger': 'observation',
            'mode': 'evaluate',
            'policy_file': str(tmp_path / 'policy.json'),
            'safe_command': [-0.5],
            'soft_start_time': 0.0,
            'observation_timeout': 30.0,  # no watchdog: safe commands come from e-stop/activate
        },
    )
    probe = SafetyProbe(context, executor)
    assert probe.spin_until(probe.connected, timeout=30), controller.output()
    safe_answers, policy_answers = {('safe', -0.5)}, {('evaluate', 1.5)}

    def answers(count=5):
        """(frame_id, torque) of the actions answering ``count`` new observations."""
        answered = [probe.answer(process=controller) for _ in range(count)]
        return {(frame, *effort) for _, frame, effort in answered}

    def new_safe_action(since):
        return any(a[1:] == ('safe', [-0.5]) for a in probe.actions[since:])

    probe.handshake(controller)
    assert answers(3) == policy_answers

    # Latch: the safe command at once, then for every observation.
    count = len(probe.actions)
    probe.publish_estop(True)
    assert probe.spin_until(lambda: new_safe_action(count)), controller.output()[-2000:]
    assert answers(10) == safe_answers
    assert probe.spin_until(
        lambda: probe.value('estop') == 'True' and probe.watcher.levels.get('/controller') == ERROR
    )
    # A repeated true does not toggle it.
    count = len(probe.actions)
    probe.publish_estop(True)
    assert probe.spin_until(lambda: new_safe_action(count))
    assert answers(5) == safe_answers
    # The operator's publisher goes away and comes back (silent, then true): still latched.
    probe.node.destroy_publisher(probe.estop)
    probe.spin_for(0.3)
    assert answers(3) == safe_answers
    probe.estop = probe.node.create_publisher(Bool, '/sindyrl/estop', LATCHED_QOS)
    assert probe.spin_until(lambda: probe.estop.get_subscription_count() > 0)
    assert answers(3) == safe_answers
    probe.publish_estop(True)
    probe.spin_for(0.3)
    assert answers(3) == safe_answers
    # Re-activating the controller does not release the e-stop either.
    response = probe.call_set_bool('/controller/activate', True)
    assert response.success and 'e-stop latched' in response.message
    assert answers(3) == safe_answers
    assert probe.value('estop') == 'True'
    # Only an explicit false releases it.
    probe.publish_estop(False)
    assert probe.spin_until(lambda: probe.value('estop') == 'False')
    assert answers(3) == policy_answers

    # Deactivation: the safe command at once (no observation needed), then on every tick.
    count = len(probe.actions)
    response = probe.call_set_bool('/controller/activate', False)
    assert response.success, response.message
    assert probe.spin_until(lambda: new_safe_action(count)), controller.output()[-2000:]
    assert answers(10) == safe_answers
    assert probe.spin_until(
        lambda: (
            probe.value('active') == 'False' and probe.watcher.levels.get('/controller') == WARN
        )
    )
    response = probe.call_set_bool('/controller/activate', True)
    assert response.success and response.message == 'active'
    assert answers(5) == policy_answers
    assert probe.spin_until(lambda: probe.value('active') == 'True')
    # Every command the actuators got was the policy's or the safe one.
    assert {tuple(c[1]) for c in probe.commands['effort_controller']} == {(1.5,), (-0.5,)}


# ---------------------------------------------------------------------------- (c) signals


def test_sigint_and_sigterm_each_send_the_safe_command(ros_context, start_process, tmp_path):
    """Two controllers driving the policy (timer loop, fresh observations all along): one
    gets SIGINT, the other SIGTERM; the last command each sends is the safe command.

    Observations keep coming until both have exited and the watchdog timeout is long, so
    only the shutdown path can explain the safe command.
    """
    context, executor = ros_context
    constant_policy(1.5).save(tmp_path / 'policy.json')
    signals = {'sigint_controller': signal.SIGINT, 'sigterm_controller': signal.SIGTERM}
    processes = {}
    for name in signals:
        processes[name] = start_controller(
            start_process,
            tmp_path,
            {
                'trigger': 'timer',
                'clock': 'steady',
                'control_rate': 50.0,
                'mode': 'evaluate',
                'controller_name': name,
                'policy_file': str(tmp_path / 'policy.json'),
                'safe_command': [-0.5],
                'soft_start_time': 0.0,
                'observation_timeout': 30.0,
            },
            name=f'controller_{name.split("_")[0]}',
        )
    probe = SafetyProbe(context, executor, controller_names=tuple(signals))

    def driving(name):
        log = probe.commands[name]
        return len(log) >= 5 and all(c[1] == [1.5] for c in log[-5:])

    sent = [0.0]

    def observe_until(predicate, timeout):
        """Spin, sending an observation every control period, until ``predicate()``."""

        def step():
            if time.monotonic() - sent[0] >= PERIOD:
                probe.send_observation()
                sent[0] = time.monotonic()
            return predicate()

        return probe.spin_until(step, timeout)

    assert observe_until(lambda: all(driving(name) for name in signals), 40), {
        name: process.output()[-2000:] for name, process in processes.items()
    }
    before = {name: len(probe.commands[name]) for name in signals}
    for name, signum in signals.items():
        processes[name].signal(signum)
    assert observe_until(lambda: not any(p.alive() for p in processes.values()), 20)
    probe.spin_for(0.5)  # the last commands in flight
    for name, process in processes.items():
        assert process.process.returncode == 0, process.output()[-2000:]
        after = probe.commands[name][before[name] :]
        assert after, f'{name}: no command after {signals[name].name}'
        assert after[-1][1] == [-0.5], (name, after[-5:])
        assert 'shutting down: sending the safe command' in process.output()


# ---------------------------------------------------------------------------- (e) watchdog


def test_watchdog_sends_safe_within_two_periods_of_a_silent_sensor(
    ros_context, start_process, tmp_path
):
    """Timer loop at 50 Hz on the steady clock: observations stop -> the safe command by
    the second control tick after observation_timeout, held until observations return.
    Deactivation on a timer loop: the safe command on every tick.
    """
    context, executor = ros_context
    constant_policy(1.5).save(tmp_path / 'policy.json')
    tick = 0.02  # s: the 50 Hz loop's period
    timeout = 0.2  # s, observation_timeout: 10 ticks
    controller = start_controller(
        start_process,
        tmp_path,
        {
            'trigger': 'timer',
            'clock': 'steady',
            'control_rate': 1.0 / tick,
            'mode': 'evaluate',
            'policy_file': str(tmp_path / 'policy.json'),
            'safe_command': [-0.5],
            'soft_start_time': 0.0,
            'observation_timeout': timeout,
        },
    )
    probe = SafetyProbe(context, executor)
    commands = probe.commands['effort_controller']

    def stream(seconds, until=lambda: True):
        """Observations every control period for ``seconds`` and until ``until()`` holds."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline or not until():
            assert time.monotonic() < deadline + 10.0, commands[-5:]
            probe.send_observation()
            probe.spin_for(tick)

    def policy_drives():
        return len(commands) >= 2 and commands[-1][1] == commands[-2][1] == [1.5]

    assert probe.spin_until(lambda: len(commands) >= 3, timeout=30), controller.output()
    assert all(c[1] == [-0.5] for c in commands)  # no observation yet: safe
    stream(0.6, until=policy_drives)

    # The sensor falls silent.
    last_stamp = probe.send_observation()
    silent_since = time.monotonic()
    assert probe.spin_until(
        lambda: any(c[2] == last_stamp and c[1] == [-0.5] for c in commands), timeout=10
    ), controller.output()[-2000:]
    on_last = [c for c in commands if c[2] == last_stamp]
    first_safe = next(i for i, c in enumerate(on_last) if c[1] == [-0.5])
    # Ticks that still used the last observation: at most observation_timeout plus two
    # control periods' worth (a loaded machine gives fewer ticks, never more).
    assert first_safe <= round(timeout / tick) + 2, [c[1] for c in on_last]
    assert all(c[1] == [1.5] for c in on_last[:first_safe])
    # Wall-clock bound, slack of 40 control periods for a loaded 2-core machine.
    assert on_last[first_safe][0] - silent_since <= timeout + 2 * tick + 40 * tick
    # Held: every tick after that is safe while the sensor stays silent.
    count = len(commands)
    assert probe.spin_until(lambda: len(commands) >= count + 10)
    assert all(c[1] == [-0.5] for c in commands[count:])
    assert probe.spin_until(
        lambda: (
            probe.value('watchdog_active') == 'True'
            and probe.watcher.count('/controller', 'watchdog_trips') >= 1
        )
    )

    # Observations back: the policy again. Then deactivated: safe on every tick although
    # observations keep coming; re-activated: the policy again.
    stream(0.2, until=policy_drives)
    assert probe.call_set_bool('/controller/activate', False).success
    count = len(commands)
    stream(0.4)
    assert len(commands) >= count + 3 and all(c[1] == [-0.5] for c in commands[count:])
    assert probe.spin_until(lambda: probe.value('active') == 'False')
    assert probe.call_set_bool('/controller/activate', True).success
    stream(0.2, until=policy_drives)


def test_silent_serial_link_trips_the_watchdog_end_to_end(ros_context, start_process, tmp_path):
    """Rig emulator -> serial bridge -> sensor ingestion -> controller: the cable is pulled
    (SIGUSR1 to the emulator) -> the controller sends the safe command.

    From the controller's view a lost link is a silent sensor: the bridge publishes
    /joint_states only from frames the rig sent, so there are no observations, and the
    observation watchdog takes over (no link-specific code in the controller).
    """
    context, executor = ros_context
    link = tmp_path / 'rig'
    emulator = start_process(
        [sys.executable, '-m', 'sindyrl_ros.hardware.emulator', '--link', str(link)],
        name='emulator',
    )
    constant_policy(1.5).save(tmp_path / 'policy.json')
    timeout = 0.3
    params = write_params(
        tmp_path / 'graph.yaml',
        {
            '/**': {**SHARED, 'task': 'pendulum'},
            'serial_bridge': {
                'port': str(link),
                'joint_names': ['pendulum_joint'],
                'link_timeout': 0.3,
                'reconnect_min': 0.05,
                'reconnect_max': 0.2,
            },
            'sensor_ingestion': {
                'observation_features': [
                    'cos(pendulum_joint.position)',
                    'sin(pendulum_joint.position)',
                    'pendulum_joint.velocity',
                ],
            },
            'controller': {
                'trigger': 'timer',
                'clock': 'steady',
                'mode': 'evaluate',
                'policy_file': str(tmp_path / 'policy.json'),
                'safe_command': [-0.5],
                'soft_start_time': 0.0,
                'observation_timeout': timeout,
                'diagnostics_period': 0.1,
            },
        },
    )
    assert emulator.wait_for_output('rig emulator ready', timeout=30), emulator.output()
    nodes = {
        name: start_process(node_command(name, params), name=name)
        for name in ('serial_bridge', 'sensor_ingestion', 'controller')
    }
    probe = SafetyProbe(context, executor)
    commands = probe.commands['effort_controller']

    def outputs():
        return {name: p.output()[-1500:] for name, p in {**nodes, 'emulator': emulator}.items()}

    # Observations flow from the rig: the policy drives it.
    assert probe.spin_until(
        lambda: len(commands) >= 5 and all(c[1] == [1.5] for c in commands[-5:]), timeout=40
    ), outputs()
    count = len(commands)
    emulator.signal(signal.SIGUSR1)  # pull the cable
    unplugged = time.monotonic()
    assert emulator.wait_for_output('rig emulator unplugged', timeout=30), emulator.output()
    assert probe.spin_until(lambda: any(c[1] == [-0.5] for c in commands[count:]), timeout=10), (
        outputs()
    )
    first_safe = next(c for c in commands[count:] if c[1] == [-0.5])
    # The link's last frame, observation_timeout, a tick; slack of 40 control periods.
    assert first_safe[0] - unplugged <= timeout + 2 * PERIOD + 40 * PERIOD
    count = len(commands)
    assert probe.spin_until(lambda: len(commands) >= count + 5)
    assert all(c[1] == [-0.5] for c in commands[count:])
    assert probe.spin_until(lambda: probe.value('watchdog_active') == 'True')
    for name, process in nodes.items():
        assert process.stop() == 0, (name, process.output()[-2000:])


# ---------------------------------------------------------------------------- (f) soft start


def test_soft_start_blends_a_swapped_in_policy(ros_context, start_process, tmp_path):
    """Policy A (torque +1) from the file, then policy B (torque -1) from the topic: each
    is blended in linearly over soft_start_time (0.5 s = 10 observation stamps) from the
    last command, never a jump; a blend interrupted by the e-stop restarts from the safe
    command.
    """
    from std_msgs.msg import String

    context, executor = ros_context
    constant_policy(1.0).save(tmp_path / 'policy_a.json')
    soft_start = 0.5
    controller = start_controller(
        start_process,
        tmp_path,
        {
            'trigger': 'observation',
            'mode': 'evaluate',
            'policy_file': str(tmp_path / 'policy_a.json'),
            'soft_start_time': soft_start,
            'observation_timeout': 30.0,
        },
    )
    probe = SafetyProbe(context, executor)
    assert probe.spin_until(probe.connected, timeout=30), controller.output()
    ramp_ticks = round(soft_start / PERIOD)
    # Its first tick starts the blend of policy A (from the file) at the safe command, 0.
    assert probe.handshake(controller)[1:] == ('evaluate', [0.0])

    def efforts(count):
        answered = [probe.answer(process=controller) for _ in range(count)]
        assert all(frame == 'evaluate' for _, frame, _ in answered), answered
        return np.array([effort[0] for _, _, effort in answered])

    def blend(start, target, count):
        weights = np.minimum(1.0, np.arange(count) * PERIOD / soft_start)
        return start + weights * (target - start)

    # Policy A from the file: blended in from the safe command (0), one step per stamp.
    ramp_a = efforts(ramp_ticks + 2)
    assert ramp_a == pytest.approx(blend(0.0, 1.0, ramp_ticks + 3)[1:], abs=1e-9)

    # Policy B swapped in: from the previous command (+1) to -1 over 10 stamps.
    probe.policy.publish(String(data=constant_policy(-1.0).to_json()))
    assert probe.spin_until(lambda: probe.watcher.count('/controller', 'policy_swaps') == 2)
    ramp_b = efforts(ramp_ticks + 3)
    assert ramp_b[0] == pytest.approx(1.0, abs=1e-9)  # the first command: where A left it
    assert np.all(np.diff(ramp_b) <= 1e-12)  # monotone
    assert np.max(np.abs(np.diff(ramp_b))) <= 2.0 * PERIOD / soft_start + 1e-9  # no jump
    assert ramp_b == pytest.approx(blend(1.0, -1.0, ramp_ticks + 3), abs=1e-9)
    assert ramp_b[-1] == -1.0

    # Back to A, interrupted by the e-stop after 3 ticks: on release the blend starts over
    # from the safe command (0), not from where it was.
    probe.policy.publish(String(data=constant_policy(1.0).to_json()))
    assert probe.spin_until(lambda: probe.watcher.count('/controller', 'policy_swaps') == 3)
    assert efforts(3) == pytest.approx(blend(-1.0, 1.0, 3), abs=1e-9)
    probe.publish_estop(True)
    assert probe.spin_until(lambda: probe.value('estop') == 'True')
    assert probe.answer(process=controller)[1:] == ('safe', [0.0])
    probe.publish_estop(False)
    assert probe.spin_until(lambda: probe.value('estop') == 'False')
    assert efforts(ramp_ticks + 1) == pytest.approx(blend(0.0, 1.0, ramp_ticks + 1), abs=1e-9)
    assert probe.watcher.count('/controller', 'soft_starts') >= 3


# ---------------------------------------------------------------------------- (g) bad policies


def malformed_policies():
    """(label, refusal reason, message text) of policies the controller must refuse.

    The first three once killed the controller (OverflowError, ValueError, RecursionError
    escaped the policy check) and, the topic being latched, every restart of it.
    """
    import json

    from sindyrl_ros.core.serialization import MAX_DOCUMENT_BYTES

    good = json.dumps(constant_policy(0.25).to_dict(), separators=(',', ':'))

    def coefficient(literal):
        return good.replace('"coefficients":[[0.25]]', f'"coefficients":[[{literal}]]', 1)

    assert coefficient('X') != good
    # Parses, but inf - inf inside: 1e308 + 1e308 overflows in both hidden units, the
    # output layer subtracts them, NaN comes out.
    nan_inside = {
        **json.loads(good),
        'kind': 'mlp',
        'hidden_activation': 'relu',
        'layers': [
            {'weight': [[1e308, 1e308, 0.0], [1e308, 1e308, 0.0]], 'bias': [1e308, 1e308]},
            {'weight': [[1.0, -1.0]], 'bias': [0.0]},
        ],
    }
    return [
        ('400-digit weight', 'policy_format', coefficient('9' * 400)),
        ('5000-digit weight', 'policy_format', coefficient('9' * 5000)),
        ('nested 5000 deep', 'policy_format', coefficient('[' * 5000 + ']' * 5000)),
        ('NaN literal', 'policy_format', coefficient('NaN')),
        ('1e400', 'policy_format', coefficient('1e400')),
        ('unpaired surrogate', 'policy_format', good.replace('"source"', '"\\udc00"')),
        ('wrong types', 'policy_format', good.replace('"action_low":[-2.0]', '"action_low":{}')),
        ('not a policy', 'policy_format', '[[[[1]]]]'),
        ('over the size cap', 'policy_format', coefficient('0.25' + ' ' * MAX_DOCUMENT_BYTES)),
        ('inf - inf inside', 'policy_output', json.dumps(nan_inside)),
    ]


def test_malformed_policies_are_refused_and_the_controller_keeps_running(
    ros_context, start_process, tmp_path
):
    """Each malformed policy on /sindyrl/policy is a counted refusal: after every one the
    controller process is alive, answers the next observation with the old policy's
    command (finite, within the limits), and /diagnostics counts the refusal under its
    reason; no policy is swapped in but the one from the file.
    """
    from std_msgs.msg import String

    context, executor = ros_context
    constant_policy(1.5).save(tmp_path / 'policy.json')
    controller = start_controller(
        start_process,
        tmp_path,
        {
            'trigger': 'observation',
            'mode': 'evaluate',
            'policy_file': str(tmp_path / 'policy.json'),
            'soft_start_time': 0.0,
            'observation_timeout': 30.0,
        },
    )
    probe = SafetyProbe(context, executor)
    assert probe.spin_until(probe.connected, timeout=30), controller.output()
    probe.handshake(controller)
    assert probe.answer(process=controller)[1:] == ('evaluate', [1.5])

    expected = {'policy_format': 0, 'policy_output': 0}
    for label, reason, text in malformed_policies():
        probe.policy.publish(String(data=text))
        expected[reason] += 1
        assert probe.spin_until(
            lambda r=reason: probe.watcher.count('/controller', f'rejected.{r}') == expected[r],
            timeout=30,
        ), (label, controller.alive(), controller.output()[-3000:])
        assert controller.alive(), (label, controller.output()[-3000:])
        # The old policy still drives: a new observation gets its command.
        assert probe.answer((1.0, 0.0, 0.5), controller)[1:] == ('evaluate', [1.5]), label
    assert probe.watcher.count('/controller', 'policy_swaps') == 1
    assert probe.watcher.count('/controller', 'rejected.policy_format') == 9
    assert probe.watcher.count('/controller', 'rejected.policy_output') == 1
    values = np.array([c[1] for c in probe.commands['effort_controller']])
    assert np.all(np.isfinite(values)) and np.all(np.abs(values) <= 2.0)
    assert controller.alive() and 'Traceback' not in controller.output()
    assert controller.stop() == 0, controller.output()[-3000:]
