"""The host's end of a rig's serial link: the port, the reader thread, frames, the rig clock.

:class:`SerialLink` is the serial bridge's driver, without ROS:

* A reader thread opens the port (pyserial, exclusive), reads and decodes frames. While the
  port cannot be opened, or after it vanished (USB unplugged), it is reopened with a wait
  that doubles from ``reconnect_min`` to ``reconnect_max`` and starts again from
  ``reconnect_min`` once a valid frame arrived. A HEARTBEAT goes out every
  ``heartbeat_period``, from this thread: a reset service call may hold the node's
  executor while the rig homes.
* Corrupt, unknown or malformed frames are dropped and counted (``rejected.frame_<reason>``),
  never used. HEARTBEATs and ERRORs are counted (the last ERROR kept); a STATE whose joint
  count is wrong, with a non-finite value, or whose device time is not after the last one
  is refused (``rejected.state_<reason>``). A device time more than :data:`RESTART_US`
  back is a rig restart: the clock mapping starts anew.
* A valid STATE is stamped with the rig's clock mapped onto the host's
  (:class:`DeviceClock`), and handed on; it is *settled* once ``clock_warmup`` STATEs have
  settled the offset. The rig echoes the sequence of the COMMAND it applied, which gives
  the command round trip (``command_round_trip_ms``).
* :meth:`SerialLink.watch` says how the link is for /diagnostics: ERROR while the port is
  closed or no valid frame came for ``link_timeout`` (so nobody mistakes silence for a
  still rig), and the rig's own FAULT and COMMAND_TIMEOUT flags.

What it counts and reports goes to a :class:`Report`: the node's
:class:`~sindyrl_ros.ros.diagnostics.Diagnostics`, or a :class:`Tally` without ROS.
"""

from __future__ import annotations

from collections.abc import Callable
import math
import threading
import time
from typing import Any, Protocol

from sindyrl_ros.hardware.ports import open_rig_port
from sindyrl_ros.hardware.protocol import (
    DROP_REASONS,
    Command,
    Error,
    FrameDecoder,
    Heartbeat,
    Message,
    State,
    StateFlag,
    encode,
)

__all__ = [
    'LINK_COUNTERS',
    'LINK_REJECTS',
    'RESTART_US',
    'DeviceClock',
    'LinkHandler',
    'Logger',
    'Report',
    'SerialLink',
    'Tally',
    'flag_names',
]

# A device time that goes back by more than this is a rig restart, not a reordered frame.
RESTART_US = 1_000_000
LINK_COUNTERS = (
    'connects',
    'frames',
    'heartbeats_received',
    'device_errors',
    'device_restarts',
    'heartbeats_sent',
    'write_failures',
)
LINK_REJECTS = (
    *(f'frame_{reason}' for reason in DROP_REASONS),
    'frame_unexpected_type',
    'state_joint_count',
    'state_nonfinite',
    'state_out_of_order',
)
# Commands whose send time is kept for the round trip (older ones the rig never echoed).
_TIMED_COMMANDS = 64


class Report(Protocol):
    """Where a link and a bridge count and report: what the node's Diagnostics offers."""

    counters: dict[str, int]
    warnings: dict[str, str]
    errors: dict[str, str]

    def increment(self, key: str, amount: int = 1) -> None: ...

    def set(self, key: str, value: Any) -> None: ...

    def reject(self, reason: str, detail: str) -> None: ...


class Logger(Protocol):
    """rclpy's node logger or a :class:`logging.Logger`."""

    def info(self, message: str) -> None: ...

    def warning(self, message: str) -> None: ...

    def error(self, message: str) -> None: ...


class Tally:
    """A :class:`Report` without ROS: counters, values, warnings and errors in dicts.

    ``rejects`` keeps the detail of every refused input, by reason.
    """

    def __init__(self) -> None:
        self.counters: dict[str, int] = {}
        self.values: dict[str, Any] = {}
        self.warnings: dict[str, str] = {}
        self.errors: dict[str, str] = {}
        self.rejects: dict[str, list[str]] = {}

    def increment(self, key: str, amount: int = 1) -> None:
        self.counters[key] = self.counters.get(key, 0) + amount

    def set(self, key: str, value: Any) -> None:
        self.values[key] = value

    def reject(self, reason: str, detail: str) -> None:
        self.increment(f'rejected.{reason}')
        self.rejects.setdefault(reason, []).append(detail)


def flag_names(flags: int) -> str:
    """``'COMMAND_TIMEOUT|SIMULATED'``: the names of the :class:`StateFlag` bits set."""
    names = [flag.name for flag in StateFlag if flags & flag]
    return '|'.join(names) if names else 'none'


class DeviceClock:
    """Maps the rig's clock (µs) onto the host's (ns) from the times frames arrive.

    Each frame gives ``offset = host receive time - device time`` = true offset + transport
    delay (>= 0). The estimate follows the smallest offsets (least delayed frames) at once
    and rises towards larger ones by at most ``slew_ppm`` of the device time elapsed, so it
    tracks a clock drift up to that rate in either direction while a burst of late frames
    moves it by microseconds only. A mapped time is never later than the arrival of the
    frame that produced it.

    Parameters
    ----------
    slew_ppm : float
        Fastest drift followed upwards, parts per million (crystals: tens; RC oscillators:
        up to 1e4).
    """

    def __init__(self, slew_ppm: float = 1000.0) -> None:
        if not (math.isfinite(slew_ppm) and slew_ppm >= 0):
            raise ValueError(f'slew_ppm must be a non-negative number, got {slew_ppm!r}')
        self.slew = slew_ppm * 1e-6
        self.reset()

    def reset(self) -> None:
        """Forget the estimate (the rig restarted, or a new link)."""
        self.offset_ns: int | None = None
        self.samples = 0
        self._last_device_us: int | None = None

    def update(self, device_time_us: int, host_time_ns: int) -> int:
        """Take a frame's device time and host receive time; return its host time (ns).

        The device time must not decrease between calls (call :meth:`reset` after a rig
        restart).
        """
        observed = int(host_time_ns) - int(device_time_us) * 1000
        if self.offset_ns is None or self._last_device_us is None:
            self.offset_ns = observed
        else:
            elapsed_ns = max(0, int(device_time_us) - self._last_device_us) * 1000
            if observed <= self.offset_ns:
                self.offset_ns = observed
            else:
                self.offset_ns = min(observed, self.offset_ns + int(self.slew * elapsed_ns))
        self._last_device_us = int(device_time_us)
        self.samples += 1
        return int(device_time_us) * 1000 + self.offset_ns

    def to_host_ns(self, device_time_us: int) -> int:
        """Host time (ns) of a device time, with the current estimate."""
        if self.offset_ns is None:
            raise ValueError('no frame received yet: the clock offset is unknown')
        return int(device_time_us) * 1000 + self.offset_ns


class LinkHandler(Protocol):
    """What the link tells its owner (the bridge), from the reader thread."""

    def on_open(self) -> None:
        """The port opened: nothing received before belongs to what comes now."""

    def on_close(self) -> None:
        """The port closed (lost, or the link stopped)."""

    def on_restart(self) -> None:
        """The rig's clock went back: it restarted."""

    def on_poll(self) -> None:
        """Once per pass of the reader thread (at least every 50 ms while the port is open)."""

    def on_state(self, state: State, stamp_ns: int, settled: bool) -> None:
        """A valid STATE, its host stamp, and whether the clock mapping has settled."""


class SerialLink:
    """The host's end of a rig's serial port (module docstring).

    Parameters
    ----------
    settings
        Attributes ``port``, ``baud``, ``reconnect_min``, ``reconnect_max``,
        ``heartbeat_period``, ``link_timeout``, ``clock_warmup``, ``clock_slew_ppm`` (the
        node's parameter values, read when used, so that run-time changes apply).
    joint_count : int
        Joints a STATE must carry.
    handler : LinkHandler
    report : Report
    log : Logger
    clock_ns : callable () -> int
        Host time now, ns (the node's clock): a frame's arrival time.
    open_port : callable (path, baud) -> port
        Opens the port (pyserial's interface: ``read``, ``write``, ``in_waiting``, ``close``).
    """

    def __init__(
        self,
        settings,
        joint_count: int,
        handler: LinkHandler,
        report: Report,
        log: Logger,
        clock_ns: Callable[[], int],
        open_port: Callable[[str, int], Any] = open_rig_port,
    ) -> None:
        self.settings = settings
        self.joint_count = joint_count
        self.handler = handler
        self.report = report
        self.log = log
        self._clock_ns = clock_ns
        self._open_port = open_port
        # Every counter exists from the start: the reader thread only changes values, so
        # the diagnostics timer never iterates a dict that grows under it.
        for key in LINK_COUNTERS:
            report.counters[key] = 0
        for reason in LINK_REJECTS:
            report.counters[f'rejected.{reason}'] = 0
        for key, value in (
            ('port', settings.port),
            ('link', 'disconnected'),
            ('clock_offset_s', 'unknown'),
            ('device_flags', 'none'),
            ('command_round_trip_ms', 'unknown'),
            ('last_device_error', 'none'),
        ):
            report.set(key, value)
        report.errors['link'] = f'port {settings.port} not open yet'
        self.clock = DeviceClock(settings.clock_slew_ppm)
        # Shared by the reader thread and the executor (plain attribute writes).
        self._serial = None
        self._write_lock = threading.Lock()
        self.port_error = 'not opened yet'
        self.last_frame_at: float | None = None
        self.device_flags = 0
        self.link = 'disconnected'
        self._decoder: FrameDecoder | None = None
        self._last_device_us: int | None = None
        self._backoff = settings.reconnect_min
        self._heartbeat_sequence = 0
        self._next_heartbeat = 0.0
        self._write_warned = -math.inf
        self._sent_at: dict[int, float] = {}  # command sequence -> monotonic send time
        self._sent_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read_loop, name='rig_reader', daemon=True)

    @property
    def is_open(self) -> bool:
        return self._serial is not None

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the reader thread; it closes the port."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=timeout)

    # ------------------------------------------------------------------ reader thread

    def _read_loop(self) -> None:
        while not self._stop.is_set():
            wait = self.run_once()
            if wait > 0:
                self._stop.wait(wait)
        self.close('bridge stopped')

    def run_once(self) -> float:
        """One pass of the reader thread: open, heartbeat, read and decode what came.

        Returns the seconds to wait before the next pass: the back-off after the port failed
        to open or was lost, else 0 (the read itself waits up to 50 ms for bytes).
        """
        s = self.settings
        self.handler.on_poll()
        if self._serial is None:
            try:
                port = self._open_port(s.port, s.baud)
            except Exception as error:  # noqa: BLE001 - missing, busy, permission
                self.port_error = f'cannot open {s.port}: {error}'
                return self._back_off()
            self._decoder = FrameDecoder(synchronised=False, on_drop=self._on_drop)
            self.clock.reset()
            self._last_device_us = None
            self.last_frame_at = None
            with self._write_lock:
                self._serial = port
                try:
                    port.write(b'\x00')  # ends any partial frame the rig holds
                except Exception:  # noqa: BLE001 - the read below reports a dead port
                    pass
            self.report.increment('connects')
            self.log.info(f'port {s.port} open')
            self.handler.on_open()
        port = self._serial
        if port is None:  # closed meanwhile (stop)
            return 0.0
        if time.monotonic() >= self._next_heartbeat:
            self._next_heartbeat = time.monotonic() + s.heartbeat_period
            self.send_heartbeat()
        try:
            data = port.read(port.in_waiting or 1)
        except Exception as error:  # noqa: BLE001 - SerialException, OSError (EIO)
            self.close(f'port {s.port} lost: {error}')
            self.log.error(f'port {s.port} lost: {error}')
            return self._back_off()
        if data:
            host_ns = self._clock_ns()
            for message in self._decoder.feed(data):
                self._on_message(message, host_ns)
                self._backoff = s.reconnect_min
        return 0.0

    def _back_off(self) -> float:
        """The wait before the next attempt; the one after it doubles, up to reconnect_max."""
        wait = self._backoff
        self._backoff = min(2.0 * wait, self.settings.reconnect_max)
        return wait

    def close(self, reason: str) -> None:
        with self._write_lock:
            port, self._serial = self._serial, None
        if port is not None:
            try:
                port.close()
            except Exception:  # noqa: BLE001 - a vanished device may fail to close
                pass
        self.port_error = reason
        self.handler.on_close()

    def _on_drop(self, reason: str, detail: str) -> None:
        self.report.reject(f'frame_{reason}', f'{self.settings.port}: {detail}')

    def _on_message(self, message: Message, host_ns: int) -> None:
        self.report.increment('frames')
        self.last_frame_at = time.monotonic()
        if isinstance(message, State):
            self._on_state(message, host_ns)
        elif isinstance(message, Heartbeat):
            self.report.increment('heartbeats_received')
        elif isinstance(message, Error):
            self.report.increment('device_errors')
            self.report.set('last_device_error', f'{message.code}: {message.text}')
            self.log.warning(f'rig error {message.code}: {message.text}')
        else:
            self.report.reject('frame_unexpected_type', f'{type(message).__name__} from the rig')

    def _on_state(self, state: State, host_ns: int) -> None:
        """Refuse a bad STATE; map its time onto the host's and hand it on."""
        n = self.joint_count
        if len(state.positions) != n:
            self.report.reject(
                'state_joint_count',
                f'{len(state.positions)} joints in STATE, joint_names has {n}',
            )
            return
        values = state.positions + state.velocities + state.efforts
        if not all(math.isfinite(v) for v in values):
            self.report.reject('state_nonfinite', f'{state}')
            return
        device_us = state.device_time_us
        last = self._last_device_us
        if last is not None and device_us <= last:
            if last - device_us > RESTART_US:
                self.report.increment('device_restarts')
                self.log.warning('rig clock went back: rig restarted')
                self.clock.reset()
                self.handler.on_restart()
            else:
                self.report.reject(
                    'state_out_of_order', f'device time {device_us} µs after {last} µs'
                )
                return
        self._last_device_us = device_us
        stamp_ns = self.clock.update(device_us, host_ns)
        self.report.set('clock_offset_s', f'{self.clock.offset_ns * 1e-9:.6f}')
        self.device_flags = state.flags
        self.report.set('device_flags', flag_names(state.flags))
        with self._sent_lock:
            sent_at = self._sent_at.pop(state.command_sequence, None)
        if sent_at is not None:
            round_trip = (time.monotonic() - sent_at) * 1e3
            self.report.set('command_round_trip_ms', f'{round_trip:.2f}')
        settled = self.clock.samples > self.settings.clock_warmup
        self.handler.on_state(state, stamp_ns, settled)

    # ------------------------------------------------------------------ writing (any thread)

    def write(self, message: Message) -> bool:
        """Send one frame; False when the port is closed or the write failed (counted)."""
        frame = encode(message)
        with self._write_lock:
            port = self._serial
            if port is None:
                return False
            try:
                port.write(frame)
            except Exception as error:  # noqa: BLE001 - timeout, vanished device
                self.report.increment('write_failures')
                now = time.monotonic()
                if now - self._write_warned >= 2.0:
                    self._write_warned = now
                    self.log.warning(f'write to {self.settings.port} failed: {error}')
                return False
        if isinstance(message, Command):
            with self._sent_lock:
                self._sent_at[message.sequence] = time.monotonic()
                if len(self._sent_at) > _TIMED_COMMANDS:  # forget commands never echoed
                    for old in sorted(self._sent_at)[:-_TIMED_COMMANDS]:
                        del self._sent_at[old]
        return True

    def send_heartbeat(self) -> None:
        self._heartbeat_sequence = (self._heartbeat_sequence % 0xFFFF_FFFF) + 1
        beat = Heartbeat(self._heartbeat_sequence, time.monotonic_ns() // 1000)
        if self.write(beat):
            self.report.increment('heartbeats_sent')

    # ------------------------------------------------------------------ status (executor)

    def status(self, now: float) -> tuple[str, str | None]:
        """``(link, problem)``: 'disconnected', 'waiting', 'lost' with why, or ('up', None)."""
        s = self.settings
        if self._serial is None:
            return 'disconnected', self.port_error
        last = self.last_frame_at
        if last is None:
            return 'waiting', f'port {s.port} open, no valid frame yet'
        if now - last > s.link_timeout:
            return 'lost', f'no valid frame from {s.port} for {now - last:.2f} s'
        return 'up', None

    def watch(self) -> None:
        """Report the link (ERROR while it is not up) and the rig's FAULT/COMMAND_TIMEOUT."""
        link, problem = self.status(time.monotonic())
        if link != self.link:
            if problem is None:
                self.log.info(f'link to {self.settings.port} up')
            else:
                self.log.error(f'link {link}: {problem}')
            self.link = link
        self.report.set('link', link)
        if problem is None:
            self.report.errors.pop('link', None)
        else:
            self.report.errors['link'] = f'link {link}: {problem}'
        flags = self.device_flags if link == 'up' else 0
        if flags & StateFlag.FAULT:
            self.report.errors['rig'] = 'the rig reports FAULT (see last_device_error)'
        else:
            self.report.errors.pop('rig', None)
        if flags & StateFlag.COMMAND_TIMEOUT:
            self.report.warnings['rig'] = 'no fresh command: the rig applies its safe command'
        else:
            self.report.warnings.pop('rig', None)
