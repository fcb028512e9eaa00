"""Recordings in sessions and segments: writing, reading and counting their steps.

A killed writer leaves its file without the summary section and footer, and readers that
rely on the summary refuse such a file (the standard ``mcap.reader.make_reader`` raises
on it). So a long recording is split the way rosbag2 splits a bag:
:class:`SegmentedRecordingWriter` writes ``<directory>/session_<NNN>/segment_<NNNN>.mcap``,
one *session* per start of the graph (clocks may restart between starts, so stamps are
only ever compared within a session) and a new segment every ``segment_seconds``. Each
segment is a standalone file of :class:`sindyrl_ros.core.mcap_writer.TransitionLogWriter`;
every closed one is complete, so at most the open segment of a killed session needs
repair (:func:`sindyrl_ros.core.mcap_recovery.recover_recording`).
:func:`read_recording` reads a file, a session or a whole recording;
:func:`recorded_steps` counts the real plant steps a recording holds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
import os
from pathlib import Path
import re
import stat
import time

import numpy as np

from sindyrl_ros.core.mcap_reader import (
    LogFormatError,
    TransitionLog,
    _file_kind,
    _open_regular,
    _read_log,
)
from sindyrl_ros.core.mcap_writer import (
    ACTION_TOPIC,
    OBSERVATION_TOPIC,
    REWARD_TOPIC,
    TransitionLogWriter,
)

__all__ = [
    'MAX_SEGMENT_BYTES',
    'SegmentedRecordingWriter',
    'read_recording',
    'recorded_steps',
]

# The largest segment file read_recording and recover_recording load: a segment holds
# segment_seconds of a run (kilobytes to megabytes); anything far bigger is not one.
MAX_SEGMENT_BYTES = 2 * 1024**3
_SESSION_NAME = re.compile(r'session_(\d+)')
_SEGMENT_NAME = re.compile(r'segment_(\d+)\.mcap')


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
