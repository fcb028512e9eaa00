"""Serial rig bridge: a microcontroller rig on a serial port presented as a ROS robot.

It plays the part the simulated plant plays in simulation: publishes ``/joint_states`` and
applies ``/<controller_name>/commands``, talking to the rig through the framed, checksummed,
versioned protocol of :mod:`sindyrl_ros.core.rig_protocol` (``docs/rig_protocol.md``).

* A reader thread (pyserial) decodes STATE, HEARTBEAT and ERROR frames. Corrupt, unknown
  or malformed frames are dropped and counted (``rejected.frame_<reason>``), never
  published. A STATE becomes a JointState stamped with the rig's clock mapped onto ROS
  time (:class:`~sindyrl_ros.core.rig_protocol.DeviceClock`: minimum of host - device
  time, following drift), after ``clock_warmup`` frames have settled the offset.
* Commands are checked (length, finite: refused and counted otherwise), clipped into the
  limits and written as COMMAND frames with increasing sequence numbers; the rig echoes
  the sequence it applied, which gives the command round trip. A HEARTBEAT goes out every
  ``heartbeat_period``.
* When the port disappears (USB unplugged) the bridge closes it and reopens it with
  exponential back-off between ``reconnect_min`` and ``reconnect_max``. While the port is
  closed, or no valid frame came for ``link_timeout``, /diagnostics reports ERROR and no
  joint states are published, so the controller's watchdog switches to its safe command;
  the rig's own command timeout stops the actuators.

For a training run it is also the plant the run supervisor drives (the simulated plant's
interface, for a rig that cannot stop time):

* ``/plant/reset`` (std_srvs/Trigger) ends the episode and sends RESET; the answer comes
  once the rig's ``EPISODE_START`` STATE arrived (or fails after ``reset_timeout``). While
  the rig resets (``RESETTING`` STATEs: a homing routine) nothing is published and
  controller commands are dropped. With ``reset_each_episode`` the bridge also resets the
  rig after every episode, as the simulated plant resets its environment.
* ``/plant/pause`` (std_srvs/SetBool) holds the rig: the bridge sends the zero command
  itself at every STATE, drops the controller's commands and publishes no joint states
  (so nobody records transitions the controller did not drive); paused steps are no
  episode steps. ``start_paused`` starts held, ``reset_on_connect`` resets the rig each
  time the port opens, so a run's first episode starts from a reset like every other.
* ``/sindyrl/episode`` (String JSON, as the simulated plant's) and ``/sindyrl/reward``
  (the task's reward of each step, stamped with the state it started from): a step is
  two consecutive published STATEs, its action the command the rig echoes as applied;
  its reward needs the two observations, read from ``/sindyrl/observation``, and its
  mode is the controller's (``frame_id`` of ``/sindyrl/action``). The accounting itself
  is :class:`sindyrl_ros.core.episodes.EpisodeLedger`. ``stale_command_steps``
  counts steps the rig took with a command that did not answer the state they started
  from: the controller's answer came later than the rig's next sample (the real-time
  contract was missed; a warning when more than a tenth of the last 200 steps did).
  ``answer_latency_ms`` / ``answer_latency_max_ms`` (last, and worst of the last 200) are
  the times from publishing a joint state to receiving the command that answers it.

Commands that answer a state from before the last pause, reset or reconnection are dropped
(``stale_commands``): they must not move the rig in the new episode.
"""

from __future__ import annotations

from collections import OrderedDict, deque
import math
import sys
import threading
import time

import numpy as np
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray
from std_srvs.srv import SetBool, Trigger

from sindyrl_ros.core.episodes import EpisodeLedger
from sindyrl_ros.core.rig_protocol import (
    DROP_REASONS,
    Command,
    CommandMode,
    DeviceClock,
    Error,
    FrameDecoder,
    Heartbeat,
    Reset,
    ResetFlag,
    State,
    StateFlag,
    encode,
)
from sindyrl_ros.nodes.common import (
    RELIABLE_QOS,
    SENSOR_QOS,
    SHARED_PARAMETERS,
    TRANSITION_QOS,
    Diagnostics,
    EpisodeReporter,
    MessageError,
    ParamSpec,
    check_parameter_files,
    command_stamp_ns,
    configuration_error,
    declare_parameters,
    ns_to_stamp,
    read_vector,
    run_node,
    stamp_to_ns,
    task_from_parameters,
    vector_message,
)

BRIDGE_PARAMETERS = [
    ParamSpec(
        'port',
        '/dev/ttyACM0',
        'Serial device of the rig; prefer a stable name such as /dev/serial/by-id/...',
        read_only=True,
    ),
    ParamSpec(
        'baud',
        115200,
        'Baud rate (ignored by USB CDC devices)',
        range=(300, 20_000_000),
        read_only=True,
    ),
    ParamSpec(
        'joint_names',
        [],
        'Names of the rig joints, in the order of the STATE frames',
        read_only=True,
        type=Parameter.Type.STRING_ARRAY,
    ),
    ParamSpec(
        'command_mode',
        'effort',
        'What command values mean for the rig',
        read_only=True,
        choices=('effort', 'velocity', 'position'),
    ),
    ParamSpec(
        'command_low',
        [],
        'Lower limit per command channel; empty: action_low',
        read_only=True,
        type=Parameter.Type.DOUBLE_ARRAY,
    ),
    ParamSpec(
        'command_high',
        [],
        'Upper limit per command channel; empty: action_high',
        read_only=True,
        type=Parameter.Type.DOUBLE_ARRAY,
    ),
    ParamSpec(
        'controller_name',
        'effort_controller',
        'Commands are read from /<controller_name>/commands',
        read_only=True,
    ),
    ParamSpec(
        'heartbeat_period',
        0.1,
        'Seconds between HEARTBEAT frames to the rig',
        range=(0.001, 60.0),
        read_only=True,
    ),
    ParamSpec(
        'link_timeout',
        0.5,
        'Seconds without a valid frame after which the link counts as lost (ERROR)',
        range=(0.01, 3600.0),
    ),
    ParamSpec(
        'reconnect_min',
        0.1,
        'Seconds before the first attempt to reopen a lost port',
        range=(0.001, 3600.0),
    ),
    ParamSpec(
        'reconnect_max',
        2.0,
        'Longest wait between attempts to reopen the port (the wait doubles up to it)',
        range=(0.001, 3600.0),
    ),
    ParamSpec(
        'clock_warmup',
        5,
        'Frames used to estimate the rig clock offset before joint states are published',
        range=(1, 1000),
        read_only=True,
    ),
    ParamSpec(
        'clock_slew_ppm',
        1000.0,
        'Fastest rig clock drift the time mapping follows, parts per million',
        range=(0.0, 1e5),
        read_only=True,
    ),
    ParamSpec(
        'start_paused',
        False,
        'Start held, as after /plant/pause true (a run supervisor resumes the rig when it '
        'is ready, so no real step is taken before anyone counts it)',
        read_only=True,
    ),
    ParamSpec(
        'reset_on_connect',
        False,
        'Reset the rig (RESET) each time the port opens: the first episode starts from a '
        'reset like every other',
        read_only=True,
    ),
    ParamSpec(
        'reset_each_episode',
        True,
        'Reset the rig after every episode of episode_length steps, as the simulated plant '
        'resets its environment; false: the next episode goes on from where this one ended',
        read_only=True,
    ),
    ParamSpec(
        'reset_start',
        'random',
        'Start state a RESET asks for: random (drawn by the rig, as a simulator resets; '
        'RANDOM_START) or home (the rig at rest, e.g. the pole hanging down)',
        read_only=True,
        choices=('random', 'home'),
    ),
    ParamSpec(
        'reset_timeout',
        8.0,
        'Seconds a reset may take (homing included) before /plant/reset fails; keep it '
        "below the run supervisor's service_timeout",
        range=(0.01, 3600.0),
    ),
    ParamSpec(
        'reset_retry',
        0.25,
        'Seconds without any sign of a RESET being served before it is sent again',
        range=(0.001, 60.0),
    ),
    ParamSpec(
        'observation_wait',
        1.0,
        'Seconds a step waits for its observations (/sindyrl/observation) before its reward '
        'counts as missing',
        range=(0.001, 3600.0),
    ),
    ParamSpec(
        'diagnostics_period',
        1.0,
        'Seconds between /diagnostics messages',
        range=(0.01, 3600.0),
        read_only=True,
    ),
]
# Everything this node declares (what a parameter file may set for it).
PARAMETERS = SHARED_PARAMETERS + BRIDGE_PARAMETERS

# A device time that goes back by more than this is a rig restart, not a reordered frame.
_RESTART_US = 1_000_000
_MODES = {
    'effort': CommandMode.EFFORT,
    'velocity': CommandMode.VELOCITY,
    'position': CommandMode.POSITION,
}
_STATE_REJECTS = ('state_joint_count', 'state_nonfinite', 'state_out_of_order')
_COMMAND_REJECTS = ('command_length', 'command_nonfinite')
_OBSERVATION_REJECTS = tuple(
    f'observation_{reason}'
    for reason in ('length_mismatch', 'duplicate_name', 'missing_name', 'nonfinite')
)
# Episode records are a log: a supervisor that joins late still gets the recent ones (the
# simulated plant's QoS for the same topic).
# Every observation scores a step: a deep queue rides out a busy executor.
LEDGER_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST, depth=500, reliability=ReliabilityPolicy.RELIABLE
)
# Commands remembered by sequence number, to know what the rig applied at each STATE.
_SENT_COMMANDS = 256
# Steps over which the share of stale-command steps is judged.
_REAL_TIME_WINDOW = 200


class _ResetRequest:
    """A RESET in flight: the sequence it was sent with and how the rig answered."""

    def __init__(self, sequence: int, flags: int, now: float) -> None:
        self.sequence = sequence
        self.flags = flags
        self.started = now
        self.sent_at = now
        self.acknowledged = False  # a RESETTING or EPISODE_START STATE echoed the sequence
        self.done = threading.Event()
        self.ok = False
        self.message = ''


class SerialBridgeNode(Node):
    """The rig behind a serial port as a robot and, for training, a plant (module docstring)."""

    def __init__(self) -> None:
        super().__init__('serial_bridge')
        self.parameters = declare_parameters(self, PARAMETERS)
        check_parameter_files(self)
        p = self.parameters
        if not p.joint_names:
            raise configuration_error(self, 'joint_names', 'name at least one joint')
        if len(set(p.joint_names)) != len(p.joint_names):
            raise configuration_error(self, 'joint_names', 'joint names must be unique')
        self.joint_names = list(p.joint_names)
        self.command_low, self.command_high = self._command_limits()
        if p.reconnect_min > p.reconnect_max:
            raise configuration_error(self, 'reconnect_min', 'must not exceed reconnect_max')
        self._mode = _MODES[p.command_mode]
        self._ledger = self._make_ledger()  # narrows the command limits to the task's
        self._zero_command = np.clip(
            np.zeros(self.command_low.size), self.command_low, self.command_high
        )

        self.diagnostics = Diagnostics(self, p.diagnostics_period)
        # Every counter exists from the start: the reader thread only changes values, so
        # the diagnostics timer never iterates a dict that grows under it.
        for key in (
            'connects',
            'frames',
            'states_published',
            'states_warmup',
            'states_paused',
            'states_resetting',
            'heartbeats_received',
            'device_errors',
            'device_restarts',
            'commands_sent',
            'commands_not_sent',
            'clipped_commands',
            'commands_while_paused',
            'commands_while_resetting',
            'stale_commands',
            'heartbeats_sent',
            'write_failures',
            'pauses',
            'resets',
            'resets_failed',
            'reset_resends',
            'episode_starts_missed',
            'steps',
            'episodes',
            'missed_states',
            'stale_command_steps',
            'unknown_applied_commands',
            'missing_rewards',
        ):
            self.diagnostics.counters[key] = 0
        for reason in (
            [f'frame_{r}' for r in DROP_REASONS]
            + ['frame_unexpected_type']
            + list(_STATE_REJECTS)
            + list(_COMMAND_REJECTS)
            + list(_OBSERVATION_REJECTS)
        ):
            self.diagnostics.counters[f'rejected.{reason}'] = 0
        for key, value in (
            ('port', p.port),
            ('link', 'disconnected'),
            ('clock_offset_s', 'unknown'),
            ('device_flags', 'none'),
            ('command_round_trip_ms', 'unknown'),
            ('last_device_error', 'none'),
            ('paused', p.start_paused),
            ('resetting', False),
            ('episode', 1),
            ('episode_step', 0),
            ('last_return', 'none'),
            ('answer_latency_ms', 'unknown'),
            ('answer_latency_max_ms', 'unknown'),
        ):
            self.diagnostics.set(key, value)
        self.diagnostics.errors['link'] = f'port {p.port} not open yet'

        self._joint_publisher = self.create_publisher(JointState, 'joint_states', SENSOR_QOS)
        commands = self.create_subscription(
            Float64MultiArray, f'/{p.controller_name}/commands', self._on_command, RELIABLE_QOS
        )
        self._commands_topic = commands.topic_name
        # The simulated plant's interface for a run supervisor (relative names: /plant/...).
        self.create_service(Trigger, 'plant/reset', self._on_reset)
        self.create_service(SetBool, 'plant/pause', self._on_pause)
        if self._ledger is not None:
            self._episodes = EpisodeReporter(self, self.diagnostics)
            self._reward_publisher = self.create_publisher(
                JointState, 'sindyrl/reward', TRANSITION_QOS
            )
            self.create_subscription(
                JointState, 'sindyrl/observation', self._on_observation, LEDGER_QOS
            )
            self.create_subscription(JointState, 'sindyrl/action', self._on_action, LEDGER_QOS)

        # Shared with the reader thread (plain attribute writes; the GIL orders them).
        self._serial = None
        self._write_lock = threading.Lock()
        self._port_error = 'not opened yet'
        self._last_frame_at: float | None = None
        self._link = 'disconnected'
        self._command_sequence = 0  # COMMAND and RESET share it (the rig echoes both)
        self._heartbeat_sequence = 0
        self._next_heartbeat = 0.0
        self._sent_at: dict[int, float] = {}  # command sequence -> monotonic send time
        self._sent_lock = threading.Lock()
        self._device_clock = DeviceClock(p.clock_slew_ppm)
        self._last_device_us: int | None = None
        self._last_stamp_ns = -1
        self._device_flags = 0
        # Plant state, shared by the reader thread and the executor: under _lock.
        self._lock = threading.RLock()
        self._paused = p.start_paused
        self._paused_at = time.monotonic()
        self._reset: _ResetRequest | None = None
        # Sequence -> (values applied, stamp of the observation answered or None).
        self._sent: OrderedDict[int, tuple[np.ndarray, int | None]] = OrderedDict()
        self._previous: tuple[int, int] | None = None  # last published (stamp ns, device µs)
        self._restart = True  # the next published state follows a pause, reset or reconnect
        self._command_floor_ns: float = math.inf  # older answers are stale
        self._real_time_window = (0, 0)  # (steps, stale_command_steps) at its start
        # Stamp -> monotonic time each joint state was published, and the recent times from
        # there to the command answering it (the host's share of the real-time contract).
        self._published_at: OrderedDict[int, float] = OrderedDict()
        self._answer_latencies: deque[float] = deque(maxlen=_REAL_TIME_WINDOW)
        self._stop = threading.Event()
        self._reader = threading.Thread(target=self._read_loop, name='rig_reader', daemon=True)

        steady = Clock(clock_type=ClockType.STEADY_TIME)
        self.create_timer(min(0.05, p.link_timeout / 4.0), self._watch_link, clock=steady)
        self._reader.start()
        episodes = (
            f', episodes of {self._ledger.episode_length} steps'
            + (' (reset after each)' if p.reset_each_episode else '')
            if self._ledger is not None
            else ''
        )
        self.get_logger().info(
            f'serial bridge: port {p.port} at {p.baud} baud, joints {self.joint_names}, '
            f'{p.command_mode} commands from {self._commands_topic} in '
            f'[{self.command_low.tolist()}, {self.command_high.tolist()}]{episodes}'
            + (', paused until /plant/pause false' if self._paused else '')
        )

    def _command_limits(self) -> tuple[np.ndarray, np.ndarray]:
        p = self.parameters
        low = p.command_low or p.action_low
        high = p.command_high or p.action_high
        if not low or not high:
            raise configuration_error(
                self, 'command_low', 'give command_low/command_high or action_low/action_high'
            )
        if len(low) != len(high):
            raise configuration_error(
                self, 'command_high', f'{len(high)} values for {len(low)} lower limits'
            )
        if p.action_names and len(low) != len(p.action_names):
            raise configuration_error(
                self, 'command_low', f'{len(low)} limits for actions {list(p.action_names)}'
            )
        low, high = np.array(low, dtype=np.float64), np.array(high, dtype=np.float64)
        if np.any(low >= high):
            raise configuration_error(self, 'command_low', 'must be below command_high')
        return low, high

    def _make_ledger(self) -> EpisodeLedger | None:
        """Episode accounting for the task's reward, or None for a bare driver (no task)."""
        p = self.parameters
        self.observation_names: list[str] = []
        self._period_us = p.control_period * 1e6
        if not p.task:
            return None
        task = task_from_parameters(self, p)
        if task.action_dim != self.command_low.size:
            raise configuration_error(
                self,
                'command_low',
                f'{self.command_low.size} channels for task {task.name} '
                f'actions {list(task.action_names)}',
            )
        # The rig never gets more than the task allows, whatever command_low/high say.
        self.command_low = np.maximum(self.command_low, task.action_low)
        self.command_high = np.minimum(self.command_high, task.action_high)
        if np.any(self.command_low >= self.command_high):
            raise configuration_error(
                self, 'command_low', f'no command is within the task limits of {task.name}'
            )
        self.observation_names = list(task.observation_names)
        self._period_us = task.dt * 1e6
        try:
            reward = task.reward_function()
        except ValueError as error:  # a learned reward: only the plant's sensors know it
            self.get_logger().warning(f'episode returns are not computed: {error}')
            reward = None
        return EpisodeLedger(reward, task.episode_length, task.name, p.observation_wait)

    # ------------------------------------------------------------------ port (reader thread)

    def _open(self):
        import serial

        port = serial.Serial(
            self.parameters.port,
            self.parameters.baud,
            timeout=0.05,
            write_timeout=0.1,
            exclusive=True,
        )
        port.reset_input_buffer()  # stale bytes from before we listened
        return port

    def _close(self, reason: str) -> None:
        with self._write_lock:
            port, self._serial = self._serial, None
        if port is not None:
            try:
                port.close()
            except Exception:  # noqa: BLE001 - a vanished device may fail to close
                pass
        self._port_error = reason
        with self._lock:
            self._restart_chain()

    def _read_loop(self) -> None:
        """Open the port (backing off while it fails), read and decode until stopped.

        The wait before reopening doubles from ``reconnect_min`` to ``reconnect_max`` while
        attempts fail, and starts again from ``reconnect_min`` once a valid frame arrived.
        Heartbeats and RESET retries go out from here too: a reset service call may hold
        the executor while the rig homes.
        """
        p = self.parameters
        backoff = p.reconnect_min
        port = decoder = None
        while not self._stop.is_set():
            self._watch_reset()
            if self._serial is None:
                try:
                    port = self._open()
                except Exception as error:  # noqa: BLE001 - missing, busy, permission
                    self._port_error = f'cannot open {p.port}: {error}'
                    self._stop.wait(backoff)
                    backoff = min(2.0 * backoff, self.parameters.reconnect_max)
                    continue
                decoder = FrameDecoder(synchronised=False, on_drop=self._on_drop)
                self._device_clock.reset()
                self._last_device_us = None
                self._last_frame_at = None
                with self._write_lock:
                    self._serial = port
                    try:
                        port.write(b'\x00')  # ends any partial frame the rig holds
                    except Exception:  # noqa: BLE001 - the read below reports a dead port
                        pass
                self.diagnostics.increment('connects')
                self.get_logger().info(f'port {p.port} open')
                with self._lock:
                    self._restart_chain()
                    if p.reset_on_connect:
                        self._start_reset('port opened')
            if time.monotonic() >= self._next_heartbeat:
                self._next_heartbeat = time.monotonic() + p.heartbeat_period
                self._send_heartbeat()
            try:
                data = port.read(port.in_waiting or 1)
            except Exception as error:  # noqa: BLE001 - SerialException, OSError (EIO)
                self._close(f'port {p.port} lost: {error}')
                self.get_logger().error(f'port {p.port} lost: {error}')
                self._stop.wait(backoff)
                backoff = min(2.0 * backoff, self.parameters.reconnect_max)
                continue
            if data:
                host_ns = self.get_clock().now().nanoseconds
                for message in decoder.feed(data):
                    self._on_message(message, host_ns)
                    backoff = p.reconnect_min
        self._close('bridge stopped')

    def _on_drop(self, reason: str, detail: str) -> None:
        self.diagnostics.reject(f'frame_{reason}', f'{self.parameters.port}: {detail}')

    def _on_message(self, message, host_ns: int) -> None:
        self.diagnostics.increment('frames')
        self._last_frame_at = time.monotonic()
        if isinstance(message, State):
            self._on_state(message, host_ns)
        elif isinstance(message, Heartbeat):
            self.diagnostics.increment('heartbeats_received')
        elif isinstance(message, Error):
            self.diagnostics.increment('device_errors')
            self.diagnostics.set('last_device_error', f'{message.code}: {message.text}')
            self.get_logger().warning(f'rig error {message.code}: {message.text}')
        else:
            self.diagnostics.reject(
                'frame_unexpected_type', f'{type(message).__name__} from the rig'
            )

    def _on_state(self, state: State, host_ns: int) -> None:
        n = len(self.joint_names)
        if len(state.positions) != n:
            self.diagnostics.reject(
                'state_joint_count',
                f'{len(state.positions)} joints in STATE, joint_names has {n}',
            )
            return
        values = state.positions + state.velocities + state.efforts
        if not all(math.isfinite(v) for v in values):
            self.diagnostics.reject('state_nonfinite', f'{state}')
            return
        device_us = state.device_time_us
        if self._last_device_us is not None and device_us <= self._last_device_us:
            if self._last_device_us - device_us > _RESTART_US:
                self.diagnostics.increment('device_restarts')
                self.get_logger().warning('rig clock went back: rig restarted')
                self._device_clock.reset()
                with self._lock:
                    self._restart_chain()
            else:
                self.diagnostics.reject(
                    'state_out_of_order',
                    f'device time {device_us} µs after {self._last_device_us} µs',
                )
                return
        self._last_device_us = device_us
        stamp_ns = self._device_clock.update(device_us, host_ns)
        self.diagnostics.set('clock_offset_s', f'{self._device_clock.offset_ns * 1e-9:.6f}')
        self._device_flags = state.flags
        self.diagnostics.set('device_flags', _flag_names(state.flags))
        with self._sent_lock:
            sent_at = self._sent_at.pop(state.command_sequence, None)
        if sent_at is not None:
            round_trip = (time.monotonic() - sent_at) * 1e3
            self.diagnostics.set('command_round_trip_ms', f'{round_trip:.2f}')
        # Every valid STATE moves the reset along, warm-up ones included.
        in_episode = self._follow_reset(state)
        if self._device_clock.samples <= self.parameters.clock_warmup:
            self.diagnostics.increment('states_warmup')
            with self._lock:
                self._previous = None
            return
        if stamp_ns <= self._last_stamp_ns:
            self.diagnostics.reject(
                'state_out_of_order', f'mapped stamp {stamp_ns} ns not after the last'
            )
            return
        self._last_stamp_ns = stamp_ns
        with self._lock:
            if not in_episode:
                self.diagnostics.increment('states_resetting')
                self._previous = None
                return
            if self._paused:
                # A rig cannot stop time: it gets the zero command and nobody sees it move.
                self.diagnostics.increment('states_paused')
                self._previous = None
                self._send_command(self._zero_command, None)
                return
            complete = self._count_step(state, stamp_ns)
            message = JointState(name=self.joint_names)
            message.header.stamp = ns_to_stamp(stamp_ns)
            message.position = list(state.positions)
            message.velocity = list(state.velocities)
            message.effort = list(state.efforts)
            self._joint_publisher.publish(message)
            self.diagnostics.increment('states_published')
            self._published_at[stamp_ns] = time.monotonic()
            if len(self._published_at) > 64:
                self._published_at.popitem(last=False)
            if complete and self.parameters.reset_each_episode:
                self._start_reset('episode end')

    # ------------------------------------------------------------------ plant (both threads)

    def _restart_chain(self) -> None:
        """After a pause, reset or reconnection: no step spans it, older answers are stale."""
        self._restart = True
        self._previous = None
        self._command_floor_ns = math.inf

    def _count_step(self, state: State, stamp_ns: int) -> bool:
        """Count the step that ends at this published state; True when it ends an episode."""
        if self._restart:
            self._restart = False
            self._command_floor_ns = stamp_ns
        previous, self._previous = self._previous, (stamp_ns, state.device_time_us)
        if previous is None or self._ledger is None:
            return False
        elapsed_us = state.device_time_us - previous[1]
        if self._period_us > 0 and elapsed_us > 1.5 * self._period_us:
            # STATEs lost on the way: the rig stepped all the same.
            missed = max(0, round(elapsed_us / self._period_us) - 1)
            self._ledger.add_missed(missed)
            self.diagnostics.increment('missed_states', missed)
            return False
        action, answered = self._applied(state.command_sequence)
        if answered != previous[0]:
            self.diagnostics.increment('stale_command_steps')
        self.diagnostics.increment('steps')
        complete = self._ledger.add_step(previous[0], stamp_ns, action, answered, time.monotonic())
        self.diagnostics.set('episode', self._ledger.episode_number)
        self.diagnostics.set('episode_step', self._ledger.episode_steps)
        return complete

    def _applied(self, sequence: int) -> tuple[np.ndarray, int | None]:
        """The command the rig applied (its echo) and the observation stamp it answered."""
        if sequence == 0:
            return self._zero_command, None  # the rig's own safe command
        with self._sent_lock:
            sent = self._sent.get(sequence)
        if sent is None:
            self.diagnostics.increment('unknown_applied_commands')
            return self._zero_command, None
        return sent

    def _follow_reset(self, state: State) -> bool:
        """Advance the reset in flight with this STATE; False while it is not an episode's."""
        resetting = bool(state.flags & StateFlag.RESETTING)
        start = bool(state.flags & StateFlag.EPISODE_START)
        with self._lock:
            request = self._reset
            if request is None:
                if resetting or start:
                    # Reset by the rig itself (an operator's button) or late for our timeout.
                    if self._ledger is not None:
                        self._ledger.end_episode('reset')
                    self._restart_chain()
                return not resetting
            if state.command_sequence == request.sequence and (resetting or start):
                request.acknowledged = True
                if start:
                    self._finish_reset(request, True, 'the rig is at its start state')
                return start
            if request.acknowledged and not (resetting or start):
                # Its EPISODE_START frame was lost: the rig runs the new episode already.
                self.diagnostics.increment('episode_starts_missed')
                self._finish_reset(request, True, 'the rig runs again (EPISODE_START lost)')
                return True
            return False  # a state from before the rig took up this RESET

    def _start_reset(self, cause: str) -> _ResetRequest:
        """End the episode and send RESET (or join the reset already in flight)."""
        with self._lock:
            if self._ledger is not None:
                self._ledger.end_episode('reset')  # nothing when it just ended
            self._restart_chain()
            if self._reset is not None:
                return self._reset
            flags = ResetFlag.RANDOM_START if self.parameters.reset_start == 'random' else 0
            request = _ResetRequest(self._next_sequence(), int(flags), time.monotonic())
            self._reset = request
            self._write(Reset(request.sequence, request.flags))
            self.diagnostics.set('resetting', True)
        self.get_logger().info(f'reset {request.sequence} sent ({cause})')
        return request

    def _finish_reset(self, request: _ResetRequest, ok: bool, message: str) -> None:
        with self._lock:
            request.ok, request.message = ok, message
            if self._reset is request:
                self._reset = None
            self._restart_chain()
            self.diagnostics.increment('resets' if ok else 'resets_failed')
            self.diagnostics.set('resetting', False)
            if ok:
                self.diagnostics.errors.pop('reset', None)
            else:
                self.diagnostics.errors['reset'] = f'reset {request.sequence} failed: {message}'
        request.done.set()

    def _watch_reset(self) -> None:
        """Reader thread: send a RESET again while unanswered; give up after reset_timeout."""
        p = self.parameters
        with self._lock:
            request = self._reset
            if request is None:
                return
            now = time.monotonic()
            if now - request.started > p.reset_timeout:
                self._finish_reset(
                    request, False, f'no EPISODE_START from the rig within {p.reset_timeout} s'
                )
                self.get_logger().error(f'reset {request.sequence} failed: {request.message}')
                return
            if not request.acknowledged and now - request.sent_at > p.reset_retry:
                request.sent_at = now
                if self._write(Reset(request.sequence, request.flags)):
                    self.diagnostics.increment('reset_resends')

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response):
        """End the episode, reset the rig and answer once it is at its start state.

        Blocks this node's executor while the rig resets (at most ``reset_timeout``): the
        reader thread goes on reading frames and sending heartbeats meanwhile.
        """
        blocked = time.monotonic()
        reset = self._start_reset('/plant/reset')
        finished = reset.done.wait(self.parameters.reset_timeout + 1.0)
        response.success = finished and reset.ok
        response.message = reset.message if finished else 'no answer from the reader thread'
        if response.success and self._paused:
            response.message += ' (held until /plant/pause false)'
        if self._ledger is not None:
            # Observations queued meanwhile are still to be read: not missing.
            with self._lock:
                self._ledger.extend_wait(time.monotonic() - blocked)
        return response

    def _on_pause(self, request: SetBool.Request, response: SetBool.Response):
        """Hold (true) or resume (false) the rig; see the module docstring."""
        response.success = True
        with self._lock:
            if request.data == self._paused:
                response.message = 'already paused' if self._paused else 'not paused'
                return response
            now = time.monotonic()
            self._paused = bool(request.data)
            real_steps = self._ledger.real_steps if self._ledger is not None else 0
            if self._paused:
                self._paused_at = now
                self._restart_chain()
                self.diagnostics.increment('pauses')
                if self._reset is None:
                    self._send_command(self._zero_command, None)
                response.message = f'paused after {real_steps} real steps'
            else:
                response.message = f'resumed after {now - self._paused_at:.3f} s'
            self.diagnostics.set('paused', self._paused)
        self.get_logger().info(response.message)
        return response

    # ------------------------------------------------------------------ episodes (executor)

    def _on_observation(self, message: JointState) -> None:
        try:
            observation = read_vector(message, self.observation_names, 'position')
        except MessageError as error:
            self.diagnostics.reject(
                f'observation_{error.reason}', f'/sindyrl/observation: {error.detail}'
            )
            return
        with self._lock:
            self._ledger.add_observation(stamp_to_ns(message.header.stamp), observation)
        self._poll_ledger()

    def _on_action(self, message: JointState) -> None:
        with self._lock:
            self._ledger.add_action(stamp_to_ns(message.header.stamp), message.header.frame_id)

    def _poll_ledger(self) -> None:
        """Publish the rewards of scored steps and the records of finished episodes."""
        if self._ledger is None:
            return
        with self._lock:
            rewards, records = self._ledger.poll(time.monotonic())
            self.diagnostics.counters['missing_rewards'] = self._ledger.missing_rewards
            self.diagnostics.set('real_steps', self._ledger.real_steps)
        for start_ns, reward in rewards:
            self._reward_publisher.publish(
                vector_message(('reward',), (reward,), ns_to_stamp(start_ns))
            )
        self._episodes.publish(records)

    # ------------------------------------------------------------------ writing (executor)

    def _write(self, message) -> bool:
        frame = encode(message)
        with self._write_lock:
            port = self._serial
            if port is None:
                return False
            try:
                port.write(frame)
            except Exception as error:  # noqa: BLE001 - timeout, vanished device
                self.diagnostics.increment('write_failures')
                self.get_logger().warning(
                    f'write to {self.parameters.port} failed: {error}', throttle_duration_sec=2.0
                )
                return False
        return True

    def _on_command(self, message: Float64MultiArray) -> None:
        values = np.asarray(message.data, dtype=np.float64)
        if values.shape != self.command_low.shape:
            self.diagnostics.reject(
                'command_length',
                f'{self._commands_topic}: {values.size} values, expected {self.command_low.size}',
            )
            return
        if not np.all(np.isfinite(values)):
            self.diagnostics.reject('command_nonfinite', f'{self._commands_topic}: {values}')
            return
        clipped = np.clip(values, self.command_low, self.command_high)
        if not np.array_equal(clipped, values):
            self.diagnostics.increment('clipped_commands')
        answered = command_stamp_ns(message)
        with self._lock:
            if self._paused:
                self.diagnostics.increment('commands_while_paused')
            elif self._reset is not None:
                self.diagnostics.increment('commands_while_resetting')
            elif answered is not None and answered < self._command_floor_ns:
                self.diagnostics.increment('stale_commands')
            else:
                self._send_command(clipped, answered)
                published = self._published_at.get(answered) if answered is not None else None
                if published is not None:
                    self._answer_latencies.append(time.monotonic() - published)

    def _next_sequence(self) -> int:
        with self._lock:
            self._command_sequence = (self._command_sequence % 0xFFFF_FFFF) + 1
            return self._command_sequence

    def _send_command(self, values: np.ndarray, answered: int | None) -> None:
        """Write a COMMAND; ``answered`` is the observation stamp it answers (None: ours)."""
        sequence = self._next_sequence()
        with self._sent_lock:
            self._sent[sequence] = (values, answered)
            while len(self._sent) > _SENT_COMMANDS:
                self._sent.popitem(last=False)
        if self._write(Command(sequence, tuple(values), self._mode)):
            self.diagnostics.increment('commands_sent')
            with self._sent_lock:
                self._sent_at[sequence] = time.monotonic()
                if len(self._sent_at) > 64:  # forget commands the rig never echoed
                    for old in sorted(self._sent_at)[:-64]:
                        del self._sent_at[old]
        else:
            self.diagnostics.increment('commands_not_sent')

    def _send_heartbeat(self) -> None:
        self._heartbeat_sequence = (self._heartbeat_sequence % 0xFFFF_FFFF) + 1
        beat = Heartbeat(self._heartbeat_sequence, time.monotonic_ns() // 1000)
        if self._write(beat):
            self.diagnostics.increment('heartbeats_sent')

    def _watch_real_time(self) -> None:
        """Warn while more than a tenth of the recent steps ran with a stale command."""
        with self._lock:
            latencies = list(self._answer_latencies)
        if latencies:
            self.diagnostics.set('answer_latency_ms', f'{latencies[-1] * 1e3:.2f}')
            self.diagnostics.set('answer_latency_max_ms', f'{max(latencies) * 1e3:.2f}')
        counters = self.diagnostics.counters
        steps = counters['steps'] - self._real_time_window[0]
        if steps < _REAL_TIME_WINDOW:
            return
        stale = counters['stale_command_steps'] - self._real_time_window[1]
        self._real_time_window = (counters['steps'], counters['stale_command_steps'])
        if stale > 0.1 * steps:
            self.diagnostics.warnings['real_time'] = (
                f'{stale} of the last {steps} steps applied a command that did not answer '
                'their state: answers come later than the rig samples'
            )
        else:
            self.diagnostics.warnings.pop('real_time', None)

    def _watch_link(self) -> None:
        """Link state for /diagnostics (ERROR while the port is closed or silent); episodes."""
        self._poll_ledger()
        self._watch_real_time()
        p = self.parameters
        if self._serial is None:
            link, problem = 'disconnected', self._port_error
        elif self._last_frame_at is None:
            link, problem = 'waiting', f'port {p.port} open, no valid frame yet'
        elif time.monotonic() - self._last_frame_at > p.link_timeout:
            silence = time.monotonic() - self._last_frame_at
            link, problem = 'lost', f'no valid frame from {p.port} for {silence:.2f} s'
        else:
            link, problem = 'up', None
        if link != self._link:
            if problem is None:
                self.get_logger().info(f'link to {p.port} up')
            else:
                self.get_logger().error(f'link {link}: {problem}')
            self._link = link
        self.diagnostics.set('link', link)
        if problem is None:
            self.diagnostics.errors.pop('link', None)
        else:
            self.diagnostics.errors['link'] = f'link {link}: {problem}'
        flags = self._device_flags if link == 'up' else 0
        if flags & StateFlag.FAULT:
            self.diagnostics.errors['rig'] = 'the rig reports FAULT (see last_device_error)'
        else:
            self.diagnostics.errors.pop('rig', None)
        if flags & StateFlag.COMMAND_TIMEOUT:
            self.diagnostics.warnings['rig'] = 'no fresh command: the rig applies its safe command'
        else:
            self.diagnostics.warnings.pop('rig', None)

    # ------------------------------------------------------------------ shutdown

    def on_shutdown(self) -> None:
        """Leave the rig at rest: the zero command (clipped into the limits), then close."""
        if self._serial is not None:
            self._send_command(self._zero_command, None)

    def destroy_node(self) -> None:
        self._stop.set()
        if self._reader.is_alive():
            self._reader.join(timeout=2.0)
        super().destroy_node()


def _flag_names(flags: int) -> str:
    names = [flag.name for flag in StateFlag if flags & flag]
    return '|'.join(names) if names else 'none'


def main(args: list[str] | None = None) -> int:
    return run_node(SerialBridgeNode, args, name='serial_bridge')


if __name__ == '__main__':
    sys.exit(main())
