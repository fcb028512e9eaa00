"""The serial protocol between the rig bridge and a rig's microcontroller (firmware side too).

A physical rig talks to the graph through a byte stream (USB CDC, UART): the bridge node
sends commands and heartbeats, the rig answers with joint states. Bytes get lost and
flipped on such links and a device may be plugged in mid-stream, so every message travels
as one self-delimiting, checksummed, versioned frame:

``COBS(version u8 | type u8 | body | CRC-32 u32) | 0x00``

* COBS removes every 0x00 from the frame, so 0x00 only ever ends a frame: after any
  corruption the receiver is back in step at the next 0x00.
* CRC-32 (ISO-HDLC, the one of Ethernet and zlib) over version, type and body: a frame
  with a flipped bit is dropped, never turned into a joint state.
* Bodies are little-endian with fixed layouts (a count field sizes the arrays), joints are
  bounded by :data:`MAX_JOINTS`, frames by :data:`MAX_FRAME_SIZE`, so a firmware needs
  one static buffer.

``docs/rig_protocol.md`` is the specification for firmware authors; this module is its
reference implementation. Float values are IEEE-754 float32, which a Cortex-M4F computes in
hardware; messages quantise their values to float32 when built, so a decoded message
equals the one that was encoded.

Nothing here imports rclpy: the rig emulator and the unit tests use it without ROS.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
import enum
import struct
from typing import NamedTuple
import zlib

__all__ = [
    'PROTOCOL_VERSION',
    'MAX_JOINTS',
    'MAX_ERROR_TEXT',
    'MAX_PAYLOAD_SIZE',
    'MAX_ENCODED_SIZE',
    'MAX_FRAME_SIZE',
    'DROP_REASONS',
    'MessageType',
    'CommandMode',
    'StateFlag',
    'ResetFlag',
    'ErrorCode',
    'State',
    'Command',
    'Heartbeat',
    'Error',
    'Reset',
    'Message',
    'FrameError',
    'Drop',
    'crc32',
    'cobs_encode',
    'cobs_decode',
    'encode',
    'decode_frame',
    'FrameDecoder',
    'frames',
]

PROTOCOL_VERSION = 1
# Joints (and command channels) per message: 16 covers a humanoid arm pair; a STATE frame
# with 16 joints and efforts is 213 payload bytes.
MAX_JOINTS = 16
# ERROR text, in UTF-8 bytes.
MAX_ERROR_TEXT = 200
# version + type + body + CRC, before COBS. COBS adds one byte per 254 (so one here), the
# delimiter one more: a whole frame fits a 256-byte buffer.
MAX_PAYLOAD_SIZE = 250
MAX_ENCODED_SIZE = MAX_PAYLOAD_SIZE + 1
MAX_FRAME_SIZE = MAX_ENCODED_SIZE + 1

# Why the decoder dropped a frame (the keys of FrameDecoder.dropped).
DROP_REASONS = (
    'oversize',  # more than MAX_ENCODED_SIZE bytes without a delimiter
    'cobs',  # not valid COBS (a code byte points past the end, or a 0x00 inside)
    'length',  # payload too short, or its size does not match the type's layout
    'crc',  # CRC-32 mismatch
    'version',  # a protocol version this implementation does not speak
    'unknown_type',  # a message type this version does not define
    'field',  # a field out of its allowed range (joint count, mode, effort count)
    'internal_error',  # a bug in this decoder; the tests require it to stay zero
)

_HEADER = struct.Struct('<BB')  # version, type
_CRC = struct.Struct('<I')
_STATE = struct.Struct('<QIHBB')  # device_time_us, command_sequence, flags, joints, efforts
_COMMAND = struct.Struct('<IBB')  # sequence, mode, count
_HEARTBEAT = struct.Struct('<IQ')  # sequence, time_us
_ERROR = struct.Struct('<HB')  # code, text length
_RESET = struct.Struct('<IB')  # sequence, flags
_U8, _U16, _U32, _U64 = 0xFF, 0xFFFF, 0xFFFF_FFFF, 0xFFFF_FFFF_FFFF_FFFF


class MessageType(enum.IntEnum):
    STATE = 0x01  # rig -> host
    COMMAND = 0x02  # host -> rig
    HEARTBEAT = 0x03  # both ways
    ERROR = 0x04  # rig -> host (a host may send it too)
    RESET = 0x05  # host -> rig: start a new episode (answered by STATE flags)


class CommandMode(enum.IntEnum):
    """What COMMAND values mean: joint efforts (N·m, N), velocities or positions."""

    EFFORT = 0
    VELOCITY = 1
    POSITION = 2


class StateFlag(enum.IntFlag):
    """Bits of STATE.flags; bits not listed are reserved: sent as 0, ignored on receipt."""

    COMMAND_TIMEOUT = 0x0001  # no fresh command: the rig applies its safe (zero) command
    FAULT = 0x0002  # the rig is in a fault state (details in ERROR messages)
    LIMIT = 0x0004  # a command was clipped to the rig's own limits
    HOST_LOST = 0x0008  # no host HEARTBEAT within the rig's host timeout
    SIMULATED = 0x0010  # the data come from an emulator, not hardware
    # command_sequence of these two STATEs echoes the RESET's sequence (no command applied).
    EPISODE_START = 0x0020  # the first state after a RESET: the rig is at its start state
    RESETTING = 0x0040  # the rig runs its reset (homing) routine; commands are ignored


class ResetFlag(enum.IntFlag):
    """Bits of RESET.flags; bits not listed are reserved: sent as 0, ignored on receipt."""

    # Start from a random state drawn by the rig (as a simulator's reset does); without it
    # the rig goes to its home state, at rest (a pendulum hanging down).
    RANDOM_START = 0x01


class ErrorCode(enum.IntEnum):
    """ERROR.code values; 0x8000 and above are free for a rig's own codes."""

    UNSPECIFIED = 0
    UNSUPPORTED_MODE = 1  # COMMAND mode the rig does not implement
    BAD_COMMAND = 2  # wrong channel count or a non-finite value
    COMMAND_TIMEOUT = 3  # commands stopped; safe command applied
    FAULT = 4  # hardware fault (driver, encoder, end stop)
    CORRUPT_FRAMES = 5  # the rig dropped corrupt frames from the host


def _float32(values: Iterable[float], where: str) -> tuple[float, ...]:
    """The values as float32 (returned as Python floats), or ValueError if out of range."""
    values = tuple(float(v) for v in values)
    try:
        return struct.unpack(f'<{len(values)}f', struct.pack(f'<{len(values)}f', *values))
    except (OverflowError, struct.error) as error:
        raise ValueError(f'{where}: a value is outside the float32 range ({error})') from None


def _unsigned(value: int, limit: int, where: str) -> int:
    if isinstance(value, bool) or int(value) != value or not 0 <= value <= limit:
        raise ValueError(f'{where}: {value!r} is not an integer in [0, {limit}]')
    return int(value)


@dataclass(frozen=True)
class State:
    """One sample of the rig's joints (rig -> host).

    Attributes
    ----------
    device_time_us : int
        Rig clock at the sample, µs (u64, monotonic; restarts at a reboot).
    positions, velocities : tuple of float, length n (1 <= n <= MAX_JOINTS)
        Joint positions (rad or m) and velocities (rad/s or m/s), float32.
    efforts : tuple of float, length n or 0
        Applied or measured joint efforts (N·m or N); empty when the rig does not know them.
    flags : int
        :class:`StateFlag` bits (u16).
    command_sequence : int
        Sequence number of the COMMAND applied at this sample, 0 when the safe command was
        applied: the host measures the command round trip with it.
    """

    device_time_us: int
    positions: tuple[float, ...]
    velocities: tuple[float, ...]
    efforts: tuple[float, ...] = ()
    flags: int = 0
    command_sequence: int = 0

    def __post_init__(self) -> None:
        n = len(self.positions)
        if not 1 <= n <= MAX_JOINTS:
            raise ValueError(f'STATE: {n} joints, allowed 1..{MAX_JOINTS}')
        if len(self.velocities) != n:
            raise ValueError(f'STATE: {n} positions but {len(self.velocities)} velocities')
        if len(self.efforts) not in (0, n):
            raise ValueError(f'STATE: {len(self.efforts)} efforts, expected 0 or {n}')
        _set = object.__setattr__
        _set(self, 'device_time_us', _unsigned(self.device_time_us, _U64, 'STATE.device_time_us'))
        _set(self, 'flags', _unsigned(self.flags, _U16, 'STATE.flags'))
        _set(
            self,
            'command_sequence',
            _unsigned(self.command_sequence, _U32, 'STATE.command_sequence'),
        )
        _set(self, 'positions', _float32(self.positions, 'STATE.positions'))
        _set(self, 'velocities', _float32(self.velocities, 'STATE.velocities'))
        _set(self, 'efforts', _float32(self.efforts, 'STATE.efforts'))


@dataclass(frozen=True)
class Command:
    """Set points for the rig's actuators (host -> rig).

    Attributes
    ----------
    sequence : int
        Increases by one per command (u32); echoed in STATE.command_sequence.
    values : tuple of float, length m (1 <= m <= MAX_JOINTS)
        One value per command channel, float32, in the unit of ``mode``.
    mode : int
        :class:`CommandMode`.
    """

    sequence: int
    values: tuple[float, ...]
    mode: int = CommandMode.EFFORT

    def __post_init__(self) -> None:
        m = len(self.values)
        if not 1 <= m <= MAX_JOINTS:
            raise ValueError(f'COMMAND: {m} values, allowed 1..{MAX_JOINTS}')
        if self.mode not in CommandMode._value2member_map_:
            raise ValueError(f'COMMAND: unknown mode {self.mode!r}')
        object.__setattr__(self, 'mode', CommandMode(self.mode))
        object.__setattr__(self, 'sequence', _unsigned(self.sequence, _U32, 'COMMAND.sequence'))
        object.__setattr__(self, 'values', _float32(self.values, 'COMMAND.values'))


@dataclass(frozen=True)
class Heartbeat:
    """Proof of life, both ways; ``time_us`` is the sender's monotonic clock in µs."""

    sequence: int
    time_us: int

    def __post_init__(self) -> None:
        object.__setattr__(self, 'sequence', _unsigned(self.sequence, _U32, 'HEARTBEAT.sequence'))
        object.__setattr__(self, 'time_us', _unsigned(self.time_us, _U64, 'HEARTBEAT.time_us'))


@dataclass(frozen=True)
class Error:
    """A problem the rig reports (code from :class:`ErrorCode`, UTF-8 text, bounded)."""

    code: int
    text: str = ''

    def __post_init__(self) -> None:
        object.__setattr__(self, 'code', _unsigned(self.code, _U16, 'ERROR.code'))
        size = len(self.text.encode('utf-8'))
        if size > MAX_ERROR_TEXT:
            raise ValueError(f'ERROR: text of {size} bytes, at most {MAX_ERROR_TEXT}')

    @classmethod
    def truncated(cls, code: int, text: str) -> Error:
        """An ERROR whose text is cut (at a character boundary) to fit the limit."""
        data = text.encode('utf-8')[:MAX_ERROR_TEXT]
        return cls(code, data.decode('utf-8', errors='ignore'))


@dataclass(frozen=True)
class Reset:
    """End the episode and bring the rig to a start state (host -> rig).

    Attributes
    ----------
    sequence : int
        Taken from the COMMAND sequence (u32, the host's one counter for both): the rig
        echoes it in ``STATE.command_sequence`` while ``RESETTING`` and in the
        ``EPISODE_START`` STATE, so the host knows which RESET a STATE answers.
    flags : int
        :class:`ResetFlag` bits (u8).
    """

    sequence: int
    flags: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, 'sequence', _unsigned(self.sequence, _U32, 'RESET.sequence'))
        object.__setattr__(self, 'flags', _unsigned(self.flags, _U8, 'RESET.flags'))


Message = State | Command | Heartbeat | Error | Reset


# --------------------------------------------------------------------------- CRC and COBS


def crc32(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """CRC-32/ISO-HDLC: poly 0x04C11DB7 reflected (0xEDB88320), init and xorout 0xFFFFFFFF.

    ``crc32(b'123456789') == 0xCBF43926``. ``crc`` continues an earlier result, so the CRC
    of a message can be computed piece by piece. zlib computes this very CRC, bit for bit
    what the loop in ``docs/rig_protocol.md`` or an MCU's CRC unit gives a firmware.
    """
    return zlib.crc32(data, crc)


def cobs_encode(data: bytes | bytearray) -> bytes:
    """Consistent Overhead Byte Stuffing: ``data`` without any 0x00, one byte longer per 254.

    Written out here because it is the reference a firmware ports (the standard library has
    no COBS). Each 0x00 of the input (and the end) closes a group; a group is written as
    its length + 1 followed by its non-zero bytes; a group of 254 non-zero bytes (code
    0xFF) is not followed by an implied zero.
    """
    out = bytearray()
    for run in bytes(data).split(b'\x00'):
        while len(run) >= 254:
            out.append(0xFF)
            out += run[:254]
            run = run[254:]
        out.append(len(run) + 1)
        out += run
    return bytes(out)


def cobs_decode(data: bytes | bytearray) -> bytes | None:
    """The inverse of :func:`cobs_encode`; None when ``data`` is not valid COBS."""
    out = bytearray()
    index = 0
    size = len(data)
    while index < size:
        code = data[index]
        if code == 0:
            return None
        end = index + code
        if end > size:
            return None
        group = data[index + 1 : end]
        if 0 in group:
            return None
        out += group
        index = end
        if code != 0xFF and index < size:
            out.append(0)
    return bytes(out)


# --------------------------------------------------------------------------- frames


def _body(message: Message) -> tuple[int, bytes]:
    if isinstance(message, State):
        n, e = len(message.positions), len(message.efforts)
        values = message.positions + message.velocities + message.efforts
        return MessageType.STATE, _STATE.pack(
            message.device_time_us, message.command_sequence, message.flags, n, e
        ) + struct.pack(f'<{len(values)}f', *values)
    if isinstance(message, Command):
        m = len(message.values)
        return MessageType.COMMAND, _COMMAND.pack(message.sequence, message.mode, m) + struct.pack(
            f'<{m}f', *message.values
        )
    if isinstance(message, Heartbeat):
        return MessageType.HEARTBEAT, _HEARTBEAT.pack(message.sequence, message.time_us)
    if isinstance(message, Error):
        text = message.text.encode('utf-8')
        return MessageType.ERROR, _ERROR.pack(message.code, len(text)) + text
    if isinstance(message, Reset):
        return MessageType.RESET, _RESET.pack(message.sequence, message.flags)
    raise TypeError(f'not a rig protocol message: {type(message).__name__}')


def encode(message: Message) -> bytes:
    """The wire frame of ``message``: COBS-encoded payload and the 0x00 delimiter."""
    kind, body = _body(message)
    payload = _HEADER.pack(PROTOCOL_VERSION, kind) + body
    payload += _CRC.pack(crc32(payload))
    return cobs_encode(payload) + b'\x00'


class FrameError(Exception):
    """A frame that must be dropped: ``reason`` (one of DROP_REASONS) and ``detail``."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f'{reason}: {detail}')
        self.reason = reason
        self.detail = detail


def _expect_size(kind: str, size: int, expected: int) -> None:
    if size != expected:
        raise FrameError('length', f'{kind} body of {size} bytes, its layout needs {expected}')


def _parse(kind: int, body: bytes) -> Message:
    size = len(body)
    if kind == MessageType.STATE:
        if size < _STATE.size:
            raise FrameError('length', f'STATE body of {size} bytes, header needs {_STATE.size}')
        time_us, sequence, flags, n, e = _STATE.unpack_from(body)
        if not 1 <= n <= MAX_JOINTS:
            raise FrameError('field', f'STATE with {n} joints, allowed 1..{MAX_JOINTS}')
        if e not in (0, n):
            raise FrameError('field', f'STATE with {e} efforts for {n} joints')
        _expect_size('STATE', size, _STATE.size + 4 * (2 * n + e))
        values = struct.unpack_from(f'<{2 * n + e}f', body, _STATE.size)
        return State(time_us, values[:n], values[n : 2 * n], values[2 * n :], flags, sequence)
    if kind == MessageType.COMMAND:
        if size < _COMMAND.size:
            raise FrameError('length', f'COMMAND body of {size} bytes')
        sequence, mode, m = _COMMAND.unpack_from(body)
        if mode not in CommandMode._value2member_map_:
            raise FrameError('field', f'COMMAND with unknown mode {mode}')
        if not 1 <= m <= MAX_JOINTS:
            raise FrameError('field', f'COMMAND with {m} values, allowed 1..{MAX_JOINTS}')
        _expect_size('COMMAND', size, _COMMAND.size + 4 * m)
        return Command(sequence, struct.unpack_from(f'<{m}f', body, _COMMAND.size), mode)
    if kind == MessageType.HEARTBEAT:
        _expect_size('HEARTBEAT', size, _HEARTBEAT.size)
        return Heartbeat(*_HEARTBEAT.unpack(body))
    if kind == MessageType.ERROR:
        if size < _ERROR.size:
            raise FrameError('length', f'ERROR body of {size} bytes')
        code, length = _ERROR.unpack_from(body)
        if length > MAX_ERROR_TEXT:
            raise FrameError('field', f'ERROR text of {length} bytes, at most {MAX_ERROR_TEXT}')
        _expect_size('ERROR', size, _ERROR.size + length)
        try:
            text = body[_ERROR.size :].decode('utf-8')
        except UnicodeDecodeError as error:
            raise FrameError('field', f'ERROR text is not UTF-8 ({error.reason})') from None
        return Error(code, text)
    if kind == MessageType.RESET:
        _expect_size('RESET', size, _RESET.size)
        return Reset(*_RESET.unpack(body))
    raise FrameError('unknown_type', f'message type 0x{kind:02x}')


def decode_frame(encoded: bytes | bytearray) -> Message:
    """One frame's message, from its COBS bytes (between two delimiters, none included).

    Raises
    ------
    FrameError
        With the reason (one of :data:`DROP_REASONS`) the frame must be dropped.
    """
    if len(encoded) > MAX_ENCODED_SIZE:
        raise FrameError('oversize', f'{len(encoded)} bytes, at most {MAX_ENCODED_SIZE}')
    payload = cobs_decode(encoded)
    if payload is None:
        raise FrameError('cobs', f'{len(encoded)} bytes are not valid COBS')
    minimum = _HEADER.size + _CRC.size
    if len(payload) < minimum:
        raise FrameError('length', f'payload of {len(payload)} bytes, at least {minimum}')
    (received,) = _CRC.unpack_from(payload, len(payload) - _CRC.size)
    computed = crc32(memoryview(payload)[: -_CRC.size])
    if received != computed:
        raise FrameError('crc', f'CRC 0x{received:08x}, computed 0x{computed:08x}')
    version, kind = _HEADER.unpack_from(payload)
    if version != PROTOCOL_VERSION:
        raise FrameError('version', f'protocol version {version}, this side speaks 1')
    return _parse(kind, payload[_HEADER.size : -_CRC.size])


class Drop(NamedTuple):
    reason: str
    detail: str


class FrameDecoder:
    """Turns a byte stream, fed in chunks of any size, into messages; drops bad frames.

    :meth:`feed` never raises on bad input: a corrupt, oversize, truncated, unknown or
    wrong-version frame is counted in :attr:`dropped` under its reason (one of
    :data:`DROP_REASONS`), remembered in :attr:`recent_drops` and skipped; decoding goes on
    at the next 0x00.

    Parameters
    ----------
    synchronised : bool
        False when the stream may start in the middle of a frame (a port just opened on a
        rig that is already sending): bytes up to the first 0x00 are then discarded
        without counting a drop (:attr:`skipped_bytes` counts them).
    on_drop : callable(reason, detail), optional
        Called for each dropped frame (e.g. to count and log it in diagnostics).
    """

    def __init__(
        self,
        synchronised: bool = True,
        on_drop: Callable[[str, str], None] | None = None,
        recent: int = 32,
    ) -> None:
        self.dropped: Counter[str] = Counter()
        self.accepted = 0
        self.skipped_bytes = 0
        self.recent_drops: deque[Drop] = deque(maxlen=recent)
        self._on_drop = on_drop
        self._buffer = bytearray()
        self._synchronised = synchronised
        self._overflowed = False  # inside an oversize frame: discard up to the next 0x00

    @property
    def total_dropped(self) -> int:
        return sum(self.dropped.values())

    def _drop(self, reason: str, detail: str) -> None:
        self.dropped[reason] += 1
        self.recent_drops.append(Drop(reason, detail))
        if self._on_drop is not None:
            self._on_drop(reason, detail)

    def _take(self, chunk: bytes) -> None:
        """Add bytes of the current frame (no delimiter among them)."""
        if not self._synchronised:
            self.skipped_bytes += len(chunk)
            return
        if self._overflowed:
            return
        self._buffer += chunk
        if len(self._buffer) > MAX_ENCODED_SIZE:
            self._drop('oversize', f'more than {MAX_ENCODED_SIZE} bytes without a delimiter')
            self._buffer.clear()
            self._overflowed = True

    def _end_frame(self, messages: list[Message]) -> None:
        if not self._synchronised:
            self._synchronised = True
            return
        if self._overflowed:
            self._overflowed = False
            return
        if not self._buffer:
            return  # an empty frame: a sender's leading delimiter, not an error
        encoded = bytes(self._buffer)
        self._buffer.clear()
        try:
            messages.append(decode_frame(encoded))
            self.accepted += 1
        except FrameError as error:
            self._drop(error.reason, error.detail)
        except Exception as error:  # noqa: BLE001 - feed() must never raise on bad input
            self._drop('internal_error', f'{type(error).__name__}: {error}')

    def feed(self, data: bytes | bytearray | memoryview) -> list[Message]:
        """Decode the complete frames that ``data`` finishes; keep the rest for later.

        Returns
        -------
        list of Message
            In stream order; empty when no frame ended in ``data``.
        """
        data = bytes(data)
        messages: list[Message] = []
        start = 0
        while True:
            end = data.find(0, start)
            if end < 0:
                if start < len(data):
                    self._take(data[start:])
                return messages
            if end > start:
                self._take(data[start:end])
            self._end_frame(messages)
            start = end + 1

    def reset(self, synchronised: bool = False) -> None:
        """Forget a partial frame (e.g. after reopening the port); counters are kept."""
        self._buffer.clear()
        self._overflowed = False
        self._synchronised = synchronised


def frames(messages: Sequence[Message]) -> bytes:
    """The wire bytes of several messages, in order (a convenience for tests and tools)."""
    return b''.join(encode(message) for message in messages)
