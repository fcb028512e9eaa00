"""Controller: evaluates the current policy with numpy and publishes safe, limited commands.

Triggers (``trigger``):

``observation``
    Each observation is answered once with one command (the lockstep simulation). A
    steady-clock watchdog timer sends the safe command while observations are missing.
``timer``
    A fixed-rate loop at ``control_rate`` using the latest observation; on the ROS clock
    (``clock: ros``, follows /clock in simulation) or the steady clock (``clock: steady``,
    hardware: immune to clock jumps).
``stamp``
    For a robot whose joint states come faster than the control rate (a ros2_control
    broadcaster at 100 Hz–1 kHz): the first observation of each control period is answered,
    the periods counted on the observations' own stamps (a grid of ``1 / control_rate``
    that starts at the first answered stamp; an observation within 10 % of a period before
    the next grid point counts for it). The answered states are then one period apart by
    measurement time, whatever the scheduling of this process, so the recorded steps are
    the plant's control period, not the period of a timer that a loaded computer delays.
    The steady-clock watchdog sends the safe command while observations are missing.

Actions: no policy yet -> uniform random actions within the limits in ``explore`` mode
(seeded), the safe command in ``evaluate`` mode; with a policy -> its action, plus
Gaussian noise of standard deviation ``exploration_noise * (action_high - action_low) / 2``
in ``explore`` mode (``core.protocol.exploration_scale``, as in ``core.dyna.run_dyna``).
Every action is clipped to the limits and to ``rate_limit`` (units per second), checked
finite, then published on ``/<controller_name>/commands`` (tagged with
the answered observation's stamp, see ``common.command_message``) and on
``/sindyrl/action`` (stamp = the observation's stamp, frame_id = explore|evaluate|safe).

Safety:

* limits: every command is clipped to ``[action_low, action_high]`` and changes by at most
  ``rate_limit * control_period`` per tick (the safe command excepted: stopping beats
  smoothness); a non-finite or out-of-limit command is never published.
* watchdog: the safe command when no observation arrived for ``observation_timeout``
  (armed by the first observation). A silent sensor and a silent serial link are the same
  case here: the serial bridge publishes /joint_states only from frames the rig sent, so a
  lost link means no joint states, no observations, and the watchdog.
* e-stop: ``true`` on ``/sindyrl/estop`` latches the safe command; only an explicit
  ``false`` releases it (a repeated ``true``, a publisher that goes away or restarts, or
  more observations do not).
* ``~/activate`` (std_srvs/SetBool): ``false`` deactivates the controller, which then sends
  the safe command at once and on every tick until ``true`` (ros2_control's deactivate);
  ``start_active: false`` starts it deactivated.
* the safe command is sent on shutdown (SIGINT / SIGTERM, see ``common.run_node``).
* soft start: a policy swapped in is blended in from the last command sent,
  ``(1 - w) * previous + w * policy`` with ``w`` rising linearly from 0 at its first tick
  to 1 after ``soft_start_time`` seconds of the loop's clock (observation stamps under the
  observation trigger), then clipped and rate-limited as usual. A blend interrupted by
  the safe command starts again from the safe command.

A policy from ``/sindyrl/policy`` replaces the current one only after a sanity check
(format, names, finite outputs within the limits on the recent observations); a bad one is
refused and the old one stays.

This process never imports torch: policies are ``sindyrl_ros.core.policies`` numpy objects.
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

from sindyrl_ros.core.policies import NumpyPolicy, load_policy, policy_from_json
from sindyrl_ros.core.protocol import exploration_scale
from sindyrl_ros.core.serialization import FormatError
from sindyrl_ros.nodes.common import (
    LATCHED_QOS,
    RELIABLE_QOS,
    SHARED_PARAMETERS,
    WAIT_REPORT_PARAMETER,
    Diagnostics,
    MessageError,
    ParamSpec,
    Waits,
    check_parameter_files,
    command_message,
    configuration_error,
    declare_parameters,
    ns_to_stamp,
    read_vector,
    run_node,
    stamp_to_ns,
    task_from_parameters,
)

CONTROLLER_PARAMETERS = [
    ParamSpec(
        'trigger',
        'observation',
        'observation: answer each observation once (lockstep sim, a rig); timer: fixed-rate '
        'loop at control_rate; stamp: answer the first observation of each control period '
        "by the observations' stamps (a robot whose joint states come faster)",
        read_only=True,
        choices=('observation', 'timer', 'stamp'),
    ),
    ParamSpec(
        'clock',
        'ros',
        'Clock of the timer loop: ros (sim time under use_sim_time) or steady (hardware)',
        read_only=True,
        choices=('ros', 'steady'),
    ),
    ParamSpec(
        'control_rate',
        0.0,
        'Control loop rate in Hz; 0 = 1 / control_period',
        range=(0.0, 10000.0),
        read_only=True,
    ),
    ParamSpec(
        'controller_name',
        'effort_controller',
        'Commands go to /<controller_name>/commands',
        read_only=True,
    ),
    ParamSpec(
        'policy_file',
        '',
        'Policy JSON (core.policies format) loaded at start; empty = wait for /sindyrl/policy',
        read_only=True,
    ),
    ParamSpec(
        'mode',
        'explore',
        'explore: exploration noise (random actions without a '
        'policy); evaluate: deterministic policy',
        choices=('explore', 'evaluate'),
    ),
    ParamSpec(
        'exploration_noise',
        0.1,
        'Explore mode: Gaussian noise standard deviation as a fraction of half the action '
        'range (0.1 on a +-2 limit: 0.2)',
        range=(0.0, 10.0),
    ),
    ParamSpec(
        'rate_limit',
        0.0,
        'Maximum action change per second (action units / s); 0 = no limit',
        range=(0.0, 1e12),
    ),
    ParamSpec(
        'soft_start_time',
        0.5,
        'Seconds over which a newly swapped-in policy is blended in from the previous '
        'command (on the loop clock: observation stamps, ROS or steady time); 0 = jump',
        range=(0.0, 60.0),
    ),
    ParamSpec(
        'observation_timeout',
        0.5,
        'Wall seconds without an observation before the watchdog sends the safe command',
        range=(0.001, 3600.0),
    ),
    ParamSpec(
        'safe_command',
        [],
        'Command sent by the watchdog, e-stop and shutdown; empty = zeros',
        read_only=True,
        type=Parameter.Type.DOUBLE_ARRAY,
    ),
    ParamSpec(
        'start_active',
        True,
        'false: start deactivated (the safe command on every tick) until ~/activate true; '
        'on a robot the package does not own, the episodes node activates it when the run '
        'supervisor resumes the robot',
        read_only=True,
    ),
    ParamSpec('seed', 0, 'Seed of the exploration noise', range=(0, 2**31 - 1), read_only=True),
    ParamSpec(
        'sanity_check_observations',
        100,
        'Recent observations kept to check a new policy before it is swapped in',
        range=(1, 1_000_000),
        read_only=True,
    ),
    ParamSpec(
        'diagnostics_period',
        1.0,
        'Seconds between /diagnostics messages',
        range=(0.01, 3600.0),
        read_only=True,
    ),
    WAIT_REPORT_PARAMETER,
]
# Everything this node declares (what a parameter file may set for it).
PARAMETERS = SHARED_PARAMETERS + CONTROLLER_PARAMETERS

OUTPUT_TOLERANCE = 1e-9  # policy outputs may exceed the limits by rounding only
FIRST_OBSERVATION = 'the first observation on /sindyrl/observation (from sensor ingestion)'


class TickTiming:
    """Wall-clock period and compute time of the control loop, reported in /diagnostics.

    Fixed-size ring buffers filled every tick (no allocation). Percentiles are computed on
    one tick per second of ticks, after that tick's command has been published.
    """

    def __init__(self, control_period: float, diagnostics, window: int = 1000) -> None:
        self._periods_us = np.zeros(window)
        self._compute_us = np.zeros(window)
        self._control_period_us = control_period * 1e6
        self._report_every = max(1, int(round(1.0 / control_period)))
        self._diagnostics = diagnostics
        self._last_start_ns = 0
        self._ticks = 0
        self._overruns = 0

    def record(self, started_ns: int, finished_ns: int) -> None:
        index = self._ticks % len(self._periods_us)
        self._compute_us[index] = (finished_ns - started_ns) * 1e-3
        if self._last_start_ns:
            period = (started_ns - self._last_start_ns) * 1e-3
            self._periods_us[index] = period
            if period > 1.5 * self._control_period_us:
                self._overruns += 1
        else:
            self._periods_us[index] = self._control_period_us
        self._last_start_ns = started_ns
        self._ticks += 1
        if self._ticks % self._report_every == 0:
            self._report()

    def _report(self) -> None:
        count = min(self._ticks, len(self._periods_us))
        periods, compute = self._periods_us[:count], self._compute_us[:count]
        d = self._diagnostics
        d.set('tick_period_p50_ms', round(float(np.percentile(periods, 50)) * 1e-3, 4))
        d.set('tick_period_p99_ms', round(float(np.percentile(periods, 99)) * 1e-3, 4))
        d.set('tick_period_max_ms', round(float(periods.max()) * 1e-3, 4))
        d.set('tick_compute_p99_us', round(float(np.percentile(compute, 99)), 1))
        d.set('tick_overruns', self._overruns)


class ControllerNode(Node):
    """Runs the policy every control period; the last line of defence for the actuators."""

    def __init__(self) -> None:
        super().__init__('controller')
        self.parameters = declare_parameters(self, PARAMETERS, on_change=self._on_parameter)
        check_parameter_files(self)
        self._configure()
        p = self.parameters
        n, m = len(self.observation_names), len(self.action_names)

        # Preallocated buffers: a control tick writes into these, nothing else.
        self._observation = np.zeros(n)
        self._incoming = np.zeros(n)
        self._action = np.zeros(m)
        self._previous_action = self.safe_command.copy()
        self._noise = np.zeros(m)
        self._lower_step = np.zeros(m)
        self._upper_step = np.zeros(m)
        # Soft start: the command the current blend starts from, and when it started.
        self._blend_from = np.zeros(m)
        self._blend_start_ns = 0
        self._blend_pending = False  # a swapped-in policy has not driven a tick yet
        self._blending = False
        self._recent = np.zeros((p.sanity_check_observations, n))
        self._recent_count = 0
        self._recent_next = 0
        self._rng = np.random.default_rng(p.seed)
        self._observation_stamp_ns: int | None = None
        self._period_ns = int(round(self.control_period * 1e9))
        self._next_answer_ns: int | None = None  # stamp trigger: the next grid point
        self._observation_received = -np.inf
        self._policy: NumpyPolicy | None = None
        self._mode = p.mode
        self._estop = False
        self._active = p.start_active
        self._watchdog_active = False
        self._command = Float64MultiArray()
        self._action_message = JointState(name=list(self.action_names))

        self.diagnostics = Diagnostics(self, p.diagnostics_period)
        for key in (
            'observations',
            'commands',
            'safe_commands',
            'watchdog_trips',
            'policy_swaps',
            'repeated_observations',
            'nonfinite_actions',
            'soft_starts',
        ):
            self.diagnostics.counters[key] = 0
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
            problem = self._sanity_check(policy)
            if problem:
                raise configuration_error(self, 'policy_file', f'{p.policy_file}: {problem}')
            self._swap_in(policy, p.policy_file)

        steady = Clock(clock_type=ClockType.STEADY_TIME)
        self.create_timer(1.0, self.waits.check, clock=steady)  # not on the control path
        self._tick_timing = TickTiming(self.control_period, self.diagnostics)
        if p.trigger == 'timer':
            clock = steady if p.clock == 'steady' else None
            self.create_timer(self.control_period, self._on_timer, clock=clock)
        else:
            self.create_timer(self.control_period, self._on_watchdog, clock=steady)
        self.get_logger().info(
            f'controller ready: trigger {p.trigger}, {1.0 / self.control_period:g} Hz, mode '
            f'{self._mode}, commands on {topic}, policy '
            f'{self._policy.kind if self._policy else "none"}'
            + ('' if self._active else ', deactivated (safe command) until ~/activate true')
        )

    # ------------------------------------------------------------------ configuration

    def _configure(self) -> None:
        p = self.parameters
        self.observation_names = list(p.observation_names)
        self.action_names = list(p.action_names)
        for key in ('observation_names', 'action_names'):
            if not p[key]:
                raise configuration_error(self, key, 'must not be empty')
            if len(set(p[key])) != len(p[key]):
                raise configuration_error(self, key, 'names must be unique')
        m = len(self.action_names)
        for key in ('action_low', 'action_high'):
            if len(p[key]) != m:
                raise configuration_error(
                    self, key, f'expected {m} values (one per action), got {len(p[key])}'
                )
        self.action_low = np.array(p.action_low, dtype=np.float64)
        self.action_high = np.array(p.action_high, dtype=np.float64)
        if p.task:
            # The task's limits: a registered task's, narrowed by the file (a file that
            # widens them stops every node, this one included).
            task = task_from_parameters(self, p)
            self.action_low = task.action_low.copy()
            self.action_high = task.action_high.copy()
        if np.any(self.action_low >= self.action_high):
            raise configuration_error(self, 'action_low', 'must be below action_high')
        self._action_range = self.action_high - self.action_low
        # The noise of exploration_noise 1.0 (the one definition: core.protocol).
        self._unit_noise_scale = exploration_scale(1.0, self.action_low, self.action_high)
        if p.control_rate > 0.0:
            self.control_period = 1.0 / p.control_rate
        elif p.control_period > 0.0:
            self.control_period = p.control_period
        else:
            raise configuration_error(self, 'control_rate', 'set control_rate or control_period')
        if p.safe_command:
            if len(p.safe_command) != m:
                raise configuration_error(self, 'safe_command', f'expected {m} values')
            self.safe_command = np.array(p.safe_command, dtype=np.float64)
        else:
            self.safe_command = np.zeros(m)
        if np.any(self.safe_command < self.action_low) or np.any(
            self.safe_command > self.action_high
        ):
            raise configuration_error(
                self,
                'safe_command',
                f'{self.safe_command.tolist()} is outside the action '
                f'limits [{self.action_low.tolist()}, {self.action_high.tolist()}]',
            )

    def _on_parameter(self, name: str, value) -> None:
        if name == 'mode':
            self._mode = value
            self._report_state()

    def _report_state(self) -> None:
        d = self.diagnostics
        d.set('mode', self._mode)
        d.set('estop', self._estop)
        d.set('active', self._active)
        d.set('watchdog_active', self._watchdog_active)
        d.set('policy', self._policy.kind if self._policy else 'none')
        d.set('policy_parameters', self._policy.n_parameters if self._policy else 0)
        # The run-time path must stay numpy-only; this makes a regression visible.
        d.set('torch_loaded', 'torch' in sys.modules)
        if self._estop:
            d.errors['estop'] = 'e-stop latched: safe command'
        else:
            d.errors.pop('estop', None)
        if self._watchdog_active:
            d.warnings['watchdog'] = 'no fresh observation: safe command'
        else:
            d.warnings.pop('watchdog', None)
        if self._active:
            d.warnings.pop('deactivated', None)
        else:
            d.warnings['deactivated'] = 'deactivated: safe command'

    # ------------------------------------------------------------------ inputs

    def _on_observation(self, message: JointState) -> None:
        try:
            read_vector(message, self.observation_names, 'position', out=self._incoming)
        except MessageError as error:
            self.diagnostics.reject(
                f'observation_{error.reason}', f'/sindyrl/observation: {error.detail}'
            )
            return
        stamp_ns = stamp_to_ns(message.header.stamp)
        last = self._observation_stamp_ns
        if last is not None and stamp_ns < last:
            self.diagnostics.reject(
                'observation_out_of_order',
                f'/sindyrl/observation stamp {stamp_ns} ns is older than {last} ns',
            )
            return
        if last is not None and stamp_ns == last:
            # A re-sent state (its command was lost): answered again.
            self.diagnostics.increment('repeated_observations')
        if self._observation_stamp_ns is None:
            self.waits.stop(FIRST_OBSERVATION)
        self.diagnostics.increment('observations')
        np.copyto(self._observation, self._incoming)
        self._observation_stamp_ns = stamp_ns
        self._observation_received = time.monotonic()
        self._recent[self._recent_next] = self._incoming
        self._recent_next = (self._recent_next + 1) % len(self._recent)
        self._recent_count = min(self._recent_count + 1, len(self._recent))
        trigger = self.parameters.trigger
        if trigger == 'observation':
            self._control(stamp_ns)
        elif trigger == 'stamp' and self._due(stamp_ns):
            self._control(stamp_ns)

    def _due(self, stamp_ns: int) -> bool:
        """Stamp trigger: whether this observation starts the next control period."""
        period_ns = self._period_ns
        if self._next_answer_ns is None or stamp_ns - self._next_answer_ns > period_ns:
            self._next_answer_ns = stamp_ns + period_ns  # first, or after a gap: anchor here
            return True
        if stamp_ns < self._next_answer_ns - period_ns // 10:
            return False
        self._next_answer_ns += period_ns
        return True

    def _on_estop(self, message: Bool) -> None:
        """Latch on ``true``; release on an explicit ``false`` only.

        A repeated ``true`` keeps the latch (and sends the safe command again); silence (a
        publisher that stopped, or restarted without publishing) never releases: only a
        ``false`` message can.
        """
        if message.data:
            if not self._estop:
                self._estop = True
                self.get_logger().error('e-stop latched: sending the safe command until released')
                self._report_state()
            self._publish_safe()
        elif self._estop:
            self._estop = False
            self.get_logger().warning('e-stop released')
            self._report_state()

    def _on_activate(self, request: SetBool.Request, response: SetBool.Response):
        """``false``: deactivate (safe command now and every tick); ``true``: control again."""
        if request.data != self._active:
            self._active = bool(request.data)
            if self._active:
                self.get_logger().info('activated: the policy drives again')
            else:
                self.get_logger().warning('deactivated: sending the safe command')
            self._report_state()
        if not self._active:
            self._publish_safe()
        response.success = True
        response.message = 'active' if self._active else 'deactivated: safe command'
        if self._active and self._estop:
            response.message += ' (e-stop latched: safe command until released)'
        return response

    def _on_set_mode(self, request: SetBool.Request, response: SetBool.Response):
        mode = 'explore' if request.data else 'evaluate'
        result = self.set_parameters([Parameter('mode', Parameter.Type.STRING, mode)])[0]
        response.success = result.successful
        response.message = f'mode: {self._mode}' if result.successful else result.reason
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
        problem = self._sanity_check(policy)
        if problem:
            self.diagnostics.reject(
                'policy_output',
                f'{where}: {problem}; keeping the current policy',
                severity='error',
            )
            return
        self._swap_in(policy, where)

    def _sanity_check(self, policy: NumpyPolicy) -> str | None:
        """Why ``policy`` must not drive this robot, or None (checked on recent observations).

        Total: a check that fails in any way is a reason to refuse, never an exception.
        """
        try:
            return self._check_policy_output(policy)
        except Exception as error:  # a refusal, like a bad output
            return f'check failed: {repr(error)[:1000]}'

    def _check_policy_output(self, policy: NumpyPolicy) -> str | None:
        if policy.observation_dim != len(self.observation_names):
            return f'policy takes {policy.observation_dim} observations'
        if policy.action_dim != len(self.action_names):
            return f'policy gives {policy.action_dim} actions'
        if self._recent_count:
            observations = self._recent[: self._recent_count]
        else:
            observations = np.zeros((1, len(self.observation_names)))
        try:
            with np.errstate(all='ignore'):  # overflow shows as non-finite output, refused below
                actions = np.asarray(policy.act_batch(observations), dtype=np.float64)
                single = np.array(policy(np.ascontiguousarray(observations[-1])), dtype=np.float64)
        except Exception as error:
            return f'evaluation failed: {repr(error)[:1000]}'
        if actions.shape != (len(observations), len(self.action_names)):
            return f'act_batch gave shape {actions.shape}'
        if not (np.all(np.isfinite(actions)) and np.all(np.isfinite(single))):
            return f'non-finite actions on {len(observations)} recent observations'
        low = self.action_low - OUTPUT_TOLERANCE
        high = self.action_high + OUTPUT_TOLERANCE
        if np.any(actions < low) or np.any(actions > high):
            return (
                f'actions in [{actions.min(axis=0).tolist()}, {actions.max(axis=0).tolist()}] '
                f'leave the limits [{self.action_low.tolist()}, {self.action_high.tolist()}]'
            )
        return None

    def _swap_in(self, policy: NumpyPolicy, source: str) -> None:
        self._policy = policy  # one reference assignment: the next tick uses the new policy
        # Soft start from whatever the actuators get when it first drives a tick.
        self._blend_pending = self.parameters.soft_start_time > 0.0
        self._blending = False
        self.diagnostics.increment('policy_swaps')
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
        fresh = time.monotonic() - self._observation_received <= (
            self.parameters.observation_timeout
        )
        if fresh == self._watchdog_active:  # state changed
            self._watchdog_active = not fresh
            if not fresh:
                self.diagnostics.increment('watchdog_trips')
                self.get_logger().warning(
                    f'no observation for {self.parameters.observation_timeout} s: safe command'
                )
            else:
                self.get_logger().info('observations back: control resumed')
            self._report_state()
        return fresh

    def _on_timer(self) -> None:
        started = time.perf_counter_ns()
        if (
            self._observation_stamp_ns is None
            or not self._fresh()
            or self._estop
            or not self._active
        ):
            self._publish_safe()
        else:
            self._control(self._observation_stamp_ns)
        self._tick_timing.record(started, time.perf_counter_ns())

    def _on_watchdog(self) -> None:
        """Observation and stamp triggers: the safe command while observations are missing."""
        if self._observation_stamp_ns is not None and not self._fresh():
            self._publish_safe()

    def _control(self, stamp_ns: int) -> None:
        """Compute, limit and publish the action answering the observation stamped ``stamp_ns``."""
        if self._estop or not self._active:
            self._publish_safe(stamp_ns)
            return
        if self._watchdog_active:
            self._fresh()
        action, noise, p = self._action, self._noise, self.parameters
        explore = self._mode == 'explore'
        if self._policy is None:
            if not explore:
                self._publish_safe(stamp_ns)
                return
            self._rng.random(out=noise)  # uniform in [0, 1)
            np.multiply(noise, self._action_range, out=action)
            np.add(action, self.action_low, out=action)
        else:
            self._policy(self._observation, out=action)
            if explore and p.exploration_noise > 0.0:
                self._rng.standard_normal(out=noise)
                np.multiply(noise, self._unit_noise_scale, out=noise)
                np.multiply(noise, p.exploration_noise, out=noise)
                np.add(action, noise, out=action)
            if self._blend_pending or self._blending:
                self._soft_start(action, stamp_ns)
        np.clip(action, self.action_low, self.action_high, out=action)
        if p.rate_limit > 0.0:
            max_step = p.rate_limit * self.control_period
            np.subtract(self._previous_action, max_step, out=self._lower_step)
            np.add(self._previous_action, max_step, out=self._upper_step)
            np.clip(action, self._lower_step, self._upper_step, out=action)
        if not np.all(np.isfinite(action)):
            self.diagnostics.increment('nonfinite_actions')
            self._publish_safe(stamp_ns)
            return
        self._publish(action, stamp_ns, self._mode)

    def _loop_time_ns(self, stamp_ns: int) -> int:
        """Now on the loop's clock: the observation's stamp, the ROS clock or steady time."""
        p = self.parameters
        if p.trigger in ('observation', 'stamp'):
            return stamp_ns
        if p.clock == 'steady':
            return time.monotonic_ns()
        return self.get_clock().now().nanoseconds

    def _soft_start(self, action: np.ndarray, stamp_ns: int) -> None:
        """Blend ``action`` (in place) from the command the blend started from."""
        now_ns = self._loop_time_ns(stamp_ns)
        if self._blend_pending:
            np.copyto(self._blend_from, self._previous_action)
            self._blend_start_ns = now_ns
            self._blend_pending = False
            self._blending = True
            self.diagnostics.increment('soft_starts')
        elif now_ns < self._blend_start_ns:  # the clock went back (sim reset): start over
            self._blend_start_ns = now_ns
        duration = self.parameters.soft_start_time
        weight = (now_ns - self._blend_start_ns) * 1e-9 / duration if duration > 0.0 else 1.0
        if weight >= 1.0:
            self._blending = False
            return
        # action = blend_from + weight * (action - blend_from)
        np.subtract(action, self._blend_from, out=action)
        np.multiply(action, weight, out=action)
        np.add(action, self._blend_from, out=action)

    def _publish_safe(self, stamp_ns: int | None = None) -> None:
        if stamp_ns is None:
            stamp_ns = self._observation_stamp_ns
        if self._blending:  # the policy will take over from the safe command again
            self._blending = False
            self._blend_pending = True
        self.diagnostics.increment('safe_commands')
        self._publish(self.safe_command, stamp_ns, 'safe')

    def _publish(self, action: np.ndarray, stamp_ns: int | None, mode: str) -> None:
        # Last line of defence: never a non-finite or out-of-limit command.
        if (
            not np.all(np.isfinite(action))
            or np.any(action < self.action_low)
            or np.any(action > self.action_high)
        ):
            action, mode = self.safe_command, 'safe'
        command_message(action, stamp_ns, self._command)
        self._command_publisher.publish(self._command)
        message = self._action_message
        message.header.stamp = ns_to_stamp(stamp_ns or 0)
        message.header.frame_id = mode
        message.effort = self._command.data
        self._action_publisher.publish(message)
        np.copyto(self._previous_action, action)
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
