"""Controller: evaluates the current policy with numpy and publishes safe, limited commands.

Triggers (``trigger``): ``observation`` answers each observation once (the lockstep
simulation); ``timer`` is a fixed-rate loop at ``control_rate`` on the latest observation,
on the ROS clock (``clock: ros``, /clock in simulation) or the steady clock (``clock:
steady``, hardware: immune to clock jumps); ``stamp`` answers the first observation of each
control period by the observations' own stamps (joint states faster than the control rate,
``core.command_filter.StampGrid``). Under the observation and stamp triggers a steady-clock
watchdog timer sends the safe command while observations are missing.

Topics: observations from ``/sindyrl/observation``; each command on
``/<controller_name>/commands`` (tagged with the answered observation's stamp, see
``ros.messages.command_message``) and on ``/sindyrl/action`` (stamp = the observation's,
frame_id = explore|evaluate|safe); policies from ``/sindyrl/policy`` (latched; checked,
a bad one refused and counted); ``true`` on ``/sindyrl/estop`` latches the safe command
until an explicit ``false``. Services (std_srvs/SetBool): ``~/set_mode`` (true = explore,
false = evaluate); ``~/activate`` (false: the safe command now and on every tick until
true, ros2_control's deactivate; ``start_active: false`` starts so). The safe command is
sent on shutdown (SIGINT / SIGTERM, see ``ros.runtime.run_node``).

What is sent is decided in :mod:`sindyrl_ros.core.command_filter` (exploration, limits,
rate limit, soft start, finiteness, watchdog, e-stop latch, policy check); this node
translates messages, clocks and parameters. It never imports torch.
"""

from __future__ import annotations

import sys
import time

import numpy as np
from rclpy.clock import Clock, ClockType
from rclpy.duration import Duration
from rclpy.node import Node
from rclpy.parameter import Parameter
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool, Float64MultiArray, String
from std_srvs.srv import SetBool

from sindyrl_ros.core.command_filter import SAFE, command_limits
from sindyrl_ros.core.control_loop import ControlLoop, TickTiming
from sindyrl_ros.core.policies import NumpyPolicy
from sindyrl_ros.core.policy_loading import load_policy, policy_from_json
from sindyrl_ros.core.serialization import FormatError
from sindyrl_ros.params import ParameterError
from sindyrl_ros.params.controller import PARAMETERS
from sindyrl_ros.ros.diagnostics import Diagnostics, Waits
from sindyrl_ros.ros.messages import (
    MessageError,
    command_message,
    ns_to_stamp,
    read_vector,
    stamp_to_ns,
)
from sindyrl_ros.ros.parameters import (
    check_parameter_files,
    configuration_error,
    declare_parameters,
    task_from_parameters,
)
from sindyrl_ros.ros.qos import LATCHED_QOS, RELIABLE_QOS
from sindyrl_ros.ros.runtime import run_node

__all__ = ['PARAMETERS', 'ControllerNode', 'main']

FIRST_OBSERVATION = 'the first observation on /sindyrl/observation (from sensor ingestion)'


class ControllerNode(Node):
    """Runs the policy every control period; the last line of defence for the actuators."""

    def __init__(self) -> None:
        super().__init__('controller')
        self.parameters = declare_parameters(self, PARAMETERS, on_change=self._on_parameter)
        check_parameter_files(self)
        p = self.parameters
        try:
            limits = command_limits(p.as_dict(), self._task_limits if p.task else None)
        except ParameterError as error:
            raise configuration_error(self, error.parameter, error.problem) from None
        self.observation_names, self.action_names = limits.observation_names, limits.action_names
        self.control_period = limits.control_period
        self.diagnostics = Diagnostics(self, p.diagnostics_period)
        self.diagnostics.counters['commands'] = 0
        self.loop = ControlLoop(
            limits,
            trigger=p.trigger,
            mode=p.mode,
            exploration_noise=p.exploration_noise,
            rate_limit=p.rate_limit,
            soft_start_time=p.soft_start_time,
            observation_timeout=p.observation_timeout,
            active=p.start_active,
            seed=p.seed,
            recent=p.sanity_check_observations,
            clock=self._loop_clock() if p.trigger == 'timer' else None,
            counters=self.diagnostics.counters,
        )
        self._incoming = np.zeros(len(self.observation_names))  # read before it is accepted
        self._command = Float64MultiArray()
        self._action_message = JointState(name=list(self.action_names))
        self.diagnostics.set('trigger', p.trigger)
        self.waits = Waits(self, self.diagnostics, p.wait_report)
        self.waits.start(FIRST_OBSERVATION)
        self._report_state()

        topic = f'/{p.controller_name}/commands'
        self._command_publisher = self.create_publisher(Float64MultiArray, topic, RELIABLE_QOS)
        self._action_publisher = self.create_publisher(JointState, 'sindyrl/action', RELIABLE_QOS)
        self.create_subscription(
            JointState, 'sindyrl/observation', self._on_observation, RELIABLE_QOS
        )
        self.create_subscription(String, 'sindyrl/policy', self._on_policy, LATCHED_QOS)
        self.create_subscription(Bool, 'sindyrl/estop', self._on_estop, LATCHED_QOS)
        self.create_service(SetBool, '~/set_mode', self._on_set_mode)
        self.create_service(SetBool, '~/activate', self._on_activate)

        if p.policy_file:
            try:
                policy = load_policy(p.policy_file, self.observation_names, self.action_names)
            except (FormatError, OSError) as error:
                raise configuration_error(self, 'policy_file', str(error)) from None
            problem = self.loop.swap_in(policy)
            if problem:
                raise configuration_error(self, 'policy_file', f'{p.policy_file}: {problem}')
            self._swapped_in(policy, p.policy_file)

        steady = Clock(clock_type=ClockType.STEADY_TIME)
        self.create_timer(1.0, self.waits.check, clock=steady)  # not on the control path
        self._tick_timing = TickTiming(self.control_period)
        if p.trigger == 'timer':
            clock = steady if p.clock == 'steady' else None
            self.create_timer(self.control_period, self._on_timer, clock=clock)
        else:
            self.create_timer(self.control_period, self._on_watchdog, clock=steady)
        policy, active = self.loop.policy, self.loop.safety.active
        self.get_logger().info(
            f'controller ready: trigger {p.trigger}, {1.0 / self.control_period:g} Hz, mode '
            f'{self.loop.mode}, commands on {topic}, policy {policy.kind if policy else "none"}'
            + ('' if active else ', deactivated (safe command) until ~/activate true')
        )

    # ------------------------------------------------------------------ configuration

    def _task_limits(self) -> tuple[np.ndarray, np.ndarray]:
        """The task's limits: a registered task's, narrowed by the file (a file that widens
        them stops every node, this one included)."""
        task = task_from_parameters(self, self.parameters)
        return task.action_low, task.action_high

    def _loop_clock(self):
        """Now in nanoseconds on the timer loop's clock (for the soft start)."""
        if self.parameters.clock == 'steady':
            return time.monotonic_ns
        return lambda: self.get_clock().now().nanoseconds

    def _on_parameter(self, name: str, value) -> None:
        self.loop.update(name, value)
        if name == 'mode':
            self._report_state()

    def _report_state(self) -> None:
        d, safety, policy = self.diagnostics, self.loop.safety, self.loop.policy
        d.set('mode', self.loop.mode)
        d.set('estop', safety.estop)
        d.set('active', safety.active)
        d.set('watchdog_active', safety.watchdog_tripped)
        d.set('policy', policy.kind if policy else 'none')
        d.set('policy_parameters', policy.n_parameters if policy else 0)
        # The run-time path must stay numpy-only; this makes a regression visible.
        d.set('torch_loaded', 'torch' in sys.modules)
        for table, key, on, text in (
            (d.errors, 'estop', safety.estop, 'e-stop latched'),
            (d.warnings, 'watchdog', safety.watchdog_tripped, 'no fresh observation'),
            (d.warnings, 'deactivated', not safety.active, 'deactivated'),
        ):
            if on:
                table[key] = f'{text}: safe command'
            else:
                table.pop(key, None)

    # ------------------------------------------------------------------ inputs

    def _on_observation(self, message: JointState) -> None:
        try:
            read_vector(message, self.observation_names, 'position', out=self._incoming)
        except MessageError as error:
            self.diagnostics.reject(
                f'observation_{error.reason}', f'/sindyrl/observation: {error.detail}'
            )
            return
        stamp_ns, last = stamp_to_ns(message.header.stamp), self.loop.stamp_ns
        if not self.loop.observe(self._incoming, stamp_ns, time.monotonic()):
            self.diagnostics.reject(
                'observation_out_of_order',
                f'/sindyrl/observation stamp {stamp_ns} ns is older than {last} ns',
            )
            return
        if last is None:
            self.waits.stop(FIRST_OBSERVATION)
        if self.loop.due(stamp_ns):
            self._control(stamp_ns)

    def _on_estop(self, message: Bool) -> None:
        """Latch on ``true`` (and send the safe command again); release on ``false`` only."""
        if self.loop.safety.on_estop(message.data):
            if self.loop.safety.estop:
                self.get_logger().error('e-stop latched: sending the safe command until released')
            else:
                self.get_logger().warning('e-stop released')
            self._report_state()
        if message.data:
            self._publish_safe()

    def _on_activate(self, request: SetBool.Request, response: SetBool.Response):
        """``false``: deactivate (safe command now and every tick); ``true``: control again."""
        safety = self.loop.safety
        if safety.on_activate(request.data):
            if safety.active:
                self.get_logger().info('activated: the policy drives again')
            else:
                self.get_logger().warning('deactivated: sending the safe command')
            self._report_state()
        if not safety.active:
            self._publish_safe()
        response.success = True
        response.message = 'active' if safety.active else 'deactivated: safe command'
        if safety.active and safety.estop:
            response.message += ' (e-stop latched: safe command until released)'
        return response

    def _on_set_mode(self, request: SetBool.Request, response: SetBool.Response):
        mode = 'explore' if request.data else 'evaluate'
        result = self.set_parameters([Parameter('mode', Parameter.Type.STRING, mode)])[0]
        response.success = result.successful
        response.message = f'mode: {self.loop.mode}' if result.successful else result.reason
        return response

    def _on_policy(self, message: String) -> None:
        """Swap in a checked policy; anything wrong with it is a counted refusal.

        Never raises: /sindyrl/policy is latched, so a message that killed this process
        would kill every restart of it too. The current policy stays on any refusal.
        """
        where = 'topic /sindyrl/policy'
        try:
            policy = policy_from_json(
                message.data, where, self.observation_names, self.action_names
            )
        except Exception as error:  # FormatError, or anything the parser missed
            detail = str(error) if isinstance(error, FormatError) else repr(error)[:1000]
            self.diagnostics.reject(
                'policy_format', f'{detail}; keeping the current policy', severity='error'
            )
            return
        problem = self.loop.swap_in(policy)
        if problem:
            self.diagnostics.reject(
                'policy_output',
                f'{where}: {problem}; keeping the current policy',
                severity='error',
            )
            return
        self._swapped_in(policy, where)

    def _swapped_in(self, policy: NumpyPolicy, source: str) -> None:
        self.diagnostics.set('policy_source', source)
        self.diagnostics.set(
            'policy_metadata',
            {k: v for k, v in policy.metadata.items() if isinstance(v, (int, float, str))},
        )
        self._report_state()
        self.get_logger().info(
            f'policy swapped in from {source}: {policy.kind}, {policy.n_parameters} parameters'
        )

    # ------------------------------------------------------------------ control

    def _fresh(self) -> bool:
        """Whether an observation is fresh; logs and reports a watchdog trip or recovery."""
        safety = self.loop.safety
        if self.loop.check_watchdog(time.monotonic()):
            if safety.watchdog_tripped:
                self.get_logger().warning(
                    f'no observation for {safety.observation_timeout} s: safe command'
                )
            else:
                self.get_logger().info('observations back: control resumed')
            self._report_state()
        return not safety.watchdog_tripped

    def _on_timer(self) -> None:
        started = time.perf_counter_ns()
        safety = self.loop.safety
        if not safety.armed or not self._fresh() or safety.holding:
            self._publish_safe()
        else:
            self._control(self.loop.stamp_ns)
        if self._tick_timing.record(started, time.perf_counter_ns()):
            self.diagnostics.values.update(self._tick_timing.statistics())

    def _on_watchdog(self) -> None:
        """Observation and stamp triggers: the safe command while observations are missing."""
        if self.loop.safety.armed and not self._fresh():
            self._publish_safe()

    def _control(self, stamp_ns: int) -> None:
        """Publish the command answering the observation stamped ``stamp_ns``."""
        if self.loop.safety.watchdog_tripped and not self.loop.safety.holding:
            self._fresh()
        self._publish(self.loop.command(stamp_ns), stamp_ns, self.loop.label)

    def _publish_safe(self) -> None:
        self._publish(self.loop.safe(), self.loop.stamp_ns, SAFE)

    def _publish(self, action: np.ndarray, stamp_ns: int | None, mode: str) -> None:
        if not self.loop.filter.admissible(action):  # last line of defence
            action, mode = self.loop.filter.safe_command, SAFE
        command_message(action, stamp_ns, self._command)
        self._command_publisher.publish(self._command)
        message = self._action_message
        message.header.stamp = ns_to_stamp(stamp_ns or 0)
        message.header.frame_id = mode
        message.effort = self._command.data
        self._action_publisher.publish(message)
        self.loop.filter.sent(action)
        self.diagnostics.increment('commands')

    def on_shutdown(self) -> None:
        """Leave the actuators with the safe command (SIGINT / SIGTERM)."""
        self.get_logger().info('shutting down: sending the safe command')
        self._publish_safe()
        self._command_publisher.wait_for_all_acked(Duration(seconds=1.0))


def main(args: list[str] | None = None) -> int:
    return run_node(ControllerNode, args, name='controller')


if __name__ == '__main__':
    sys.exit(main())
