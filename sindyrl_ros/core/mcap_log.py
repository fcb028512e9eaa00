"""Durable recording of observations and actions as MCAP, and pairing them into transitions.

Real interactions are the scarce resource of SINDy-RL, so every observation, action and
reported reward the plant produced is kept on disk: a later run can refit from it
(``initial_log``) and an operator can inspect it in Foxglove or replay it with rosbag2.
The file is a plain ROS 2 MCAP file (profile ``ros2``, schema encoding ``ros2msg``,
message encoding ``cdr``, ``sensor_msgs/msg/JointState`` on the same topic names as on
the graph), written with ``mcap`` + ``mcap_ros2`` from the message definition text, so
this module needs no rclpy.

Chunks are completed and flushed to disk by :meth:`TransitionLogWriter.flush` (a node
calls it periodically), and :func:`read_transition_log` reads a file whose writer was
killed up to the last complete chunk instead of refusing it.

A killed writer leaves its file without the summary section and footer, and readers that
rely on the summary refuse such a file (the standard ``mcap.reader.make_reader`` raises
on it). So a long recording is split the way rosbag2 splits a bag:
:class:`SegmentedRecordingWriter` writes ``<directory>/session_<NNN>/segment_<NNNN>.mcap``,
one *session* per start of the graph (clocks may restart between starts, so stamps are
only ever compared within a session) and a new segment every ``segment_seconds``. Each
segment is a standalone file as above; every closed one is complete, so at most the open
segment of a killed session needs repair. :func:`recover_recording` rewrites such files
as complete MCAP files, in place and atomically; :func:`read_recording` reads a file, a
session or a whole recording; :func:`recorded_steps` counts the real plant steps a
recording holds.

A SINDy model x[k+1] = f(x[k], u[k]) is fitted on (observation k, action answering k,
observation k+1) triples. Messages can arrive out of order and some get lost, so
:class:`TransitionAssembler` pairs them by their stamps (an action carries the stamp of
the observation it answers), never by arrival order, and cuts trajectories at time gaps,
mode changes and plant resets. A reward the plant reports (``/sindyrl/reward``, stamped
like the action: with the observation the step started from) joins the transition of
that stamp, for tasks that learn their reward.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Sequence
import contextlib
from dataclasses import dataclass, field
import os
from pathlib import Path
import re
import stat
import struct
import tempfile
import time
from typing import BinaryIO
import zlib

from mcap.exceptions import EndOfFile, McapError
from mcap.opcode import Opcode
from mcap.records import Attachment, Channel, Header, McapRecord, Message, Metadata, Schema
from mcap.stream_reader import CRCValidationError, StreamReader
from mcap.well_known import MessageEncoding, SchemaEncoding
from mcap.writer import MCAP0_MAGIC
from mcap.writer import Writer as McapWriter
from mcap_ros2.decoder import DecoderFactory
from mcap_ros2.writer import Writer as Ros2Writer
import numpy as np

from sindyrl_ros.core.trajectories import Trajectory

try:  # POSIX: a live writer holds a lock on its open file, so recovery leaves it alone
    import fcntl
except ImportError:  # pragma: no cover (Windows)
    fcntl = None

__all__ = [
    'ACTION_TOPIC',
    'EXPLORE',
    'EVALUATE',
    'JOINT_STATE_SCHEMA',
    'JOINT_STATE_TYPE',
    'MAX_SEGMENT_BYTES',
    'OBSERVATION_TOPIC',
    'RECORDING_METADATA',
    'REWARD_NAME',
    'REWARD_TOPIC',
    'LogFormatError',
    'RecoveredSegment',
    'SegmentedRecordingWriter',
    'SessionTransitions',
    'StampedVector',
    'TransitionAssembler',
    'TransitionLog',
    'TransitionLogWriter',
    'assemble_log',
    'read_recording',
    'read_transition_log',
    'recorded_steps',
    'recover_recording',
]

OBSERVATION_TOPIC = '/sindyrl/observation'
ACTION_TOPIC = '/sindyrl/action'
# sensor_msgs/JointState with name = [REWARD_NAME], position = [reward], header.stamp = the
# stamp of the observation the step started from (= the stamp of the action applied).
REWARD_TOPIC = '/sindyrl/reward'
REWARD_NAME = 'reward'
EXPLORE = 'explore'
EVALUATE = 'evaluate'
# Seconds an observation no action answered is kept behind the newest answered one (an
# answer that late never comes on one host), checked once this many are buffered.
UNANSWERED_KEEP_S = 5.0
# The QoS of the recorded topics (nodes.common.TRANSITION_QOS: reliable, keep last 1000,
# volatile) in rosbag2's offered_qos_profiles form.
TRANSITION_QOS_YAML = (
    '- history: 1\n'
    '  depth: 1000\n'
    '  reliability: 1\n'
    '  durability: 2\n'
    '  deadline:\n    sec: 2147483647\n    nsec: 4294967295\n'
    '  lifespan:\n    sec: 2147483647\n    nsec: 4294967295\n'
    '  liveliness: 1\n'
    '  liveliness_lease_duration:\n    sec: 2147483647\n    nsec: 4294967295\n'
    '  avoid_ros_namespace_conventions: false\n'
)
_UNANSWERED_PRUNE = 2048
RECORDING_METADATA = 'sindyrl_ros/recording'
# The largest segment file read_recording and recover_recording load: a segment holds
# segment_seconds of a run (kilobytes to megabytes); anything far bigger is not one.
MAX_SEGMENT_BYTES = 2 * 1024**3
_CHUNK_SIZE = 256 * 1024
_SESSION_NAME = re.compile(r'session_(\d+)')
_SEGMENT_NAME = re.compile(r'segment_(\d+)\.mcap')
# Footer record: opcode (1), length (8), summary_start (8), summary_offset_start (8),
# summary_crc (4); the file then ends with the magic.
_FOOTER_BYTES = 1 + 8 + 8 + 8 + 4

JOINT_STATE_TYPE = 'sensor_msgs/msg/JointState'
# The ros2msg schema as rosbag2 writes it: the message definition followed by the
# definitions it depends on, each introduced by a separator line and 'MSG: <type>'.
_SEPARATOR = '=' * 80
JOINT_STATE_SCHEMA = '\n'.join(
    [
        'std_msgs/Header header',
        'string[] name',
        'float64[] position',
        'float64[] velocity',
        'float64[] effort',
        _SEPARATOR,
        'MSG: std_msgs/Header',
        'builtin_interfaces/Time stamp',
        'string frame_id',
        _SEPARATOR,
        'MSG: builtin_interfaces/Time',
        'int32 sec',
        'uint32 nanosec',
    ]
)

_NS = 1_000_000_000


class LogFormatError(ValueError):
    """An MCAP file is not a readable recording (bad magic, wrong schema, bad message).

    The message names the file and what is wrong with it.
    """


@dataclass(frozen=True)
class StampedVector:
    """One named, stamped vector as it travels on the graph (a JointState used as a vector).

    Attributes
    ----------
    stamp_ns : int
        ``header.stamp`` in nanoseconds: measurement time of an observation, or the stamp
        of the observation an action answers.
    names : tuple of str
        Feature names (``JointState.name``).
    values : numpy.ndarray, shape (k,)
        ``position`` of an observation, ``effort`` of an action.
    frame_id : str
        ``header.frame_id``; for actions the controller mode ('explore', 'evaluate', 'safe').
    log_time_ns : int
        When it was recorded (receive time on the recording node's clock).
    """

    stamp_ns: int
    names: tuple[str, ...]
    values: np.ndarray
    frame_id: str = ''
    log_time_ns: int = 0

    @property
    def stamp(self) -> float:
        """``stamp_ns`` in seconds."""
        return self.stamp_ns / _NS


def _joint_state(
    stamp_ns: int, frame_id: str, names: Sequence[str], field_name: str, values: np.ndarray
) -> dict:
    stamp_ns = int(stamp_ns)
    if stamp_ns < 0:
        raise ValueError(f'stamp must be >= 0 ns, got {stamp_ns}')
    sec, nanosec = divmod(stamp_ns, _NS)
    message = {
        'header': {'stamp': {'sec': sec, 'nanosec': nanosec}, 'frame_id': str(frame_id)},
        'name': [str(name) for name in names],
        'position': [],
        'velocity': [],
        'effort': [],
    }
    message[field_name] = [float(value) for value in values]
    return message


class TransitionLogWriter:
    """Writes observations and actions to an MCAP file readable by rosbag2 and Foxglove.

    Parameters
    ----------
    path : path-like
        The ``.mcap`` file to create (its directory is created if missing). An existing
        file is replaced.
    metadata : dict of str to str, optional
        Stored as the MCAP metadata record ``sindyrl_ros/recording`` (task, names,
        control period...), so a reader can check a log fits the task before using it.
    observation_topic, action_topic, reward_topic : str
        Channel topics; the defaults are the graph's topic names.
    chunk_size : int
        Bytes per compressed chunk before it is written out without waiting for
        :meth:`flush`.
    exclusive : bool
        Refuse to replace an existing file (``FileExistsError``).

    Notes
    -----
    While it is open, the file is locked (``flock``, where the OS has it), so that
    :func:`recover_recording` leaves the file of a live writer alone.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        metadata: dict[str, str] | None = None,
        observation_topic: str = OBSERVATION_TOPIC,
        action_topic: str = ACTION_TOPIC,
        chunk_size: int = _CHUNK_SIZE,
        reward_topic: str = REWARD_TOPIC,
        *,
        exclusive: bool = False,
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.observation_topic = observation_topic
        self.action_topic = action_topic
        self.reward_topic = reward_topic
        self._stream = open(self.path, 'xb' if exclusive else 'wb')  # noqa: SIM115 (close())
        _try_lock(self._stream.fileno())
        self._writer = Ros2Writer(self._stream, chunk_size=chunk_size)
        self._schema = self._writer.register_msgdef(JOINT_STATE_TYPE, JOINT_STATE_SCHEMA)
        if metadata:
            self._writer.add_metadata(
                RECORDING_METADATA, {str(k): str(v) for k, v in metadata.items()}
            )
        self._sequence = 0
        self.observations_written = 0
        self.actions_written = 0
        self.rewards_written = 0
        self.closed = False

    def _write(self, topic: str, message: dict, stamp_ns: int, log_time_ns: int | None) -> None:
        if self.closed:
            raise ValueError(f'{self.path}: the recording is closed')
        channels = self._writer._channel_ids
        if topic not in channels:
            # Channels carry the QoS they were recorded with, as rosbag2 stores it, so that
            # `ros2 bag play` replays them reliable and deep, as the graph publishes them.
            # mcap-ros2-support 0.6.0 registers a channel on its first message without
            # metadata: register it here through the mcap writer it wraps.
            channels[topic] = self._writer._writer.register_channel(
                topic=topic,
                message_encoding='cdr',
                schema_id=self._schema.id,
                metadata={'offered_qos_profiles': TRANSITION_QOS_YAML},
            )
        self._sequence += 1
        self._writer.write_message(
            topic,
            self._schema,
            message,
            log_time=time.time_ns() if log_time_ns is None else int(log_time_ns),
            publish_time=int(stamp_ns),
            sequence=self._sequence,
        )

    def write_observation(
        self,
        stamp_ns: int,
        names: Sequence[str],
        values: np.ndarray,
        log_time_ns: int | None = None,
    ) -> None:
        """Record one observation (``position`` = values).

        Parameters
        ----------
        stamp_ns : int
            Measurement time (``header.stamp``) in nanoseconds.
        names : sequence of str
            n observation feature names.
        values : array-like, shape (n,)
            Observation.
        log_time_ns : int, optional
            Receive time; the wall clock when omitted.
        """
        message = _joint_state(stamp_ns, '', names, 'position', values)
        self._write(self.observation_topic, message, stamp_ns, log_time_ns)
        self.observations_written += 1

    def write_action(
        self,
        stamp_ns: int,
        names: Sequence[str],
        values: np.ndarray,
        mode: str,
        log_time_ns: int | None = None,
    ) -> None:
        """Record one action (``effort`` = values, ``header.frame_id`` = mode).

        Parameters
        ----------
        stamp_ns : int
            Stamp of the observation the action answers, in nanoseconds.
        names : sequence of str
            m action names.
        values : array-like, shape (m,)
            Applied action.
        mode : str
            Controller mode ('explore', 'evaluate', 'safe').
        log_time_ns : int, optional
            Receive time; the wall clock when omitted.
        """
        message = _joint_state(stamp_ns, mode, names, 'effort', values)
        self._write(self.action_topic, message, stamp_ns, log_time_ns)
        self.actions_written += 1

    def write_reward(self, stamp_ns: int, reward: float, log_time_ns: int | None = None) -> None:
        """Record one reward the plant reported (``position`` = [reward]).

        Parameters
        ----------
        stamp_ns : int
            Stamp of the observation the rewarded step started from, in nanoseconds.
        reward : float
        log_time_ns : int, optional
            Receive time; the wall clock when omitted.
        """
        message = _joint_state(stamp_ns, '', (REWARD_NAME,), 'position', [reward])
        self._write(self.reward_topic, message, stamp_ns, log_time_ns)
        self.rewards_written += 1

    def flush(self) -> None:
        """Complete the chunk in progress and push it to the disk (fsync).

        Everything written before a flush survives the process being killed.
        """
        if self.closed:
            return
        # mcap_ros2's writer does not expose the chunk flush of the mcap writer it wraps
        # (mcap-ros2-support 0.6.0); without it, only complete chunks reach the disk.
        inner = getattr(self._writer, '_writer', None)
        if callable(getattr(inner, 'flush', None)):
            inner.flush()
        self._stream.flush()
        os.fsync(self._stream.fileno())

    def close(self) -> None:
        """Write the summary section (indexes, statistics) and close the file."""
        if self.closed:
            return
        try:
            self._writer.finish()
            self._stream.flush()
            os.fsync(self._stream.fileno())
        finally:
            self._stream.close()
            self.closed = True

    def __enter__(self) -> TransitionLogWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


@dataclass
class TransitionLog:
    """What :func:`read_transition_log` found in a recording.

    Attributes
    ----------
    observations : list of StampedVector
        In file order.
    actions : list of StampedVector
        In file order; ``frame_id`` is the controller mode.
    rewards : list of StampedVector
        Rewards the plant reported, in file order (``values`` has one element).
    metadata : dict of str to str
        The ``sindyrl_ros/recording`` metadata record (empty if absent).
    complete : bool
        False when the file ends without its footer (the writer was killed); the
        messages up to the last complete chunk are still returned.
    """

    observations: list[StampedVector] = field(default_factory=list)
    actions: list[StampedVector] = field(default_factory=list)
    rewards: list[StampedVector] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    complete: bool = True


def read_transition_log(
    path: str | os.PathLike,
    observation_topic: str = OBSERVATION_TOPIC,
    action_topic: str = ACTION_TOPIC,
    reward_topic: str = REWARD_TOPIC,
) -> TransitionLog:
    """Read observations, actions and rewards of a recording by :class:`TransitionLogWriter`.

    Any ROS 2 MCAP file with ``sensor_msgs/msg/JointState`` on these topics works (e.g. one
    recorded by rosbag2); other channels are skipped.

    Parameters
    ----------
    path : path-like
        The ``.mcap`` file.
    observation_topic, action_topic, reward_topic : str
        Topics to read.

    Returns
    -------
    TransitionLog

    Raises
    ------
    LogFormatError
        If the file is not MCAP, a channel on these topics is not a ros2msg/cdr
        JointState, a message cannot be decoded, or the path is not a regular file (a
        directory, a FIFO, a device). ``FileNotFoundError`` is left as is.
    """
    path = Path(path)
    stream, size = _open_regular(path)
    with stream:
        return _read_log(path, stream, size, (observation_topic, action_topic, reward_topic))


def _read_log(
    path: Path,
    stream: BinaryIO,
    size: int,
    topics: tuple[str, str, str],
    sink: Callable[[McapRecord], None] | None = None,
    unstarted_ok: bool = False,
) -> TransitionLog:
    """Read a recording from ``stream`` (at its start); see :func:`read_transition_log`.

    ``sink`` is handed every record read (those of complete chunks, in file order).
    With ``unstarted_ok``, a file that ends before its MCAP header is complete (0 bytes:
    its writer was killed as it created it) reads as an empty, incomplete log.
    """
    log = TransitionLog(complete=False)
    decoders = DecoderFactory()
    schemas: dict[int, Schema] = {}
    channels: dict[int, Channel] = {}
    observation_topic, action_topic, reward_topic = topics
    wanted = {
        observation_topic: ('position', log.observations),
        action_topic: ('effort', log.actions),
        reward_topic: ('position', log.rewards),
    }
    seen_header = False
    # No record is longer than the file: a garbage length must not become an allocation.
    reader = StreamReader(stream, validate_crcs=True, record_size_limit=max(size, 1))
    try:
        for record in reader.records:
            if sink is not None:
                sink(record)
            if isinstance(record, Header):
                seen_header = True
            elif isinstance(record, Schema):
                schemas[record.id] = record
            elif isinstance(record, Channel):
                channels[record.id] = record
            elif isinstance(record, Metadata) and record.name == RECORDING_METADATA:
                log.metadata = dict(record.metadata)
            elif isinstance(record, Message):
                channel = channels.get(record.channel_id)
                if channel is None or channel.topic not in wanted:
                    continue
                role, messages = wanted[channel.topic]
                schema = schemas.get(channel.schema_id)
                messages.append(_decode(path, channel, schema, record, decoders, role))
        log.complete = True
    except (McapError, struct.error, EOFError) as error:
        truncated = isinstance(error, (EndOfFile, struct.error))
        if not seen_header and truncated and unstarted_ok:
            stream.seek(0)
            if MCAP0_MAGIC.startswith(stream.read(len(MCAP0_MAGIC))):
                return log  # killed before its header reached the disk: holds nothing
        if not seen_header or not truncated:
            raise LogFormatError(f'{path}: not a readable MCAP recording: {error}') from None
        # The writer was killed: keep what the complete chunks hold.
    except CRCValidationError as error:
        raise LogFormatError(f'{path}: corrupt MCAP recording: {error}') from None
    return log


def _file_kind(mode: int) -> str:
    kinds = (
        (stat.S_ISDIR, 'a directory'),
        (stat.S_ISFIFO, 'a FIFO'),
        (stat.S_ISCHR, 'a character device'),
        (stat.S_ISBLK, 'a block device'),
        (stat.S_ISSOCK, 'a socket'),
        (stat.S_ISLNK, 'a symbolic link'),
    )
    return next((name for test, name in kinds if test(mode)), 'not a regular file')


def _open_regular(path: Path, max_bytes: int | None = None) -> tuple[BinaryIO, int]:
    """Open ``path`` for reading if it is a regular file (of at most ``max_bytes``).

    Returns the open stream and the file's size. Opening never blocks: a FIFO is opened
    non-blocking and refused once open, so a FIFO swapped in after a check cannot hang.
    """
    info = os.stat(path)  # FileNotFoundError passes
    if not stat.S_ISREG(info.st_mode):
        # Some kinds (a socket) cannot even be opened: refuse before trying.
        raise LogFormatError(f'{path}: {_file_kind(info.st_mode)}, not an MCAP file')
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, 'O_CLOEXEC', 0)
    fd = os.open(path, flags)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise LogFormatError(f'{path}: {_file_kind(info.st_mode)}, not an MCAP file')
        if max_bytes is not None and info.st_size > max_bytes:
            raise LogFormatError(
                f'{path}: {info.st_size} bytes, more than a recording segment may hold '
                f'(MAX_SEGMENT_BYTES = {max_bytes}); not loaded'
            )
        os.set_blocking(fd, True)
        return os.fdopen(fd, 'rb'), info.st_size
    except BaseException:
        os.close(fd)
        raise


def _decode(
    path: Path,
    channel: Channel,
    schema: Schema | None,
    record: Message,
    decoders: DecoderFactory,
    field_name: str,
) -> StampedVector:
    where = f'{path}: topic {channel.topic}'
    if (
        schema is None
        or schema.name != JOINT_STATE_TYPE
        or schema.encoding != SchemaEncoding.ROS2
        or channel.message_encoding != MessageEncoding.CDR
    ):
        raise LogFormatError(
            f'{where}: expected {JOINT_STATE_TYPE} ({SchemaEncoding.ROS2}/'
            f'{MessageEncoding.CDR}), got {getattr(schema, "name", None)!r} '
            f'({getattr(schema, "encoding", None)}/{channel.message_encoding})'
        )
    try:
        message = decoders.decoder_for(channel.message_encoding, schema)(record.data)
    except Exception as error:  # the CDR parser raises assorted errors on bad bytes
        raise LogFormatError(
            f'{where}: message {record.sequence} cannot be decoded: {error}'
        ) from None
    values = np.asarray(getattr(message, field_name), dtype=np.float64)
    return StampedVector(
        stamp_ns=int(message.header.stamp.sec) * _NS + int(message.header.stamp.nanosec),
        names=tuple(message.name),
        values=values,
        frame_id=message.header.frame_id,
        log_time_ns=int(record.log_time),
    )


class TransitionAssembler:
    """Pairs stamped observations and actions into transitions, by stamp.

    Observation k (stamp t_k), the action answering it (stamped t_k) and observation k+1
    form a transition when the step ``t_{k+1} - t_k`` is at most ``gap_factor *
    control_period`` and no feature jumps by more than ``max_jump`` (a plant reset moves
    the state without a step of the dynamics). Observation k+1 is the next *answered*
    observation (the next one an action answers) when there is one within the gap, else
    the observation nearest one control period later (at least half a period later). So
    transitions stay at the control period when a robot's joint states (and so the
    observations) come faster than the controller answers them (a broadcaster at
    100 Hz–1 kHz, control at 20 Hz), and a state whose answer was lost still ends the step
    before it. Observations nobody answered
    are kept only ``UNANSWERED_KEEP_S`` behind the newest answered one.
    Consecutive transitions of the same mode form a trajectory; a gap, a jump or a
    change of mode (explore/evaluate/safe) ends it. Arrival order never matters: the
    pairing is recomputed around each new message, so a late message completes the
    transitions it belongs to. Rewards (stamped like actions) ride along: they never
    decide whether a transition is complete, but :meth:`trajectories` can keep only the
    rewarded ones (to fit a reward model).

    Parameters
    ----------
    control_period : float
        Seconds between observations.
    gap_factor : float
        A step longer than ``gap_factor * control_period`` is a gap.
    max_jump : array-like of shape (n,) or None
        Largest plausible change of each observation feature in one control period;
        None disables reset detection by jumps.
    """

    def __init__(
        self,
        control_period: float,
        gap_factor: float = 1.5,
        max_jump: np.ndarray | None = None,
    ) -> None:
        if not control_period > 0:
            raise ValueError(f'control_period must be positive, got {control_period}')
        if not gap_factor >= 1.0:
            raise ValueError(f'gap_factor must be >= 1, got {gap_factor}')
        self.control_period = float(control_period)
        self.gap_factor = float(gap_factor)
        self.max_gap_ns = int(round(self.gap_factor * self.control_period * _NS))
        self.max_jump = None if max_jump is None else np.asarray(max_jump, dtype=np.float64)
        self.period_ns = int(round(self.control_period * _NS))
        self.min_step_ns = self.period_ns // 2
        self._stamps: list[int] = []  # sorted observation stamps
        self._answered_stamps: list[int] = []  # sorted stamps with an observation and an action
        self._observations: dict[int, np.ndarray] = {}
        self._unanswered = 0  # observations without an action
        self._pruned_below = -(2**63)  # unanswered observations before this are pruned
        self._actions: dict[int, tuple[np.ndarray, str]] = {}
        self._rewards: dict[int, float] = {}
        self._complete: dict[int, str] = {}  # stamp of observation k -> mode of its transition
        self._counts: dict[str, int] = {}  # complete transitions per mode
        self.duplicates = 0

    # -- input ---------------------------------------------------------------
    def add_observation(self, stamp_ns: int, observation: np.ndarray) -> int:
        """Add observation at ``stamp_ns``; returns how many transitions it completed."""
        stamp_ns = int(stamp_ns)
        if stamp_ns in self._observations:
            self.duplicates += 1
            return 0
        self._observations[stamp_ns] = np.array(observation, dtype=np.float64)
        bisect.insort(self._stamps, stamp_ns)
        if stamp_ns in self._actions:
            return self._answered(stamp_ns)
        self._unanswered += 1
        # It may end the step of the answered observation before it.
        index = bisect.bisect_left(self._answered_stamps, stamp_ns)
        return self._recheck(self._answered_stamps[index - 1]) if index > 0 else 0

    def add_action(self, stamp_ns: int, action: np.ndarray, mode: str) -> int:
        """Add the action answering the observation stamped ``stamp_ns``.

        Returns how many transitions it completed (0 to 2: its own and the previous one).
        """
        stamp_ns = int(stamp_ns)
        if stamp_ns in self._actions:
            self.duplicates += 1
            return 0
        self._actions[stamp_ns] = (np.array(action, dtype=np.float64).reshape(-1), str(mode))
        if stamp_ns not in self._observations:
            return 0
        self._unanswered -= 1
        return self._answered(stamp_ns)

    def _answered(self, stamp_ns: int) -> int:
        """An observation and its action are both here: recheck it and the answer before."""
        index = bisect.bisect_left(self._answered_stamps, stamp_ns)
        self._answered_stamps.insert(index, stamp_ns)
        completed = self._recheck(stamp_ns)
        if index > 0:
            completed += self._recheck(self._answered_stamps[index - 1])
        if self._unanswered > _UNANSWERED_PRUNE:
            self._forget_unanswered()
        return completed

    def _forget_unanswered(self) -> None:
        """Drop observations nobody answered that lie well behind the newest answer.

        An observation that ends a complete transition (a step whose next state went
        unanswered) is kept: its trajectory needs it.
        """
        floor = self._answered_stamps[-1] - int(UNANSWERED_KEEP_S * _NS)
        start = bisect.bisect_left(self._answered_stamps, self._pruned_below)
        end = bisect.bisect_left(self._answered_stamps, floor)
        needed = {
            self._next_stamp(stamp)
            for stamp in self._answered_stamps[start:end]
            if stamp in self._complete
        }
        cut = bisect.bisect_left(self._stamps, floor)
        kept = []
        for stamp in self._stamps[:cut]:
            if stamp in self._actions or stamp in needed or stamp < self._pruned_below:
                kept.append(stamp)
            else:
                del self._observations[stamp]
                self._unanswered -= 1
        self._stamps[:cut] = kept
        self._pruned_below = floor

    def add_reward(self, stamp_ns: int, reward: float) -> bool:
        """Add the reward of the step from the observation stamped ``stamp_ns``.

        Returns False for a repeated stamp (kept: the first) or a non-finite reward
        (refused), True otherwise.
        """
        stamp_ns = int(stamp_ns)
        if stamp_ns in self._rewards:
            self.duplicates += 1
            return False
        reward = float(reward)
        if not np.isfinite(reward):
            return False
        self._rewards[stamp_ns] = reward
        return True

    def _next_stamp(self, stamp_ns: int) -> int | None:
        """The observation that ends the step from ``stamp_ns`` (see the class docstring)."""
        index = bisect.bisect_right(self._answered_stamps, stamp_ns)
        if index < len(self._answered_stamps):
            answered = self._answered_stamps[index]
            if answered - stamp_ns <= self.max_gap_ns:
                return answered
        # No answer within the gap: the observation nearest one control period later.
        target = stamp_ns + self.period_ns
        index = bisect.bisect_left(self._stamps, target)
        candidates = [
            self._stamps[i]
            for i in (index - 1, index)
            if 0 <= i < len(self._stamps)
            and self.min_step_ns <= self._stamps[i] - stamp_ns <= self.max_gap_ns
        ]
        return min(candidates, key=lambda s: abs(s - target)) if candidates else None

    def _recheck(self, stamp_ns: int) -> int:
        """Re-derive whether the transition starting at ``stamp_ns`` is complete.

        Returns 1 if it just became complete, else 0.
        """
        previous = self._complete.pop(stamp_ns, None)
        if previous is not None:
            self._counts[previous] -= 1
        mode = self._transition_mode(stamp_ns)
        if mode is None:
            return 0
        self._complete[stamp_ns] = mode
        self._counts[mode] = self._counts.get(mode, 0) + 1
        return 0 if previous is not None else 1

    def _transition_mode(self, stamp_ns: int) -> str | None:
        observation = self._observations[stamp_ns]
        answer = self._actions[stamp_ns]
        next_stamp = self._next_stamp(stamp_ns)
        if next_stamp is None or next_stamp - stamp_ns > self.max_gap_ns:
            return None
        if self.max_jump is not None:
            change = np.abs(self._observations[next_stamp] - observation)
            if not np.all(change <= self.max_jump):
                return None
        if not (np.all(np.isfinite(observation)) and np.all(np.isfinite(answer[0]))):
            return None
        return answer[1]

    # -- output --------------------------------------------------------------
    @property
    def n_observations(self) -> int:
        """Observations buffered (answered or not)."""
        return len(self._observations)

    @property
    def n_actions(self) -> int:
        """Actions buffered."""
        return len(self._actions)

    @property
    def n_rewards(self) -> int:
        """Rewards buffered."""
        return len(self._rewards)

    def rewarded_counts(self) -> dict[str, int]:
        """Complete transitions with a reported reward, per mode."""
        counts: dict[str, int] = {}
        for stamp, mode in self._complete.items():
            if stamp in self._rewards:
                counts[mode] = counts.get(mode, 0) + 1
        return counts

    def transition_counts(self) -> dict[str, int]:
        """Complete transitions per mode, e.g. ``{'explore': 180, 'evaluate': 400}``."""
        return {mode: count for mode, count in self._counts.items() if count}

    def trajectories(
        self, modes: Iterable[str] | None = (EXPLORE,), min_steps: int = 1, rewards: bool = False
    ) -> list[Trajectory]:
        """Cut the complete transitions into gap-free, single-mode trajectories.

        Parameters
        ----------
        modes : iterable of str or None
            Modes whose transitions are used (None = all). Only 'explore' data trains
            the model; 'evaluate' episodes are for reporting.
        min_steps : int
            Shorter trajectories are left out.
        rewards : bool
            Keep only transitions with a reported reward (a missing one cuts the
            trajectory) and fill ``Trajectory.rewards``.

        Returns
        -------
        list of Trajectory
            In time order, with ``times`` in seconds.
        """
        allowed = None if modes is None else set(modes)
        trajectories: list[Trajectory] = []
        run: list[int] = []
        run_mode = None

        def close_run() -> None:
            if len(run) >= max(min_steps, 1):
                stamps = [*run, self._next_stamp(run[-1])]
                trajectories.append(
                    Trajectory(
                        observations=np.stack([self._observations[s] for s in stamps]),
                        actions=np.stack([self._actions[s][0] for s in run]),
                        rewards=(
                            np.asarray([self._rewards[s] for s in run], dtype=np.float64)
                            if rewards
                            else None
                        ),
                        times=np.asarray(stamps, dtype=np.float64) / _NS,
                    )
                )
            run.clear()

        expected_next = None
        for stamp in self._answered_stamps:
            mode = self._complete.get(stamp)
            usable = mode is not None and (allowed is None or mode in allowed)
            usable = usable and (not rewards or stamp in self._rewards)
            if run and (not usable or stamp != expected_next or mode != run_mode):
                close_run()
            if usable:
                run.append(stamp)
                run_mode = mode
                expected_next = self._next_stamp(stamp)
        if run:
            close_run()
        return trajectories

    def observations(self) -> np.ndarray:
        """All answered observations in stamp order, shape (K, n)."""
        if not self._stamps:
            return np.zeros((0, 0))
        return np.stack([self._observations[s] for s in self._stamps])


def assemble_log(
    log: TransitionLog,
    control_period: float,
    gap_factor: float = 1.5,
    max_jump: np.ndarray | None = None,
) -> TransitionAssembler:
    """Pair a recording's observations and actions into transitions.

    Parameters
    ----------
    log : TransitionLog
        From :func:`read_transition_log`.
    control_period, gap_factor, max_jump
        As for :class:`TransitionAssembler`.

    Returns
    -------
    TransitionAssembler
        Holding every observation and action of the log.
    """
    assembler = TransitionAssembler(control_period, gap_factor, max_jump)
    for observation in log.observations:
        assembler.add_observation(observation.stamp_ns, observation.values)
    for action in log.actions:
        assembler.add_action(action.stamp_ns, action.values, action.frame_id)
    for reward in log.rewards:
        if len(reward.values) == 1:
            assembler.add_reward(reward.stamp_ns, reward.values[0])
    return assembler


# -- recording in segments ------------------------------------------------------------


def _try_lock(fd: int) -> bool:
    """Take an exclusive lock on an open file without waiting.

    Returns False when another open file (a live writer) holds it; True when locked, or
    where the OS or the file system has no such locks (then nothing can be told).
    """
    if fcntl is None:  # pragma: no cover (Windows)
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:  # e.g. ENOLCK on a network file system
        return True
    return True


def _fsync_directory(directory: Path) -> None:
    """Make a created or replaced directory entry durable (best effort)."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, 'O_DIRECTORY', 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _numbered(directory: Path, pattern: re.Pattern, directories: bool) -> list[Path]:
    """Entries of ``directory`` named like ``pattern`` (one number), in number order.

    With ``directories`` only directories count; otherwise every entry of that name does
    (a FIFO named like a segment is refused when read, not skipped).
    """
    found = []
    with os.scandir(directory) as entries:
        for entry in entries:
            match = pattern.fullmatch(entry.name)
            if match and (not directories or entry.is_dir()):
                found.append((int(match.group(1)), entry.name, Path(entry.path)))
    return [path for *_, path in sorted(found)]


def _messages_in(writer: TransitionLogWriter) -> int:
    return writer.observations_written + writer.actions_written + writer.rewards_written


class SegmentedRecordingWriter:
    """Writes a recording as closed MCAP segments, so a killed run loses at most a flush.

    The layout is ``<directory>/session_<NNN>/segment_<NNNN>.mcap``. A session is one start
    of the graph on a run: clocks may restart between sessions, so stamps of different
    sessions are never compared (:func:`read_recording` returns them apart). Each segment
    is a complete, standalone :class:`TransitionLogWriter` file carrying the
    ``sindyrl_ros/recording`` metadata record (``metadata`` plus ``session`` and
    ``segment``, as strings), readable on its own by Foxglove, rosbag2 and the standard
    ``mcap`` reader. After ``kill -9`` only the open segment lacks its summary;
    :func:`recover_recording` repairs it.

    Parameters
    ----------
    directory : path-like
        The recording directory (created if missing); sessions are made inside it.
    metadata : dict of str to str, optional
        Stored in every segment (task, names, control period...).
    segment_seconds : float
        Age (by ``clock``) at which :meth:`flush` closes the open segment; > 0.
    session : int, optional
        Session index; None takes the next free one (largest existing + 1, or 0). An
        existing session is continued after its last segment, never overwritten.
    observation_topic, action_topic, reward_topic : str
        Channel topics; the defaults are the graph's topic names.
    clock : callable returning float
        Seconds of a monotonic clock; segments are aged by it.

    Attributes
    ----------
    session : int
    directory : pathlib.Path
        The session directory ``<directory>/session_<NNN>``, created here.
    segment_path : pathlib.Path or None
        The open segment, else the last one closed; None before the first write.
    observations_written, actions_written, rewards_written : int
        Totals over all segments of this writer.
    closed : bool

    Notes
    -----
    Segments roll over only in :meth:`flush` (a node calls it periodically), so a segment
    spans ``segment_seconds`` plus up to one flush period. The next segment is opened by
    the next write: no segment file is ever left without messages.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        metadata: dict[str, str] | None = None,
        segment_seconds: float = 30.0,
        session: int | None = None,
        observation_topic: str = OBSERVATION_TOPIC,
        action_topic: str = ACTION_TOPIC,
        reward_topic: str = REWARD_TOPIC,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        segment_seconds = float(segment_seconds)
        if not segment_seconds > 0:
            raise ValueError(
                f'segment_seconds must be > 0 (the age at which a segment is closed), '
                f'got {segment_seconds}'
            )
        if session is not None and (int(session) != session or session < 0):
            raise ValueError(f'session must be an index >= 0 or None, got {session!r}')
        self.segment_seconds = segment_seconds
        self.observation_topic = observation_topic
        self.action_topic = action_topic
        self.reward_topic = reward_topic
        self._metadata = {str(k): str(v) for k, v in (metadata or {}).items()}
        self._clock = clock
        root = Path(directory)
        root.mkdir(parents=True, exist_ok=True)
        self.session, self.directory = self._make_session(root, session)
        segments = _numbered(self.directory, _SEGMENT_NAME, directories=False)
        last = _SEGMENT_NAME.fullmatch(segments[-1].name) if segments else None
        self._next_segment = int(last.group(1)) + 1 if last else 0
        self._writer: TransitionLogWriter | None = None
        self._opened_at = 0.0
        self.segment_path: Path | None = None
        self._previous_path: Path | None = None
        self.observations_written = 0
        self.actions_written = 0
        self.rewards_written = 0
        self.closed = False

    @staticmethod
    def _make_session(root: Path, session: int | None) -> tuple[int, Path]:
        if session is not None:
            path = root / f'session_{int(session):03d}'
            path.mkdir(exist_ok=True)
            return int(session), path
        existing = _numbered(root, _SESSION_NAME, directories=True)
        index = int(_SESSION_NAME.fullmatch(existing[-1].name).group(1)) + 1 if existing else 0
        while True:  # another writer may take the same index at the same moment
            path = root / f'session_{index:03d}'
            try:
                path.mkdir()
            except FileExistsError:
                index += 1
                continue
            _fsync_directory(root)
            return index, path

    def _segment(self) -> TransitionLogWriter:
        if self.closed:
            raise ValueError(f'{self.directory}: the recording is closed')
        if self._writer is None:
            while True:
                index = self._next_segment
                path = self.directory / f'segment_{index:04d}.mcap'
                metadata = {**self._metadata, 'session': str(self.session), 'segment': str(index)}
                try:
                    writer = TransitionLogWriter(
                        path,
                        metadata,
                        observation_topic=self.observation_topic,
                        action_topic=self.action_topic,
                        reward_topic=self.reward_topic,
                        exclusive=True,
                    )
                except FileExistsError:
                    self._next_segment += 1
                    continue
                break
            # Header and metadata on disk now: a segment killed before its first flush
            # still names its session and segment.
            writer.flush()
            _fsync_directory(self.directory)
            self._writer, self._opened_at = writer, self._clock()
            self._previous_path, self.segment_path = self.segment_path, path
        return self._writer

    def write_observation(
        self,
        stamp_ns: int,
        names: Sequence[str],
        values: np.ndarray,
        log_time_ns: int | None = None,
    ) -> None:
        """Record one observation; see :meth:`TransitionLogWriter.write_observation`."""
        self._segment().write_observation(stamp_ns, names, values, log_time_ns)
        self.observations_written += 1

    def write_action(
        self,
        stamp_ns: int,
        names: Sequence[str],
        values: np.ndarray,
        mode: str,
        log_time_ns: int | None = None,
    ) -> None:
        """Record one action; see :meth:`TransitionLogWriter.write_action`."""
        self._segment().write_action(stamp_ns, names, values, mode, log_time_ns)
        self.actions_written += 1

    def write_reward(self, stamp_ns: int, reward: float, log_time_ns: int | None = None) -> None:
        """Record one reported reward; see :meth:`TransitionLogWriter.write_reward`."""
        self._segment().write_reward(stamp_ns, reward, log_time_ns)
        self.rewards_written += 1

    def flush(self) -> None:
        """Push the open segment to the disk; close it once it is ``segment_seconds`` old.

        Everything written before a flush survives the process being killed. A segment
        is closed (summary and footer written) only if it holds a message; the next write
        opens the next one.
        """
        if self.closed or self._writer is None:
            return
        age = self._clock() - self._opened_at
        if _messages_in(self._writer) > 0 and age >= self.segment_seconds:
            self._close_segment()
        else:
            self._writer.flush()

    def _close_segment(self) -> None:
        writer, self._writer = self._writer, None
        try:
            writer.close()
        finally:
            if _messages_in(writer) == 0:
                # Every write into it failed (a negative stamp...): leave no empty segment.
                writer.path.unlink(missing_ok=True)
                self.segment_path = self._previous_path
            else:
                self._next_segment += 1

    def close(self) -> None:
        """Close the open segment (summary section, fsync). Calling it again does nothing."""
        if self.closed:
            return
        try:
            if self._writer is not None:
                self._close_segment()
        finally:
            self.closed = True

    def __enter__(self) -> SegmentedRecordingWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _read_segment(path: Path, topics: tuple[str, str, str]) -> TransitionLog:
    stream, size = _open_regular(path, MAX_SEGMENT_BYTES)
    with stream:
        return _read_log(path, stream, size, topics, unstarted_ok=True)


def _read_session(segments: list[Path], topics: tuple[str, str, str]) -> TransitionLog:
    log = TransitionLog()
    for path in segments:
        part = _read_segment(path, topics)
        log.observations.extend(part.observations)
        log.actions.extend(part.actions)
        log.rewards.extend(part.rewards)
        log.complete = log.complete and part.complete
        if not log.metadata:  # a segment killed as it was created has none
            log.metadata = part.metadata
    return log


def read_recording(
    path: str | os.PathLike,
    observation_topic: str = OBSERVATION_TOPIC,
    action_topic: str = ACTION_TOPIC,
    reward_topic: str = REWARD_TOPIC,
) -> list[TransitionLog]:
    """Read a recording file, session or directory, one log per session.

    Parameters
    ----------
    path : path-like
        One of:

        - an MCAP file: one log;
        - a session directory holding ``segment_<NNNN>.mcap`` files: one log, the
          segments' messages concatenated in segment order, ``complete`` only if every
          segment is, ``metadata`` of the first segment (that has any);
        - a recording directory holding ``session_<NNN>/`` directories: one log per
          session, in session order (sessions without a segment are skipped).

        A segment file that ends before its MCAP header (0 bytes: its writer was killed
        as it created it) reads as holding nothing.
    observation_topic, action_topic, reward_topic : str
        Topics to read.

    Returns
    -------
    list of TransitionLog
        In session order. Stamps are comparable within a log, never across logs.

    Raises
    ------
    LogFormatError
        If ``path`` is none of the above (an empty directory, a directory without
        recordings, a FIFO or device), if a file is not a readable recording (see
        :func:`read_transition_log`), is not a regular file, or is larger than
        ``MAX_SEGMENT_BYTES``. ``FileNotFoundError`` for a missing path is left as is.
    """
    path = Path(path)
    topics = (observation_topic, action_topic, reward_topic)
    info = os.stat(path)
    if not stat.S_ISDIR(info.st_mode):
        if not stat.S_ISREG(info.st_mode):
            raise LogFormatError(
                f'{path}: {_file_kind(info.st_mode)}; expected an MCAP file, a session '
                f'directory or a recording directory'
            )
        return [_read_segment(path, topics)]
    sessions = _numbered(path, _SESSION_NAME, directories=True)
    if sessions:
        logs = []
        for session in sessions:
            segments = _numbered(session, _SEGMENT_NAME, directories=False)
            if segments:
                logs.append(_read_session(segments, topics))
        if not logs:
            raise LogFormatError(
                f'{path}: none of its {len(sessions)} session directories holds a '
                f'segment_NNNN.mcap file; nothing was recorded'
            )
        return logs
    segments = _numbered(path, _SEGMENT_NAME, directories=False)
    if segments:
        return [_read_session(segments, topics)]
    raise LogFormatError(
        f'{path}: expected a recording directory (session_NNN/ directories) or a session '
        f'directory (segment_NNNN.mcap files); it holds neither'
    )


@dataclass(frozen=True)
class RecoveredSegment:
    """A file :func:`recover_recording` rewrote as a complete MCAP file.

    Attributes
    ----------
    path : pathlib.Path
    observations, actions, rewards : int
        Messages of each kind the recovered file holds.
    bytes_before, bytes_after : int
        File size before and after.
    """

    path: Path
    observations: int
    actions: int
    rewards: int
    bytes_before: int
    bytes_after: int


def _has_footer(fd: int, size: int) -> bool:
    """Whether the file starts with the MCAP magic and ends with a footer whose CRC holds.

    The summary CRC covers the summary section and the footer's fields, so a killed
    writer's file cannot pass for a complete one by the look of its last bytes.
    """
    magic = len(MCAP0_MAGIC)
    tail_bytes = _FOOTER_BYTES + magic
    if size < magic + tail_bytes or os.pread(fd, magic, 0) != MCAP0_MAGIC:
        return False
    footer_start = size - tail_bytes
    tail = os.pread(fd, tail_bytes, footer_start)
    if len(tail) != tail_bytes or tail[-magic:] != MCAP0_MAGIC:
        return False
    opcode, length, summary_start, _, summary_crc = struct.unpack('<BQQQI', tail[:-magic])
    if opcode != Opcode.FOOTER or length != _FOOTER_BYTES - 9:
        return False
    if summary_start and not magic < summary_start <= footer_start:
        return False
    if summary_crc == 0:  # written without CRCs
        return True
    crc = 0
    offset = summary_start or footer_start
    while offset < footer_start:
        block = os.pread(fd, min(1 << 20, footer_start - offset), offset)
        if not block:
            return False
        crc = zlib.crc32(block, crc)
        offset += len(block)
    return zlib.crc32(tail[: _FOOTER_BYTES - 4], crc) == summary_crc


class _RecordCopier:
    """Writes the records a reader hands it (header, schemas, channels, messages,
    metadata, attachments) into a new, complete MCAP file, keeping every field."""

    def __init__(self, stream: BinaryIO) -> None:
        self._writer = McapWriter(stream, chunk_size=_CHUNK_SIZE)
        self._started = False
        self._schemas: dict[int, int] = {}  # id in the old file -> id in the new one
        self._channels: dict[int, int] = {}

    def __call__(self, record: McapRecord) -> None:
        writer = self._writer
        if isinstance(record, Header):
            if not self._started:
                writer.start(profile=record.profile, library=record.library)
                self._started = True
        elif not self._started:
            return
        # The summary section of a writer killed while closing repeats schemas and
        # channels: each is copied once.
        elif isinstance(record, Schema):
            if record.id not in self._schemas:
                self._schemas[record.id] = writer.register_schema(
                    record.name, record.encoding, record.data
                )
        elif isinstance(record, Channel):
            schema_id = 0 if record.schema_id == 0 else self._schemas.get(record.schema_id)
            if record.id not in self._channels and schema_id is not None:
                self._channels[record.id] = writer.register_channel(
                    record.topic, record.message_encoding, schema_id, dict(record.metadata)
                )
        elif isinstance(record, Message):
            channel_id = self._channels.get(record.channel_id)
            if channel_id is not None:
                writer.add_message(
                    channel_id,
                    log_time=record.log_time,
                    data=record.data,
                    publish_time=record.publish_time,
                    sequence=record.sequence,
                )
        elif isinstance(record, Metadata):
            writer.add_metadata(record.name, dict(record.metadata))
        elif isinstance(record, Attachment):
            writer.add_attachment(
                record.create_time, record.log_time, record.name, record.media_type, record.data
            )

    def finish(self) -> None:
        if not self._started:  # the old file ended before its header: an empty recording
            self._writer.start(profile='ros2')
            self._started = True
        self._writer.finish()


def _recover_file(path: Path, topics: tuple[str, str, str]) -> RecoveredSegment | None:
    """Rewrite one file without its footer as a complete one; None if it needs nothing."""
    stream, _ = _open_regular(path)
    with stream:
        fd = stream.fileno()
        if not _try_lock(fd):
            return None  # a live writer holds it: it is not done, let alone broken
        info = os.fstat(fd)
        try:
            if os.stat(path).st_ino != info.st_ino:
                return None  # replaced meanwhile (another recovery)
        except FileNotFoundError:
            return None
        if _has_footer(fd, info.st_size):
            return None
        if info.st_size > MAX_SEGMENT_BYTES:
            raise LogFormatError(
                f'{path}: {info.st_size} bytes without a footer, more than a recording '
                f'segment may hold (MAX_SEGMENT_BYTES = {MAX_SEGMENT_BYTES}); not recovered'
            )
        handle, temporary = tempfile.mkstemp(
            prefix=f'.{path.name}.', suffix='.recovering', dir=path.parent
        )
        try:
            with os.fdopen(handle, 'wb') as output:
                copier = _RecordCopier(output)
                log = _read_log(path, stream, info.st_size, topics, copier, unstarted_ok=True)
                copier.finish()
                output.flush()
                os.fsync(output.fileno())
                bytes_after = output.tell()
            os.chmod(temporary, stat.S_IMODE(info.st_mode))
            # Atomic: a reader opens either the old file or the complete new one.
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise
    _fsync_directory(path.parent)
    return RecoveredSegment(
        path=path,
        observations=len(log.observations),
        actions=len(log.actions),
        rewards=len(log.rewards),
        bytes_before=info.st_size,
        bytes_after=bytes_after,
    )


def recover_recording(
    directory: str | os.PathLike,
    observation_topic: str = OBSERVATION_TOPIC,
    action_topic: str = ACTION_TOPIC,
    reward_topic: str = REWARD_TOPIC,
) -> list[RecoveredSegment]:
    """Rewrite every MCAP file a killed writer left without its footer as a complete one.

    Every ``*.mcap`` under ``directory`` (recursively, in path order; symbolic links are
    not followed) that ends without its footer is rewritten with every record
    :func:`read_transition_log` reads from it: header, schemas, channels (with their
    metadata, e.g. the QoS), metadata records and messages, each with the same topic,
    log time, publish time, sequence and bytes. The new file is written beside the old
    one and moved over it with ``os.replace``, so a concurrent reader sees the old file
    or the complete new one, never half a file. Complete files are not touched, nor is a
    file a live writer still holds (see :class:`TransitionLogWriter`), so recovering
    twice changes nothing the second time.

    Parameters
    ----------
    directory : path-like
        A recording, a session directory, or one ``.mcap`` file.
    observation_topic, action_topic, reward_topic : str
        Topics counted in the result (every topic is kept).

    Returns
    -------
    list of RecoveredSegment
        The rewritten files, in path order; empty if ``directory`` does not exist.

    Raises
    ------
    LogFormatError
        Naming the file, if one is not MCAP (or not a regular file, e.g. a FIFO), is
        corrupt, or is larger than ``MAX_SEGMENT_BYTES`` without a footer. Files before
        it in path order are already recovered.
    """
    root = Path(directory)
    topics = (observation_topic, action_topic, reward_topic)
    try:
        info = os.lstat(root)
    except FileNotFoundError:
        return []
    candidates = sorted(root.rglob('*.mcap')) if stat.S_ISDIR(info.st_mode) else [root]
    recovered = []
    for path in candidates:
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            continue
        if stat.S_ISDIR(mode) or stat.S_ISLNK(mode):
            continue
        if not stat.S_ISREG(mode):
            raise LogFormatError(f'{path}: {_file_kind(mode)}, not an MCAP file')
        segment = _recover_file(path, topics)
        if segment is not None:
            recovered.append(segment)
    return recovered


def recorded_steps(logs: Iterable[TransitionLog] | TransitionLog) -> dict[str, int]:
    """Real plant steps a recording holds, per controller mode.

    Each action answers one observation and was applied to the plant once, so a step is
    a distinct action stamp within a session; a repeated stamp (a watchdog's repeat)
    counts once, with the mode of its first action, as :class:`TransitionAssembler`
    keeps it. Sessions are counted apart (their clocks may restart) and summed.

    Parameters
    ----------
    logs : iterable of TransitionLog, or one TransitionLog
        One log per session, as :func:`read_recording` returns them.

    Returns
    -------
    dict of str to int
        Steps per mode, e.g. ``{'explore': 1200, 'evaluate': 400}``.
    """
    if isinstance(logs, TransitionLog):
        logs = [logs]
    counts: dict[str, int] = {}
    for log in logs:
        modes: dict[int, str] = {}
        for action in log.actions:
            modes.setdefault(action.stamp_ns, action.frame_id)
        for mode in modes.values():
            counts[mode] = counts.get(mode, 0) + 1
    return counts


class SessionTransitions:
    """The transitions of a run's sessions: earlier ones (loaded) and the live one.

    Each start of a run records its own session, and a restarted simulator's clock starts
    from 0 again, so the stamps of two sessions must never be paired: each session has its
    own :class:`TransitionAssembler`, and this class only adds up their counts and puts
    their trajectories one after the other.

    Parameters
    ----------
    live : TransitionAssembler
        The session being recorded now; the one new messages go to.
    earlier : sequence of TransitionAssembler
        Sessions loaded from recordings (a resumed run's, an ``initial_log``), in order.
    """

    def __init__(
        self, live: TransitionAssembler, earlier: Sequence[TransitionAssembler] = ()
    ) -> None:
        self.live = live
        self.earlier = list(earlier)

    @property
    def sessions(self) -> list[TransitionAssembler]:
        """Every session, the live one last."""
        return [*self.earlier, self.live]

    def transition_counts(self) -> dict[str, int]:
        """Complete transitions per mode, over every session."""
        counts: dict[str, int] = {}
        for session in self.sessions:
            for mode, count in session.transition_counts().items():
                counts[mode] = counts.get(mode, 0) + count
        return counts

    def trajectories(
        self, modes: Iterable[str] | None = (EXPLORE,), min_steps: int = 1, rewards: bool = False
    ) -> list[Trajectory]:
        """:meth:`TransitionAssembler.trajectories` of every session, in session order."""
        modes = None if modes is None else tuple(modes)
        return [
            trajectory
            for session in self.sessions
            for trajectory in session.trajectories(modes, min_steps, rewards)
        ]
