"""A rig on a serial port: a task's physics behind the rig protocol, on a wall clock.

It stands in for a microcontroller rig, so the serial bridge, the protocol and the graph can
be tested end to end without hardware: it creates a pseudo-terminal (or opens ``--port``),
prints the path, and then behaves like firmware would:

* every control period (the task's dt on the wall clock, or dt / ``--speed``: a rig that
  runs faster than real time, for tests and dry runs) it applies the latest COMMAND (the
  zero command, clipped into the limits, when there is none or it is older than
  ``--command-timeout``), steps the environment and sends a STATE frame: per joint the
  position, velocity and applied effort, the sequence number of the applied command and
  status flags (``COMMAND_TIMEOUT``, ``LIMIT``, ``HOST_LOST``, always ``SIMULATED``),
  stamped with the scheduled sample time (a firmware samples on a timer interrupt);
* RESET: the environment is reset with the next seed (``--seed`` + the number of resets
  so far), the stored command is forgotten, ``--reset-periods`` STATEs of the held start
  state flagged ``RESETTING`` stand for a homing routine, then one flagged
  ``EPISODE_START``; both echo the RESET's sequence and ignore commands. A simulator has
  no home position: a RESET with or without ``RANDOM_START`` starts from the
  simulator's reset;
* HEARTBEAT frames every ``--heartbeat-period``; ERROR frames for commands it refuses;
* faults on demand: ``--latency`` (device -> host delay), ``--noise`` (sensor noise std),
  ``--drop-rate`` (frames never sent), ``--corrupt-rate`` (bytes replaced on the wire),
  ``--unplug-after`` or SIGUSR1 (the port disappears, like a pulled USB cable, and the
  emulator exits);
* ``--record`` writes every STATE it composed (as sent, before drops and corruption) as
  JSON lines, so a test can check that everything the host accepted was really sent.

Joints are mapped from the environment's observation as in the simulated plant:
``atan2(<sin name>, <cos name>)`` for an angle observed as a (cos, sin) pair, an
observation name otherwise; an effort is an action name or ``0`` for a passive joint.

Run: ``python -m sindyrl_ros.hardware.emulator --task pendulum`` (or ``sindyrl-ros
rig-emulator``). No rclpy here.
"""

from __future__ import annotations

import argparse
from collections import deque
from collections.abc import Sequence
import json
import math
import select
import signal
import sys
import threading
import time

import numpy as np

from sindyrl_ros.core.simulated_plant import JointMapping
from sindyrl_ros.hardware.ports import PtyPort, SerialPort, make_link, remove_link
from sindyrl_ros.hardware.protocol import (
    Command,
    CommandMode,
    Error,
    ErrorCode,
    FrameDecoder,
    Heartbeat,
    Reset,
    State,
    StateFlag,
    encode,
)
from sindyrl_ros.params import ParameterError

__all__ = ['DEFAULT_JOINTS', 'RigEmulator', 'build_parser', 'main']

# Per task: joint positions, velocities and efforts (same syntax as the plant's parameters).
DEFAULT_JOINTS = {
    'pendulum': {
        'positions': ['atan2(sin_theta, cos_theta)'],
        'velocities': ['theta_dot'],
        'efforts': ['torque'],
    },
    'cartpole_swingup': {
        'positions': ['cart_x', 'atan2(sin_theta, cos_theta)'],
        'velocities': ['cart_x_dot', 'theta_dot'],
        'efforts': ['force', '0'],
    },
}


def _effort_sources(specs: Sequence[str], action_names: Sequence[str]) -> list[int | None]:
    """Action index per joint, None for a passive joint ('0')."""
    sources: list[int | None] = []
    for spec in specs:
        spec = spec.strip()
        if spec in ('0', 'none', ''):
            sources.append(None)
        elif spec in action_names:
            sources.append(list(action_names).index(spec))
        else:
            raise ValueError(f"effort {spec!r} is not an action name {list(action_names)} nor '0'")
    return sources


class RigEmulator:
    """The firmware loop of an emulated rig (see the module docstring).

    Parameters
    ----------
    task : sindyrl_ros.core.tasks.TaskSpec
    port : PtyPort or SerialPort
    options : argparse.Namespace
        The parsed command line (:func:`build_parser`).
    """

    def __init__(self, task, port, options: argparse.Namespace) -> None:
        self.task = task
        self.port = port
        self.options = options
        defaults = DEFAULT_JOINTS.get(task.name, {})
        positions = options.joint_positions or defaults.get('positions')
        velocities = options.joint_velocities or defaults.get('velocities')
        efforts = options.joint_efforts or defaults.get('efforts') or ['0'] * len(positions or [])
        if not positions or not velocities:
            raise ValueError(
                f'task {task.name!r} has no default joints: give --joint-positions and '
                '--joint-velocities'
            )
        if not len(positions) == len(velocities) == len(efforts):
            raise ValueError('--joint-positions, --joint-velocities and --joint-efforts differ')
        try:  # the simulated plant's joint mapping
            self._joints = JointMapping(
                [f'joint_{i}' for i in range(len(positions))],
                positions,
                velocities,
                task.observation_names,
            )
        except ParameterError as error:
            raise ValueError(f'--{error.key.replace("_", "-")}: {error.problem}') from None
        self._efforts = _effort_sources(efforts, task.action_names)
        self.rng = np.random.default_rng(options.seed)
        self.env = task.make_env(seed=options.seed)
        observation, _ = self.env.reset(seed=options.seed)
        self.observation = np.asarray(observation, dtype=np.float64)
        self.zero_command = np.clip(np.zeros(task.action_dim), task.action_low, task.action_high)
        self.decoder = FrameDecoder(synchronised=False)
        self.stats = {
            'steps': 0,
            'states_sent': 0,
            'states_dropped': 0,
            'bytes_corrupted': 0,
            'tx_overflows': 0,
            'commands_received': 0,
            'commands_refused': 0,
            'heartbeats_received': 0,
            'command_timeouts': 0,
            'resets': 0,
            'host_resets': 0,
            'commands_ignored': 0,
            'overruns': 0,
        }
        self._command = self.zero_command.copy()
        self._command_sequence = 0
        self._command_at = -math.inf
        self._command_clipped = False
        self._host_heartbeat_at = -math.inf
        self._heartbeat_sequence = 0
        self._last_error_at: dict[int, float] = {}
        self._outbox: deque[tuple[float, bytes]] = deque()  # (due time, frame)
        # Host RESET: its sequence, RESETTING STATEs still to send, EPISODE_START still due.
        self._reset_sequence: int | None = None
        self._reset_left = 0
        self._start_due = False
        self.period = task.dt / options.speed  # wall seconds per control period
        self._record = open(options.record, 'w') if options.record else None  # noqa: SIM115
        self._start_ns = time.monotonic_ns()

    # ------------------------------------------------------------------ clocks

    def device_time_us(self, now_ns: int) -> int:
        """The rig's clock: µs since start-up, running fast or slow by --clock-drift-ppm.

        It is a wall clock also under ``--speed``: the rig then simply has a shorter
        control period (dt / speed), which the host is told (its ``control_period``).
        """
        elapsed_us = (now_ns - self._start_ns) / 1000.0
        return int(elapsed_us * (1.0 + self.options.clock_drift_ppm * 1e-6))

    # ------------------------------------------------------------------ outgoing

    def _send(self, frame: bytes, now: float) -> None:
        """Queue a frame for the wire after --latency, corrupting bytes at --corrupt-rate."""
        rate = self.options.corrupt_rate
        if rate > 0:
            data = np.frombuffer(frame, dtype=np.uint8).copy()
            hit = self.rng.random(data.size) < rate
            if hit.any():
                # Replace each hit byte by a different one (0x00 included: a broken frame).
                data[hit] = (data[hit] + self.rng.integers(1, 256, hit.sum())) % 256
                self.stats['bytes_corrupted'] += int(hit.sum())
                frame = data.tobytes()
        self._outbox.append((now + self.options.latency, frame))

    def _flush(self, now: float) -> None:
        while self._outbox and self._outbox[0][0] <= now:
            _, frame = self._outbox.popleft()
            if not self.port.write(frame):
                self.stats['tx_overflows'] += 1

    def _error(self, code: int, text: str, now: float) -> None:
        """Send an ERROR, at most one per code and second (a firmware must not flood)."""
        if now - self._last_error_at.get(code, -math.inf) >= 1.0:
            self._last_error_at[code] = now
            self._send(encode(Error.truncated(code, text)), now)

    # ------------------------------------------------------------------ incoming

    def _receive(self, data: bytes, now: float) -> None:
        for message in self.decoder.feed(data):
            if isinstance(message, Command):
                self._on_command(message, now)
            elif isinstance(message, Heartbeat):
                self.stats['heartbeats_received'] += 1
                self._host_heartbeat_at = now
            elif isinstance(message, Reset):
                self._on_reset(message)

    @property
    def resetting(self) -> bool:
        """Between a RESET and its EPISODE_START STATE: commands are ignored."""
        return self._reset_left > 0 or self._start_due

    def _on_reset(self, reset: Reset) -> None:
        """Start a new episode from the simulator's reset (the next seed)."""
        if reset.sequence == self._reset_sequence:
            return  # the host repeats a RESET whose answer it has not seen yet
        self._reset_sequence = reset.sequence
        self.stats['host_resets'] += 1
        observation, _ = self.env.reset(seed=self.options.seed + self.stats['host_resets'])
        self.observation = np.asarray(observation, dtype=np.float64)
        # A command sent before the reset must never move the rig after it.
        self._command = self.zero_command.copy()
        self._command_sequence = 0
        self._command_at = -math.inf
        self._command_clipped = False
        self._reset_left = self.options.reset_periods
        self._start_due = self._reset_left == 0

    def _on_command(self, command: Command, now: float) -> None:
        if self.resetting:
            self.stats['commands_ignored'] += 1
            return
        values = np.asarray(command.values, dtype=np.float64)
        if command.mode != CommandMode.EFFORT:
            self.stats['commands_refused'] += 1
            self._error(ErrorCode.UNSUPPORTED_MODE, f'mode {command.mode.name}: only EFFORT', now)
            return
        if values.shape != (self.task.action_dim,) or not np.all(np.isfinite(values)):
            self.stats['commands_refused'] += 1
            self._error(
                ErrorCode.BAD_COMMAND,
                f'{values.size} values {values.tolist()}: expected {self.task.action_dim} '
                'finite values',
                now,
            )
            return
        clipped = np.clip(values, self.task.action_low, self.task.action_high)
        self.stats['commands_received'] += 1
        self._command = clipped
        self._command_clipped = not np.array_equal(clipped, values)
        self._command_sequence = command.sequence
        self._command_at = now

    # ------------------------------------------------------------------ the control period

    def step(self, now: float, sample_time: float | None = None) -> State:
        """Apply the latest command for one period, step the physics, send the STATE.

        ``sample_time`` is the scheduled time of this period (monotonic seconds), which
        stamps the STATE; ``now`` by default. While resetting, the held start state is sent.
        """
        flags = StateFlag.SIMULATED
        if now - self._host_heartbeat_at > self.options.host_timeout:
            flags |= StateFlag.HOST_LOST
        if self.resetting:
            action, sequence = self.zero_command, self._reset_sequence
            if self._reset_left > 0:
                flags |= StateFlag.RESETTING
                self._reset_left -= 1
                self._start_due = self._reset_left == 0
            else:
                flags |= StateFlag.EPISODE_START
                self._start_due = False
        else:
            if now - self._command_at > self.options.command_timeout:
                action, sequence = self.zero_command, 0
                flags |= StateFlag.COMMAND_TIMEOUT
                self.stats['command_timeouts'] += 1
            else:
                action, sequence = self._command, self._command_sequence
                if self._command_clipped:
                    flags |= StateFlag.LIMIT
            observation, _, terminated, _, _ = self.env.step(action.copy())
            self.stats['steps'] += 1
            if terminated:  # a rig's operator puts it back; truncation means nothing here
                observation, _ = self.env.reset()
                self.stats['resets'] += 1
            self.observation = np.asarray(observation, dtype=np.float64)
        positions = np.array(self._joints.positions(self.observation))
        velocities = np.array(self._joints.velocities(self.observation))
        if self.options.noise > 0:
            positions += self.rng.normal(0.0, self.options.noise, positions.shape)
            velocities += self.rng.normal(0.0, self.options.noise, velocities.shape)
        efforts = [0.0 if i is None else float(action[i]) for i in self._efforts]
        sample_time = now if sample_time is None else sample_time
        state = State(
            device_time_us=self.device_time_us(int(sample_time * 1e9)),
            positions=tuple(positions),
            velocities=tuple(velocities),
            efforts=tuple(efforts),
            flags=int(flags),
            command_sequence=sequence,
        )
        if self._record is not None:
            self._record.write(
                json.dumps(
                    {
                        'device_time_us': state.device_time_us,
                        'positions': state.positions,
                        'velocities': state.velocities,
                        'efforts': state.efforts,
                        'command_sequence': state.command_sequence,
                        'flags': state.flags,
                    }
                )
                + '\n'
            )
            self._record.flush()
        if self.rng.random() < self.options.drop_rate:
            self.stats['states_dropped'] += 1
        else:
            self.stats['states_sent'] += 1
            self._send(encode(state), now)
        return state

    def run(self, stop: threading.Event, unplug: threading.Event | None = None) -> str:
        """The firmware loop until ``stop``, ``unplug``, --duration or --unplug-after.

        Returns why it ended: 'stopped', 'unplugged' or 'duration'.
        """
        unplug = unplug or threading.Event()
        options = self.options
        dt = self.period
        start = time.monotonic()
        next_step = start + dt
        next_heartbeat = start
        ends = [(options.unplug_after, 'unplugged'), (options.duration, 'duration')]
        ends = [(start + after, why) for after, why in ends if after is not None]
        self.port.write(b'\x00')  # ends whatever partial frame the host may hold
        while not stop.is_set():
            if unplug.is_set():
                return 'unplugged'
            now = time.monotonic()
            for end, why in ends:
                if now >= end:
                    return why
            if now >= next_step:
                # What came in before this sample is the firmware's already (a UART
                # interrupt takes bytes as they arrive): read it before applying a command,
                # so that this process being late does not make the host's answer late.
                self._drain()
                self.step(now, next_step)
                next_step += dt
                if now - next_step > 5 * dt:  # far behind (machine stalled): skip, count
                    self.stats['overruns'] += 1
                    next_step = now + dt
            if now >= next_heartbeat:
                self._heartbeat_sequence += 1
                beat = Heartbeat(
                    self._heartbeat_sequence, self.device_time_us(time.monotonic_ns())
                )
                self._send(encode(beat), now)
                next_heartbeat += options.heartbeat_period
                if now - next_heartbeat > 5 * options.heartbeat_period:
                    next_heartbeat = now + options.heartbeat_period
            self._flush(now)
            wake = min([next_step, next_heartbeat] + [end for end, _ in ends])
            if self._outbox:
                wake = min(wake, self._outbox[0][0])
            timeout = max(0.0, min(wake - time.monotonic(), 0.1))
            readable, _, _ = select.select([self.port.fileno()], [], [], timeout)
            if readable:
                data = self.port.read()
                if data:
                    self._receive(data, time.monotonic())
        return 'stopped'

    def _drain(self) -> None:
        """Take every byte waiting on the port, without blocking."""
        while select.select([self.port.fileno()], [], [], 0.0)[0]:
            data = self.port.read()
            if not data:
                return
            self._receive(data, time.monotonic())

    def close(self) -> None:
        if self._record is not None:
            self._record.close()
        self.env.close()


def _positive(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f'{text} is not a positive number')
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f'{text} is not a non-negative number')
    return value


def _periods(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f'{text} is not a whole number of periods >= 1')
    return value


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f'{text} is not a probability in [0, 1]')
    return value


def build_parser(prog: str = 'rig-emulator') -> argparse.ArgumentParser:
    """The emulator's command line (also used by ``sindyrl-ros rig-emulator``)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Emulate a microcontroller rig: a task's physics behind the sindyrl_ros "
        'rig protocol on a pseudo-terminal (or --port), in real time (or --speed times '
        'faster).',
    )
    parser.add_argument('--task', default='pendulum', help='task name (core.tasks.TASKS)')
    parser.add_argument(
        '--port',
        help='serial device to use instead of a new pseudo-terminal (the other end '
        'of a null-modem cable or socat pair)',
    )
    parser.add_argument('--baud', type=int, default=115200, help='baud rate with --port')
    parser.add_argument(
        '--link',
        help='also make this path a symlink to the port (replaced atomically; removed at '
        'exit): a stable name for the bridge, like /dev/serial/by-id/...',
    )
    parser.add_argument(
        '--seed',
        type=int,
        default=0,
        help='physics reset and fault seed; the k-th RESET from the host uses seed + k',
    )
    parser.add_argument(
        '--speed',
        type=_positive,
        default=1.0,
        help='run the physics this many times faster than real time: one step every '
        'dt / speed wall seconds (tell the host: its control_period is then dt / speed)',
    )
    parser.add_argument(
        '--reset-periods',
        type=_periods,
        default=10,
        help='control periods a RESET takes (the homing routine of a real rig): that many '
        'RESETTING STATEs before the EPISODE_START one (default: %(default)s)',
    )
    parser.add_argument(
        '--command-timeout',
        type=_positive,
        default=0.2,
        help='seconds after which the last command is stale and the zero command is applied',
    )
    parser.add_argument(
        '--host-timeout',
        type=_positive,
        default=1.0,
        help='seconds without a host heartbeat before STATE carries HOST_LOST',
    )
    parser.add_argument(
        '--heartbeat-period', type=_positive, default=0.1, help='seconds between HEARTBEATs'
    )
    parser.add_argument(
        '--latency', type=_non_negative, default=0.0, help='device -> host delay, seconds'
    )
    parser.add_argument(
        '--noise',
        type=_non_negative,
        default=0.0,
        help='sensor noise std added to positions and velocities',
    )
    parser.add_argument(
        '--drop-rate', type=_probability, default=0.0, help='probability a STATE is not sent'
    )
    parser.add_argument(
        '--corrupt-rate',
        type=_probability,
        default=0.0,
        help='probability each sent byte is replaced by another',
    )
    parser.add_argument(
        '--clock-drift-ppm',
        type=float,
        default=0.0,
        help='the device clock runs fast (+) or slow (-) by this many parts per million',
    )
    parser.add_argument(
        '--unplug-after',
        type=_non_negative,
        help='close the port after this many seconds, as if the cable were pulled, and exit',
    )
    parser.add_argument('--duration', type=_non_negative, help='exit after this many seconds')
    parser.add_argument(
        '--record', help='write every composed STATE (before drops/corruption) as JSON lines'
    )
    parser.add_argument(
        '--joint-positions',
        nargs='+',
        help="per joint: an observation name or 'atan2(<sin>, <cos>)' (default: per task)",
    )
    parser.add_argument(
        '--joint-velocities', nargs='+', help='per joint: an observation name (default: per task)'
    )
    parser.add_argument(
        '--joint-efforts',
        nargs='+',
        help="per joint: the action name driving it, or '0' (default: per task)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run until SIGINT/SIGTERM, --duration, --unplug-after or SIGUSR1 (unplug); exit code 0."""
    from sindyrl_ros.core.tasks import get_task

    options = build_parser().parse_args(argv)
    try:
        task = get_task(options.task)
    except KeyError as error:
        print(f'rig emulator: {error.args[0]}', file=sys.stderr)
        return 2
    port = SerialPort(options.port, options.baud) if options.port else PtyPort()
    try:
        emulator = RigEmulator(task, port, options)
    except ValueError as error:
        port.close()
        print(f'rig emulator: {error}', file=sys.stderr)
        return 2
    stop, unplug = threading.Event(), threading.Event()
    previous = {
        signum: signal.signal(signum, lambda *_: stop.set())
        for signum in (signal.SIGINT, signal.SIGTERM)
    }
    previous[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, lambda *_: unplug.set())
    if options.link:
        make_link(options.link, port.path)
    print(
        f'rig emulator ready: task {task.name}, dt {task.dt} s, '
        f'control period {emulator.period:.6g} s (speed {options.speed:g}), port {port.path}'
        + (f' (link {options.link})' if options.link else ''),
        flush=True,
    )
    why = 'error'
    try:
        why = emulator.run(stop, unplug)
    finally:
        if options.link:
            remove_link(options.link, port.path)
        port.close()
        emulator.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        print(f'rig emulator {why}: {json.dumps(emulator.stats)}', flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
