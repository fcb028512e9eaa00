"""Recorded sessions read back, checked and paired on their own, as the model updater does."""

import json

import numpy as np
from pendulum_data import pendulum_episode
import pytest

from sindyrl_ros.core.mcap_writer import TransitionLogWriter
from sindyrl_ros.core.recording import SegmentedRecordingWriter, read_recording
from sindyrl_ros.core.serialization import FormatError
from sindyrl_ros.core.session_replay import (
    read_sessions,
    recording_metadata,
    reorder,
    replay_session,
    transition_assembler,
)
from sindyrl_ros.core.tasks import get_task

TASK = get_task('pendulum')
NAMES = list(TASK.observation_names)  # cos_theta, sin_theta, theta_dot
ACTIONS = list(TASK.action_names)
DT_NS = 50_000_000




def record(writer, episode, names=NAMES, start_ns=10**9):
    """An episode as it is recorded; observation features in the order of ``names``."""
    observations, actions, rewards = episode
    order = [NAMES.index(name) for name in names]
    for k, observation in enumerate(observations):
        stamp = start_ns + k * DT_NS
        writer.write_observation(stamp, names, observation[order], log_time_ns=stamp + 1000)
        if k < len(actions):
            writer.write_action(stamp, ACTIONS, actions[k], 'explore', log_time_ns=stamp + 2000)
            writer.write_reward(stamp, rewards[k], log_time_ns=stamp + 3000)


def test_sessions_are_paired_on_their_own_and_copied_unchanged(tmp_path):
    first, second = pendulum_episode(0, 60), pendulum_episode(1, 40)
    earlier = tmp_path / 'earlier'
    # Two starts of a simulator: the second's clock starts at 0 again (same stamps), and
    # a rosbag2-style recorder named the features in another order.
    for episode, names in ((first, NAMES), (second, NAMES[::-1])):
        with SegmentedRecordingWriter(earlier, recording_metadata(TASK)) as writer:
            record(writer, episode, names)
    logs, warnings = read_sessions(earlier, NAMES)
    assert len(logs) == 2 and warnings == []
    assert json.loads(logs[0].metadata['observation_names']) == NAMES
    assert logs[0].metadata['control_period'] == repr(TASK.dt)

    run = tmp_path / 'run'
    sessions = []
    for log in logs:
        with SegmentedRecordingWriter(run, recording_metadata(TASK)) as copy:
            sessions.append(
                replay_session(log, transition_assembler(TASK), NAMES, ACTIONS, copy=copy)
            )
    for session, (observations, actions, rewards) in zip(sessions, (first, second)):
        assert session.transition_counts() == {'explore': len(actions)}
        [trajectory] = session.trajectories(rewards=True)
        np.testing.assert_array_equal(trajectory.observations, observations)
        np.testing.assert_array_equal(trajectory.actions, actions)
        np.testing.assert_allclose(trajectory.rewards, rewards)
    # The copy holds every message in the task's order, with its stamp, mode and log time.
    copied = read_recording(run)
    for log, original in zip(copied, logs):
        assert [o.names for o in log.observations] == [tuple(NAMES)] * len(log.observations)
        assert [o.stamp_ns for o in log.observations] == [
            o.stamp_ns for o in original.observations
        ]
        assert [a.log_time_ns for a in log.actions] == [a.log_time_ns for a in original.actions]
        assert {a.frame_id for a in log.actions} == {'explore'}
        assert len(log.rewards) == len(original.rewards)
    np.testing.assert_array_equal(copied[1].observations[5].values, second[0][5])


def test_a_recording_of_other_observations_is_refused(tmp_path):
    path = tmp_path / 'other.mcap'
    names = ['x', 'y', 'z']
    with TransitionLogWriter(path, {'observation_names': json.dumps(names)}) as writer:
        writer.write_observation(10**9, names, np.zeros(3))
    with pytest.raises(ValueError, match=r'records observations \["x", .*the task has'):
        read_sessions(path, NAMES)
    broken = tmp_path / 'broken.mcap'
    with TransitionLogWriter(broken, {'observation_names': '["cos_theta", '}) as writer:
        writer.write_observation(10**9, NAMES, np.zeros(3))
    with pytest.raises(FormatError, match=str(broken)):
        read_sessions(broken, NAMES)


def test_a_session_cut_short_is_used_with_a_warning(tmp_path):
    writer = SegmentedRecordingWriter(tmp_path / 'run', recording_metadata(TASK))
    record(writer, pendulum_episode(2, 30))
    writer.flush()  # on disk, but never closed: its writer was killed
    logs, warnings = read_sessions(tmp_path / 'run', NAMES)
    assert not logs[0].complete
    assert len(warnings) == 1 and 'a segment ends early' in warnings[0]
    assert f'the {len(logs[0].observations)} observations' in warnings[0]
    writer.close()


def test_messages_without_the_task_names_are_left_out_and_reported(tmp_path):
    path = tmp_path / 'log.mcap'
    observations, actions, rewards = pendulum_episode(3, 20)
    with TransitionLogWriter(path) as writer:
        record(writer, (observations, actions, rewards))
        writer.write_observation(5 * 10**9, ['cos_theta', 'sin_theta'], np.zeros(2))
        writer.write_action(5 * 10**9, ['force'], np.zeros(1), 'explore')
    [log], _ = read_sessions(path, NAMES)
    rejected = []
    session = replay_session(
        log, transition_assembler(TASK), NAMES, ACTIONS, reject=rejected.append
    )
    assert session.n_observations == 21 and session.n_actions == 20
    assert rejected == [
        "recorded names ['cos_theta', 'sin_theta'], need ['cos_theta', 'sin_theta', 'theta_dot']",
        "recorded names ['force'], need ['torque']",
    ]
    assert reorder(['b', 'a'], np.array([2.0, 1.0]), ['a', 'b']).tolist() == [1.0, 2.0]
    assert reorder(['a', 'b'], np.array([1.0]), ['a']) is None  # lengths differ


def test_a_plant_reset_splits_a_trajectory_unless_jumps_are_allowed():
    observations, actions, _ = pendulum_episode(4, 40)
    # The plant was reset after step 20: the state moves without a step of the dynamics.
    observations[21:] = pendulum_episode(5, 19)[0]
    for jump, pieces in ((0.25, [20, 19]), (0.0, [40])):
        assembler = transition_assembler(TASK, max_observation_jump=jump)
        for k, observation in enumerate(observations):
            assembler.add_observation(k * DT_NS, observation)
            if k < len(actions):
                assembler.add_action(k * DT_NS, actions[k], 'explore')
        assert [t.n_steps for t in assembler.trajectories()] == pieces
