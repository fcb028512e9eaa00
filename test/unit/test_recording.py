"""Recordings in sessions and segments, and recovery of the files a killed writer left."""

import os
import signal
import subprocess
import sys

from mcap.exceptions import McapError
from mcap.reader import make_reader
from mcap_ros2.decoder import DecoderFactory
import numpy as np
from pendulum_data import DT_NS, pendulum_episode, write_episode
from pendulum_data import RECORDED_OBSERVATIONS as OBSERVATION_NAMES
import pytest

from sindyrl_ros.core import recording
from sindyrl_ros.core.mcap_reader import LogFormatError, read_transition_log
from sindyrl_ros.core.mcap_recovery import RecoveredSegment, recover_recording
from sindyrl_ros.core.mcap_writer import (
    ACTION_TOPIC,
    OBSERVATION_TOPIC,
    RECORDING_METADATA,
    REWARD_TOPIC,
    TRANSITION_QOS_YAML,
    TransitionLogWriter,
)
from sindyrl_ros.core.recording import SegmentedRecordingWriter, read_recording, recorded_steps


def standard_read(path):
    """What a standard MCAP reader (it needs the summary) makes of a file.

    Returns the summary, the messages as (topic, log time, decoded message) and the
    metadata records by name.
    """
    with open(path, 'rb') as stream:
        reader = make_reader(stream, decoder_factories=[DecoderFactory()])
        summary = reader.get_summary()
        messages = [
            (channel.topic, message.log_time, decoded)
            for _, channel, message, decoded in reader.iter_decoded_messages()
        ]
        metadata = {record.name: dict(record.metadata) for record in reader.iter_metadata()}
    return summary, messages, metadata


def stamp_of(message):
    return message.header.stamp.sec * 1_000_000_000 + message.header.stamp.nanosec


def segment_names(directory):
    return sorted(path.name for path in directory.iterdir())


def test_segments_roll_over_on_flush_and_each_is_a_standard_mcap(tmp_path):
    now = [100.0]
    observations, actions, _ = pendulum_episode(seed=10, steps=30)
    root = tmp_path / 'recording'
    writer = SegmentedRecordingWriter(
        root, metadata={'task': 'pendulum'}, segment_seconds=10.0, clock=lambda: now[0]
    )
    session = root / 'session_000'
    assert (writer.session, writer.directory) == (0, session) and session.is_dir()
    assert writer.segment_path is None and segment_names(session) == []

    write_episode(writer, 0, observations[:10], actions[:10])
    writer.flush()  # 0 s old: flushed, stays open
    now[0] += 9.9
    writer.flush()
    assert segment_names(session) == ['segment_0000.mcap']
    with pytest.raises(McapError):  # open: no summary yet, the standard reader refuses it
        standard_read(session / 'segment_0000.mcap')
    now[0] += 0.1
    writer.flush()  # 10 s old: closed
    assert standard_read(session / 'segment_0000.mcap')[0].statistics.message_count == 20
    now[0] += 100.0
    writer.flush()  # nothing written since: no segment opened, none closed
    assert segment_names(session) == ['segment_0000.mcap']

    write_episode(writer, 10 * DT_NS, observations[10:25], actions[10:25])
    for k in range(10, 15):
        writer.write_reward(k * DT_NS, -k / 10)
    assert writer.segment_path == session / 'segment_0001.mcap'
    now[0] += 25.0
    writer.flush()
    write_episode(writer, 25 * DT_NS, observations[25:], actions[25:])
    writer.close()
    writer.close()  # idempotent
    with pytest.raises(ValueError, match='closed'):
        writer.write_observation(0, OBSERVATION_NAMES, observations[0])
    assert segment_names(session) == [f'segment_000{k}.mcap' for k in range(3)]
    assert writer.segment_path == session / 'segment_0002.mcap'
    assert (writer.observations_written, writer.actions_written) == (31, 30)
    assert writer.rewards_written == 5

    expected = [(10, 10, 0), (15, 15, 5), (6, 5, 0)]
    for index, counts in enumerate(expected):
        summary, messages, metadata = standard_read(session / f'segment_000{index}.mcap')
        topics = [topic for topic, *_ in messages]
        assert tuple(map(topics.count, (OBSERVATION_TOPIC, ACTION_TOPIC, REWARD_TOPIC))) == counts
        assert summary.statistics.message_count == sum(counts)
        assert metadata == {
            RECORDING_METADATA: {'task': 'pendulum', 'session': '0', 'segment': str(index)}
        }

    for path in (root, session):
        (log,) = read_recording(path)
        assert log.complete
        assert log.metadata == {'task': 'pendulum', 'session': '0', 'segment': '0'}
        assert [o.stamp_ns for o in log.observations] == [k * DT_NS for k in range(31)]
        np.testing.assert_array_equal(np.stack([o.values for o in log.observations]), observations)
        np.testing.assert_array_equal(np.stack([a.values for a in log.actions]), actions)
        assert [r.stamp_ns for r in log.rewards] == [k * DT_NS for k in range(10, 15)]
    assert [len(read_recording(p)[0].observations) for p in sorted(session.iterdir())] == [
        10,
        15,
        6,
    ]


def test_segment_seconds_must_be_positive_and_failed_writes_leave_no_segment(tmp_path):
    for bad in (0.0, -1.0, float('nan')):
        with pytest.raises(ValueError, match='segment_seconds must be > 0'):
            SegmentedRecordingWriter(tmp_path / 'bad', segment_seconds=bad)
    writer = SegmentedRecordingWriter(tmp_path / 'failed')
    with pytest.raises(ValueError, match='stamp'):
        writer.write_observation(-1, OBSERVATION_NAMES, np.zeros(3))
    writer.close()
    assert segment_names(writer.directory) == [] and writer.segment_path is None
    assert writer.observations_written == 0


# A real writer in its own process, killed with SIGKILL while its second segment is open.
KILLED_WRITER = """
import sys, time
import numpy as np
from sindyrl_ros.core.recording import SegmentedRecordingWriter

now = [0.0]
writer = SegmentedRecordingWriter(
    sys.argv[1], metadata={'task': 'pendulum'}, segment_seconds=1.0, clock=lambda: now[0]
)

def step(k):
    stamp = k * 50_000_000
    writer.write_observation(stamp, ('cos', 'sin', 'thdot'), [k, -k, k / 8], log_time_ns=10 * k)
    writer.write_action(stamp, ('u',), [k / 4], 'explore', log_time_ns=10 * k + 1)
    writer.write_reward(stamp, -k / 2, log_time_ns=10 * k + 2)

for k in range(20):
    step(k)
writer.flush()  # 0 s old: flushed, stays open
now[0] = 1.0
writer.flush()  # 1 s old: segment 0 closed
for k in range(20, 35):
    step(k)
writer.flush()  # segment 1: on disk, still open
for k in range(35, 40):
    step(k)  # never flushed: dies with the process
print('ready', flush=True)
time.sleep(600)
"""


def assert_steps(log, ks):
    """The log holds exactly the steps ks of KILLED_WRITER, every field as written."""
    ks = list(ks)
    stamps = [k * DT_NS for k in ks]
    for messages in (log.observations, log.actions, log.rewards):
        assert [m.stamp_ns for m in messages] == stamps
    assert [o.log_time_ns for o in log.observations] == [10 * k for k in ks]
    assert [a.log_time_ns for a in log.actions] == [10 * k + 1 for k in ks]
    assert [r.log_time_ns for r in log.rewards] == [10 * k + 2 for k in ks]
    assert [o.values.tolist() for o in log.observations] == [[k, -k, k / 8] for k in ks]
    assert [a.values.tolist() for a in log.actions] == [[k / 4] for k in ks]
    assert [a.frame_id for a in log.actions] == ['explore'] * len(ks)
    assert [r.values.tolist() for r in log.rewards] == [[-k / 2] for k in ks]


def assert_standard_segment(path, index, ks):
    """The standard reader reads the steps ks, the metadata record and the channels' QoS."""
    summary, messages, metadata = standard_read(path)
    assert metadata == {
        RECORDING_METADATA: {'task': 'pendulum', 'session': '0', 'segment': str(index)}
    }
    assert {c.topic for c in summary.channels.values()} == {
        OBSERVATION_TOPIC,
        ACTION_TOPIC,
        REWARD_TOPIC,
    }
    for channel in summary.channels.values():
        assert channel.metadata == {'offered_qos_profiles': TRANSITION_QOS_YAML}
    for topic, offset, field_name, values in (
        (OBSERVATION_TOPIC, 0, 'position', lambda k: [k, -k, k / 8]),
        (ACTION_TOPIC, 1, 'effort', lambda k: [k / 4]),
        (REWARD_TOPIC, 2, 'position', lambda k: [-k / 2]),
    ):
        on_topic = [(log_time, m) for t, log_time, m in messages if t == topic]
        assert [log_time for log_time, _ in on_topic] == [10 * k + offset for k in ks]
        assert [stamp_of(m) for _, m in on_topic] == [k * DT_NS for k in ks]
        assert [list(getattr(m, field_name)) for _, m in on_topic] == [values(k) for k in ks]


def test_a_killed_writer_loses_only_what_it_never_flushed_and_recovery_completes_it(tmp_path):
    root = tmp_path / 'recording'
    session = root / 'session_000'
    closed, open_segment = session / 'segment_0000.mcap', session / 'segment_0001.mcap'
    child = subprocess.Popen(
        [sys.executable, '-c', KILLED_WRITER, str(root)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout.readline().strip() == 'ready'
        # While the writer lives, its closed segment is already a standard MCAP file...
        assert_standard_segment(closed, 0, range(20))
        # ... and recovery leaves the segment it still writes alone.
        live_bytes = open_segment.read_bytes()
        assert recover_recording(root) == []
        assert open_segment.read_bytes() == live_bytes
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    assert segment_names(session) == ['segment_0000.mcap', 'segment_0001.mcap']

    (log,) = read_recording(root)
    assert not log.complete
    assert log.metadata == {'task': 'pendulum', 'session': '0', 'segment': '0'}
    assert_steps(log, range(35))  # every flushed step, not the 5 never flushed
    with pytest.raises(McapError):  # no summary, no footer: the standard reader refuses it
        standard_read(open_segment)

    closed_bytes = closed.read_bytes()
    (recovered,) = recover_recording(root)
    assert recovered == RecoveredSegment(
        path=open_segment,
        observations=15,
        actions=15,
        rewards=15,
        bytes_before=len(live_bytes),
        bytes_after=open_segment.stat().st_size,
    )
    assert closed.read_bytes() == closed_bytes  # complete: untouched
    assert_standard_segment(closed, 0, range(20))
    assert_standard_segment(open_segment, 1, range(20, 35))
    (log,) = read_recording(root)
    assert log.complete
    assert_steps(log, range(35))

    files = {path: path.read_bytes() for path in session.iterdir()}
    assert recover_recording(root) == []
    assert {path: path.read_bytes() for path in session.iterdir()} == files


def test_recovery_of_a_file_cut_mid_chunk_and_of_a_segment_killed_as_it_was_created(tmp_path):
    # A writer killed mid-chunk: the file ends inside a record.
    path = tmp_path / 'cut' / 'run.mcap'
    observations, actions, _ = pendulum_episode(seed=11, steps=40)
    writer = TransitionLogWriter(path, metadata={'task': 'pendulum'})
    write_episode(writer, 0, observations[:21], actions[:20])
    writer.flush()
    flushed = path.stat().st_size
    write_episode(writer, 21 * DT_NS, observations[21:], actions[20:])
    writer._writer._writer.flush()  # the next chunk and its index reach the file...
    writer._stream.close()
    data = path.read_bytes()
    path.write_bytes(data[: (flushed + len(data)) // 2])  # ... but only half of them
    before = read_transition_log(path)
    assert not before.complete and len(before.observations) == 21
    (recovered,) = recover_recording(path)
    assert (recovered.observations, recovered.actions, recovered.rewards) == (21, 20, 0)
    _, messages, metadata = standard_read(path)
    assert metadata == {RECORDING_METADATA: {'task': 'pendulum'}}
    decoded = [m for topic, _, m in messages if topic == OBSERVATION_TOPIC]
    assert [list(m.position) for m in decoded] == observations[:21].tolist()

    # A segment killed before its header reached the disk: 0 bytes, holds nothing.
    root = tmp_path / 'recording'
    with SegmentedRecordingWriter(root, metadata={'task': 'pendulum'}) as writer:
        write_episode(writer, 0, observations[:5], actions[:5])
    empty = writer.directory / 'segment_0001.mcap'
    empty.touch()
    (log,) = read_recording(root)
    assert not log.complete and len(log.observations) == 5
    assert log.metadata['segment'] == '0'
    (recovered,) = recover_recording(root)
    assert recovered.path == empty and recovered.bytes_before == 0 < recovered.bytes_after
    assert (recovered.observations, recovered.actions, recovered.rewards) == (0, 0, 0)
    summary, messages, _ = standard_read(empty)
    assert messages == [] and summary.statistics.message_count == 0
    assert read_recording(root)[0].complete
    assert recover_recording(root) == []


def test_sessions_are_numbered_after_existing_ones_and_read_apart(tmp_path):
    root = tmp_path / 'run'
    names = ('u',)
    with SegmentedRecordingWriter(root) as first:
        assert first.session == 0
        for k in range(10):
            first.write_observation(k * DT_NS, OBSERVATION_NAMES, np.full(3, k))
            first.write_action(k * DT_NS, names, [k], 'explore')
        first.write_action(9 * DT_NS, names, [0.0], 'safe')  # a repeat: the same step
    # The graph restarts: its clock too, so the same stamps come again.
    with SegmentedRecordingWriter(root) as second:
        assert (second.session, second.directory.name) == (1, 'session_001')
        for k in range(15):
            second.write_observation(k * DT_NS, OBSERVATION_NAMES, np.full(3, 100 + k))
            second.write_action(k * DT_NS, names, [k], 'explore' if k < 10 else 'evaluate')
    (root / 'session_007').mkdir()  # started, killed before it recorded anything
    with SegmentedRecordingWriter(root) as third:
        assert (third.session, third.directory.name) == (8, 'session_008')
    # An explicit session continues after its last segment, never over it.
    with SegmentedRecordingWriter(root, session=1) as again:
        again.write_action(20 * DT_NS, names, [20.0], 'explore')
    assert segment_names(root / 'session_001') == ['segment_0000.mcap', 'segment_0001.mcap']

    logs = read_recording(root)
    assert [log.metadata['session'] for log in logs] == ['0', '1']
    assert [o.values[0] for o in logs[0].observations] == list(range(10))
    assert [o.values[0] for o in logs[1].observations] == list(range(100, 115))
    assert [a.stamp_ns for a in logs[1].actions] == [k * DT_NS for k in (*range(15), 20)]
    assert recorded_steps(logs[0]) == {'explore': 10}
    # Per session: 10 + 11 exploration steps although both sessions share stamps 0-9.
    assert recorded_steps(logs) == {'explore': 21, 'evaluate': 5}


@pytest.mark.timeout(60)
def test_what_is_not_a_recording_is_refused(tmp_path, monkeypatch):
    # A file that is not MCAP, where a segment should be.
    junk = tmp_path / 'junk' / 'session_000'
    junk.mkdir(parents=True)
    (junk / 'segment_0000.mcap').write_text('{"format": "sindyrl_ros/model"}')
    for call in (recover_recording, read_recording):
        with pytest.raises(LogFormatError, match='segment_0000.mcap'):
            call(tmp_path / 'junk')

    # A FIFO is refused at once; opening it for reading would wait for a writer forever.
    fifo_session = tmp_path / 'fifo' / 'session_000'
    fifo_session.mkdir(parents=True)
    fifo = fifo_session / 'segment_0000.mcap'
    os.mkfifo(fifo)
    for call, path in (
        (read_recording, fifo),
        (read_recording, fifo_session),
        (read_recording, tmp_path / 'fifo'),
        (recover_recording, tmp_path / 'fifo'),
        (recover_recording, fifo),
        (read_transition_log, fifo),
    ):
        with pytest.raises(LogFormatError, match='FIFO'):
            call(path)

    # Directories without recordings.
    (tmp_path / 'empty').mkdir()
    (tmp_path / 'other').mkdir()
    (tmp_path / 'other' / 'notes.txt').write_text('no recording here')
    (tmp_path / 'empty_sessions' / 'session_000').mkdir(parents=True)
    for path in ('empty', 'other', 'empty_sessions'):
        with pytest.raises(LogFormatError, match=path):
            read_recording(tmp_path / path)
    with pytest.raises(FileNotFoundError):
        read_recording(tmp_path / 'missing')
    assert recover_recording(tmp_path / 'missing') == []

    # A file larger than a segment can be is not loaded.
    with SegmentedRecordingWriter(tmp_path / 'big') as writer:
        writer.write_observation(0, OBSERVATION_NAMES, np.zeros(3))
    monkeypatch.setattr(recording, 'MAX_SEGMENT_BYTES', 64)
    with pytest.raises(LogFormatError, match='MAX_SEGMENT_BYTES'):
        read_recording(tmp_path / 'big')
