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
"""

from __future__ import annotations

import math
import sys
import threading
import time

import numpy as np
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from rclpy.parameter import Parameter
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray

from sindyrl_ros.core.rig_protocol import (
    DROP_REASONS,
    Command,
    CommandMode,
    DeviceClock,
    Error,
    FrameDecoder,
    Heartbeat,
    State,
    StateFlag,
    encode,
)
from sindyrl_ros.nodes.common import (
    RELIABLE_QOS,
    SENSOR_QOS,
    SHARED_PARAMETERS,
    Diagnostics,
    ParamSpec,
    check_parameter_files,
    configuration_error,
    declare_parameters,
    ns_to_stamp,
    run_node,
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


class SerialBridgeNode(Node):
    """The rig behind a serial port as /joint_states and a command topic (module docstring)."""

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
            'heartbeats_received',
            'device_errors',
            'device_restarts',
            'commands_sent',
            'commands_not_sent',
            'clipped_commands',
            'heartbeats_sent',
            'write_failures',
        ):
            self.diagnostics.counters[key] = 0
        for reason in (
            [f'frame_{r}' for r in DROP_REASONS]
            + ['frame_unexpected_type']
            + list(_STATE_REJECTS)
            + list(_COMMAND_REJECTS)
        ):
            self.diagnostics.counters[f'rejected.{reason}'] = 0
        for key, value in (
            ('port', p.port),
            ('link', 'disconnected'),
            ('clock_offset_s', 'unknown'),
            ('device_flags', 'none'),
            ('command_round_trip_ms', 'unknown'),
            ('last_device_error', 'none'),
        ):
            self.diagnostics.set(key, value)
        self.diagnostics.errors['link'] = f'port {p.port} not open yet'

        self._joint_publisher = self.create_publisher(JointState, 'joint_states', SENSOR_QOS)
        commands = self.create_subscription(
            Float64MultiArray, f'/{p.controller_name}/commands', self._on_command, RELIABLE_QOS
        )
        self._commands_topic = commands.topic_name

        # Shared with the reader thread (plain attribute writes; the GIL orders them).
        self._serial = None
        self._write_lock = threading.Lock()
        self._port_error = 'not opened yet'
        self._last_frame_at: float | None = None
        self._link = 'disconnected'
        self._command_sequence = 0
        self._heartbeat_sequence = 0
        self._sent_at: dict[int, float] = {}  # command sequence -> monotonic send time
        self._sent_lock = threading.Lock()
        self._device_clock = DeviceClock(p.clock_slew_ppm)
        self._last_device_us: int | None = None
        self._last_stamp_ns = -1
        self._device_flags = 0
        self._stop = threading.Event()
        self._reader = threading.Thread(target=self._read_loop, name='rig_reader', daemon=True)

        steady = Clock(clock_type=ClockType.STEADY_TIME)
        self.create_timer(p.heartbeat_period, self._send_heartbeat, clock=steady)
        self.create_timer(min(0.05, p.link_timeout / 4.0), self._watch_link, clock=steady)
        self._reader.start()
        self.get_logger().info(
            f'serial bridge: port {p.port} at {p.baud} baud, joints {self.joint_names}, '
            f'{p.command_mode} commands from {self._commands_topic} in '
            f'[{self.command_low.tolist()}, {self.command_high.tolist()}]'
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

    def _read_loop(self) -> None:
        """Open the port (backing off while it fails), read and decode until stopped.

        The wait before reopening doubles from ``reconnect_min`` to ``reconnect_max`` while
        attempts fail, and starts again from ``reconnect_min`` once a valid frame arrived.
        """
        p = self.parameters
        backoff = p.reconnect_min
        port = decoder = None
        while not self._stop.is_set():
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
        if self._device_clock.samples <= self.parameters.clock_warmup:
            self.diagnostics.increment('states_warmup')
            return
        if stamp_ns <= self._last_stamp_ns:
            self.diagnostics.reject(
                'state_out_of_order', f'mapped stamp {stamp_ns} ns not after the last'
            )
            return
        self._last_stamp_ns = stamp_ns
        message = JointState(name=self.joint_names)
        message.header.stamp = ns_to_stamp(stamp_ns)
        message.position = list(state.positions)
        message.velocity = list(state.velocities)
        message.effort = list(state.efforts)
        self._joint_publisher.publish(message)
        self.diagnostics.increment('states_published')

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
        self._send_command(clipped)

    def _send_command(self, values: np.ndarray) -> None:
        self._command_sequence = (self._command_sequence % 0xFFFF_FFFF) + 1
        sequence = self._command_sequence
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

    def _watch_link(self) -> None:
        """Link state for /diagnostics: ERROR while the port is closed or silent."""
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
            self._send_command(self._zero_command)

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
