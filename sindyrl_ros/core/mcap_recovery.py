"""Recovery of the MCAP files a killed writer left without their summary and footer.

:func:`recover_recording` finds every ``.mcap`` file of a recording that ends without a
footer whose CRC holds, and rewrites it as a complete MCAP file (every record it reads
copied, each field kept), in place and atomically; complete files and the file of a live
writer are left alone.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
import os
from pathlib import Path
import stat
import struct
import tempfile
from typing import BinaryIO
import zlib

from mcap.opcode import Opcode
from mcap.records import Attachment, Channel, Header, McapRecord, Message, Metadata, Schema
from mcap.writer import MCAP0_MAGIC
from mcap.writer import Writer as McapWriter

from sindyrl_ros.core.mcap_reader import LogFormatError, _file_kind, _open_regular, _read_log
from sindyrl_ros.core.mcap_writer import (
    _CHUNK_SIZE,
    ACTION_TOPIC,
    OBSERVATION_TOPIC,
    REWARD_TOPIC,
    _try_lock,
)
from sindyrl_ros.core.recording import MAX_SEGMENT_BYTES, _fsync_directory

__all__ = ['RecoveredSegment', 'recover_recording']

# Footer record: opcode (1), length (8), summary_start (8), summary_offset_start (8),
# summary_crc (4); the file then ends with the magic.
_FOOTER_BYTES = 1 + 8 + 8 + 8 + 4


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
