"""Reading a ROS 2 MCAP recording of observations, actions and rewards.

A recording by :class:`sindyrl_ros.core.mcap_writer.TransitionLogWriter` (or any ROS 2
MCAP file with ``sensor_msgs/msg/JointState`` on the graph's topics, e.g. one recorded by
rosbag2) is read record by record, with CRC checks, without its summary section: a file
whose writer was killed reads up to its last complete chunk instead of being refused.
:func:`sindyrl_ros.core.recording.read_recording` reads a recording in segments and
:func:`sindyrl_ros.core.mcap_recovery.recover_recording` repairs a killed writer's files
with the same reader.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
import os
from pathlib import Path
import stat
import struct
from typing import BinaryIO

from mcap.exceptions import EndOfFile, McapError
from mcap.records import Channel, Header, McapRecord, Message, Metadata, Schema
from mcap.stream_reader import CRCValidationError, StreamReader
from mcap.well_known import MessageEncoding, SchemaEncoding
from mcap.writer import MCAP0_MAGIC
from mcap_ros2.decoder import DecoderFactory
import numpy as np

from sindyrl_ros.core.mcap_writer import (
    _NS,
    ACTION_TOPIC,
    JOINT_STATE_TYPE,
    OBSERVATION_TOPIC,
    RECORDING_METADATA,
    REWARD_TOPIC,
)

__all__ = ['LogFormatError', 'StampedVector', 'TransitionLog', 'read_transition_log']


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
