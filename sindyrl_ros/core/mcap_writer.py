"""Durable recording of observations, actions and rewards as a ROS 2 MCAP file.

Real interactions are the scarce resource of SINDy-RL, so every observation, action and
reported reward the plant produced is kept on disk: a later run can refit from it
(``initial_log``) and an operator can inspect it in Foxglove or replay it with rosbag2.
The file is a plain ROS 2 MCAP file (profile ``ros2``, schema encoding ``ros2msg``,
message encoding ``cdr``, ``sensor_msgs/msg/JointState`` on the same topic names as on
the graph), written with ``mcap`` + ``mcap_ros2`` from the message definition text, so
this module needs no rclpy.

Chunks are completed and flushed to disk by :meth:`TransitionLogWriter.flush` (a node
calls it periodically), and :func:`sindyrl_ros.core.mcap_reader.read_transition_log`
reads a file whose writer was killed up to the last complete chunk instead of refusing
it. A long recording is written as a series of such files by
:class:`sindyrl_ros.core.recording.SegmentedRecordingWriter`.
"""

from __future__ import annotations

from collections.abc import Sequence
import os
from pathlib import Path
import time

from mcap_ros2.writer import Writer as Ros2Writer
import numpy as np

try:  # POSIX: a live writer holds a lock on its open file, so recovery leaves it alone
    import fcntl
except ImportError:  # pragma: no cover (Windows)
    fcntl = None

__all__ = [
    'ACTION_TOPIC',
    'JOINT_STATE_SCHEMA',
    'JOINT_STATE_TYPE',
    'OBSERVATION_TOPIC',
    'RECORDING_METADATA',
    'REWARD_NAME',
    'REWARD_TOPIC',
    'TransitionLogWriter',
]

OBSERVATION_TOPIC = '/sindyrl/observation'
ACTION_TOPIC = '/sindyrl/action'
# sensor_msgs/JointState with name = [REWARD_NAME], position = [reward], header.stamp = the
# stamp of the observation the step started from (= the stamp of the action applied).
REWARD_TOPIC = '/sindyrl/reward'
REWARD_NAME = 'reward'
# The QoS of the recorded topics (ros.qos.TRANSITION_QOS: reliable, keep last 1000,
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
RECORDING_METADATA = 'sindyrl_ros/recording'
_CHUNK_SIZE = 256 * 1024

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
