"""MCAP recordings of observations/actions, and pairing them into transitions by stamp."""

import subprocess
import sys

from mcap.reader import make_reader
from mcap_ros2.decoder import DecoderFactory
import numpy as np
from pendulum_data import DT_NS, pendulum_episode, write_episode
from pendulum_data import RECORDED_ACTIONS as ACTION_NAMES
from pendulum_data import RECORDED_OBSERVATIONS as OBSERVATION_NAMES
import pytest

from sindyrl_ros.core.mcap_reader import LogFormatError, read_transition_log
from sindyrl_ros.core.mcap_writer import (
    ACTION_TOPIC,
    JOINT_STATE_TYPE,
    OBSERVATION_TOPIC,
    REWARD_TOPIC,
    TransitionLogWriter,
)
from sindyrl_ros.core.transitions import TransitionAssembler, assemble_log

DT = 0.05


def test_round_trip_is_exact(tmp_path):
    path = tmp_path / 'run' / 'transitions.mcap'
    rng = np.random.default_rng(0)
    observations = rng.standard_normal((50, 3)) * np.array([1.0, 1e-12, 1e6])
    actions = rng.uniform(-2, 2, (50, 1))
    stamps = [1_700_000_000_123_456_789 + k * DT_NS for k in range(50)]
    modes = ['explore'] * 20 + ['evaluate'] * 20 + ['safe'] * 10
    with TransitionLogWriter(path, metadata={'task': 'pendulum', 'control_period': '0.05'}) as w:
        for k in range(50):
            w.write_observation(stamps[k], OBSERVATION_NAMES, observations[k], log_time_ns=k)
            w.write_action(stamps[k], ACTION_NAMES, actions[k], modes[k], log_time_ns=k)
        assert (w.observations_written, w.actions_written) == (50, 50)

    log = read_transition_log(path)
    assert log.complete
    assert log.metadata == {'task': 'pendulum', 'control_period': '0.05'}
    assert [o.stamp_ns for o in log.observations] == stamps
    assert [a.stamp_ns for a in log.actions] == stamps
    assert all(o.names == OBSERVATION_NAMES and o.frame_id == '' for o in log.observations)
    assert all(a.names == ACTION_NAMES for a in log.actions)
    assert [a.frame_id for a in log.actions] == modes
    # float64 through CDR is bit-exact.
    np.testing.assert_array_equal(np.stack([o.values for o in log.observations]), observations)
    np.testing.assert_array_equal(np.stack([a.values for a in log.actions]), actions)


def test_file_is_a_standard_ros2_mcap(tmp_path):
    """What rosbag2 and Foxglove rely on: ros2 profile, ros2msg schemas, cdr, graph topics."""
    path = tmp_path / 'transitions.mcap'
    observations, actions, _ = pendulum_episode(seed=1, steps=30)
    with TransitionLogWriter(path) as writer:
        write_episode(writer, 0, observations, actions)

    with open(path, 'rb') as stream:
        reader = make_reader(stream, decoder_factories=[DecoderFactory()])
        assert reader.get_header().profile == 'ros2'
        summary = reader.get_summary()
        assert summary.statistics.message_count == 61
        assert {s.name for s in summary.schemas.values()} == {JOINT_STATE_TYPE}
        assert {s.encoding for s in summary.schemas.values()} == {'ros2msg'}
        assert {c.topic for c in summary.channels.values()} == {OBSERVATION_TOPIC, ACTION_TOPIC}
        assert {c.message_encoding for c in summary.channels.values()} == {'cdr'}
        decoded = {OBSERVATION_TOPIC: [], ACTION_TOPIC: []}
        for _, channel, _, message in reader.iter_decoded_messages():
            decoded[channel.topic].append(message)
    assert [list(m.position) for m in decoded[OBSERVATION_TOPIC]] == observations.tolist()
    assert [list(m.effort) for m in decoded[ACTION_TOPIC]] == actions.tolist()
    assert decoded[ACTION_TOPIC][3].header.stamp.nanosec == 3 * DT_NS
    assert decoded[ACTION_TOPIC][3].header.frame_id == 'explore'


def test_killed_writer_leaves_a_readable_prefix(tmp_path):
    path = tmp_path / 'killed.mcap'
    observations, actions, _ = pendulum_episode(seed=2, steps=40)
    writer = TransitionLogWriter(path)
    write_episode(writer, 0, observations[:21], actions[:20])
    writer.flush()  # what the node does periodically
    write_episode(writer, 21 * DT_NS, observations[21:], actions[20:])
    # Simulate a kill: the summary section is never written, the last chunk is cut short.
    writer._stream.flush()
    data = path.read_bytes()
    writer._stream.close()
    path.write_bytes(data[: len(data) - 10])

    log = read_transition_log(path)
    assert not log.complete
    assert len(log.observations) >= 21
    np.testing.assert_array_equal(
        np.stack([o.values for o in log.observations[:21]]), observations[:21]
    )


def test_not_a_recording_is_refused_with_the_file_named(tmp_path):
    path = tmp_path / 'model.json'
    path.write_text('{"format": "sindyrl_ros/model"}')
    with pytest.raises(LogFormatError, match='model.json'):
        read_transition_log(path)


def assembled_trajectories(events, max_jump=None):
    assembler = TransitionAssembler(DT, gap_factor=1.5, max_jump=max_jump)
    for kind, stamp, values, mode in events:
        if kind == 'observation':
            assembler.add_observation(stamp, values)
        else:
            assembler.add_action(stamp, values, mode)
    return assembler


def episode_events(start_ns, observations, actions, mode='explore'):
    events = []
    for k, observation in enumerate(observations):
        events.append(('observation', start_ns + k * DT_NS, observation, None))
        if k < len(actions):
            events.append(('action', start_ns + k * DT_NS, actions[k], mode))
    return events


def test_pairing_by_stamp_ignores_arrival_order():
    observations, actions, _ = pendulum_episode(seed=3, steps=60)
    events = episode_events(0, observations, actions)
    in_order = assembled_trajectories(events).trajectories()
    shuffled = list(events)
    np.random.default_rng(0).shuffle(shuffled)
    out_of_order = assembled_trajectories(shuffled).trajectories()
    assert len(in_order) == len(out_of_order) == 1
    for trajectory in (in_order[0], out_of_order[0]):
        np.testing.assert_array_equal(trajectory.observations, observations)
        np.testing.assert_array_equal(trajectory.actions, actions)
        np.testing.assert_allclose(trajectory.times, np.arange(61) * DT)


def test_gap_mode_change_and_reset_split_trajectories():
    first_obs, first_act, _ = pendulum_episode(seed=4, steps=30)
    second_obs, second_act, _ = pendulum_episode(seed=5, steps=30)
    third_obs, third_act, _ = pendulum_episode(seed=6, steps=30)
    events = episode_events(0, first_obs, first_act)
    # A gap of 2 control periods (> 1.5) after the first episode.
    events += episode_events((30 + 2) * DT_NS, second_obs, second_act)
    # Evaluation right after, no time gap: a different mode is a different trajectory,
    # and it is not training data.
    events += episode_events((30 + 2 + 31) * DT_NS, third_obs, third_act, mode='evaluate')
    assembler = assembled_trajectories(events)
    explore = assembler.trajectories()
    assert [t.n_steps for t in explore] == [30, 30]
    np.testing.assert_array_equal(explore[1].observations, second_obs)
    assert assembler.transition_counts() == {'explore': 60, 'evaluate': 30}
    evaluation = assembler.trajectories(modes=['evaluate'])
    assert [t.n_steps for t in evaluation] == [30]

    # A reset without a time gap: only the jump in the state shows it.
    events = episode_events(0, first_obs, first_act)
    events += episode_events(31 * DT_NS, second_obs, second_act)
    events.append(('action', 30 * DT_NS, first_act[0], 'explore'))  # answers the last state
    no_jump_check = assembled_trajectories(events).trajectories()
    assert [t.n_steps for t in no_jump_check] == [61]
    with_jump_check = assembled_trajectories(
        events, max_jump=np.array([0.6, 0.6, 2.0])
    ).trajectories()
    assert [t.n_steps for t in with_jump_check] == [30, 30]


def test_late_message_completes_its_transition():
    observations, actions, _ = pendulum_episode(seed=7, steps=5)
    assembler = TransitionAssembler(DT)
    completed = 0
    for k in (0, 2, 3, 4, 5):
        completed += assembler.add_observation(k * DT_NS, observations[k])
    for k in range(5):
        completed += assembler.add_action(k * DT_NS, actions[k], 'explore')
    assert completed == 3  # 0 -> 2 is a gap; 1 is missing
    assert completed + assembler.add_observation(DT_NS, observations[1]) == 5
    assert [t.n_steps for t in assembler.trajectories()] == [5]


def test_assemble_log_gives_the_recorded_trajectories(tmp_path):
    path = tmp_path / 'transitions.mcap'
    observations, actions, _ = pendulum_episode(seed=8, steps=40)
    with TransitionLogWriter(path) as writer:
        write_episode(writer, 10 * DT_NS, observations, actions)
    trajectories = assemble_log(read_transition_log(path), DT).trajectories()
    assert len(trajectories) == 1
    np.testing.assert_array_equal(trajectories[0].observations, observations)
    np.testing.assert_array_equal(trajectories[0].actions, actions)


def test_rewards_pair_by_stamp_and_survive_the_recording(tmp_path):
    """The plant's rewards join the transition of their stamp, in any order, and are kept."""
    observations, actions, _ = pendulum_episode(seed=9, steps=20)
    rewards = -np.arange(20, dtype=np.float64) / 7.0
    path = tmp_path / 'rewards.mcap'
    order = np.random.default_rng(1).permutation(20)
    with TransitionLogWriter(path) as writer:
        write_episode(writer, 0, observations, actions)
        for k in order:
            if k != 12:  # one reward lost on the way
                writer.write_reward(int(k) * DT_NS, rewards[k])
        assert writer.rewards_written == 19
    log = read_transition_log(path)
    assert len(log.rewards) == 19 and all(r.names == ('reward',) for r in log.rewards)
    assembler = assemble_log(log, DT)
    assert assembler.n_rewards == 19
    assert assembler.rewarded_counts() == {'explore': 19}
    # Rewards never decide what a transition is: the dynamics still get all 20 steps.
    (everything,) = assembler.trajectories()
    assert everything.n_steps == 20 and everything.rewards is None
    # For a reward model: only rewarded transitions, cut where a reward is missing.
    rewarded = assembler.trajectories(rewards=True)
    assert [t.n_steps for t in rewarded] == [12, 7]
    np.testing.assert_array_equal(rewarded[0].rewards, rewards[:12])
    np.testing.assert_array_equal(rewarded[1].rewards, rewards[13:])
    np.testing.assert_array_equal(rewarded[1].observations, observations[13:])
    # A repeated stamp keeps the first reward; a non-finite one is refused.
    assert not assembler.add_reward(0, 5.0) and assembler.duplicates == 1
    assert not assembler.add_reward(12 * DT_NS, float('nan'))
    assert assembler.add_reward(12 * DT_NS, rewards[12])
    (whole,) = assembler.trajectories(rewards=True)
    np.testing.assert_array_equal(whole.rewards, rewards)
    # The file is a standard ROS 2 recording with the reward on its own topic.
    with open(path, 'rb') as stream:
        topics = {channel.topic for channel in make_reader(stream).get_summary().channels.values()}
    assert topics == {OBSERVATION_TOPIC, ACTION_TOPIC, REWARD_TOPIC}


def test_needs_no_rclpy():
    """core/ must run where ROS is not installed: the MCAP code writes CDR from schema text."""
    modules = ('mcap_writer', 'mcap_reader', 'mcap_recovery', 'recording', 'transitions')
    imports = ', '.join(f'sindyrl_ros.core.{module}' for module in modules)
    code = f'import sys, {imports}; assert "rclpy" not in sys.modules'
    subprocess.run([sys.executable, '-c', code], check=True, timeout=60)


def test_fast_joint_states_pair_at_the_control_period():
    """A robot's broadcaster at 1 kHz, a controller answering every 50th observation (with
    jitter): transitions run from one answered observation to the next, never to the
    observation a millisecond later, and unanswered observations do not pile up."""
    rng = np.random.default_rng(7)
    observations, actions, _ = pendulum_episode(seed=8, steps=400)
    assembler = TransitionAssembler(DT, gap_factor=1.5)
    answered = []
    stamp = 0
    for k, observation in enumerate(observations):
        answered.append(stamp)
        assembler.add_observation(stamp, observation)
        # 49 to 50 states in between: the controller's timer jitters (not before the last
        # state, which no answer follows: the state nearest a control period ends that step).
        steps_between = 50 - int(rng.integers(0, 2)) if 0 < k < len(actions) - 1 else 50
        for j in range(1, steps_between):
            assembler.add_observation(stamp + j * 1_000_000, observation + 1e-3 * j)
        if k < len(actions):
            assembler.add_action(stamp, actions[k], 'explore')
        stamp += steps_between * 1_000_000
    # The last observation was never answered: it ends the last step all the same.
    trajectories = assembler.trajectories()
    assert len(trajectories) == 1
    np.testing.assert_array_equal(trajectories[0].observations, observations)
    np.testing.assert_array_equal(trajectories[0].actions, actions)
    np.testing.assert_array_equal(trajectories[0].times, np.asarray(answered) / 1e9)
    assert assembler.transition_counts() == {'explore': len(actions)}
    # 400 steps of 49 unanswered observations = 19,600; kept: about 5 s of them.
    assert assembler.n_observations < 2 * (2048 + 5_000)


def test_channels_carry_the_qos_they_were_recorded_with(tmp_path):
    """rosbag2 replays a topic with the QoS stored in the channel: reliable, depth 1000."""
    import yaml

    path = tmp_path / 'qos.mcap'
    writer = TransitionLogWriter(path)
    writer.write_observation(DT_NS, OBSERVATION_NAMES, np.zeros(3))
    writer.write_action(DT_NS, ACTION_NAMES, np.zeros(1), 'explore')
    writer.write_reward(DT_NS, -1.0)
    writer.close()
    with open(path, 'rb') as stream:
        channels = make_reader(stream).get_summary().channels
    by_topic = {channel.topic: channel for channel in channels.values()}
    assert set(by_topic) == {'/sindyrl/observation', '/sindyrl/action', '/sindyrl/reward'}
    for channel in by_topic.values():
        (profile,) = yaml.safe_load(channel.metadata['offered_qos_profiles'])
        assert (profile['reliability'], profile['depth'], profile['history']) == (1, 1000, 1)
