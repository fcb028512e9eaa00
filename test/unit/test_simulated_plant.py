"""The simulated plant's rules on a real gymnasium Pendulum-v1 (no ROS)."""

import math

import numpy as np
import pytest

from sindyrl_ros.core.episodes import EpisodeLedger
from sindyrl_ros.core.simulated_plant import JointMapping, SimulatedPlant, checked_command
from sindyrl_ros.core.tasks import TASKS
from sindyrl_ros.params import ParameterError

GAP_NS = 1_000_000_000


def make_plant(episode_length=5, paused=False, low=None, high=None):
    task = TASKS['pendulum']
    env = task.make_env(seed=0)
    observation, _ = env.reset(seed=0)
    ledger = EpisodeLedger(None, episode_length, task.name)
    return SimulatedPlant(
        env,
        observation,
        ledger,
        task.action_low if low is None else low,
        task.action_high if high is None else high,
        task.dt,
        GAP_NS,
        paused=paused,
    )


def test_joint_mapping_turns_cos_sin_into_an_angle_and_names_bad_parameters():
    names = ['cos_theta', 'sin_theta', 'theta_dot']
    joints = JointMapping(['pole'], ['atan2(sin_theta, cos_theta)'], ['theta_dot'], names)
    observation = np.array([math.cos(2.5), math.sin(2.5), -0.75])
    assert joints.positions(observation) == pytest.approx([2.5])
    assert joints.velocities(observation) == [-0.75]
    with pytest.raises(ParameterError) as error:
        JointMapping(['pole'], ['theta'], [], names)
    assert error.value.parameter == 'joint_positions' and "'theta'" in error.value.problem
    with pytest.raises(ParameterError) as error:
        JointMapping(['a', 'a'], ['cos_theta', 'sin_theta'], [], names)
    assert error.value.parameter == 'joint_names'
    with pytest.raises(ParameterError) as error:
        JointMapping(['a'], ['cos_theta'], ['theta_dot', 'theta_dot'], names)
    assert error.value.parameter == 'joint_velocities'
    assert 'one entry per joint' in error.value.problem
    with pytest.raises(ParameterError) as error:
        # atan2 is for positions only: a velocity names one observation
        JointMapping(['a'], ['cos_theta'], ['atan2(sin_theta, cos_theta)'], names)
    assert error.value.parameter == 'joint_velocities'


def test_commands_of_the_wrong_length_or_non_finite_are_refused_others_clipped():
    low, high = np.array([-1.0]), np.array([1.0])
    assert checked_command([0.5, 0.5], low, high)[:2] == (None, 'command_length')
    for bad in (math.nan, math.inf, -math.inf):
        assert checked_command([bad], low, high)[:2] == (None, 'command_nonfinite')
    command, reason, _ = checked_command([3.0], low, high)
    assert command.tolist() == [1.0] and reason == 'clipped'
    command, reason, _ = checked_command([-0.25], low, high)
    assert command.tolist() == [-0.25] and reason == ''


def test_lockstep_applies_only_the_answer_to_the_state_out():
    plant = make_plant()
    action = np.array([0.5])
    assert plant.answer(action, None, 0.0).outcome == 'late'  # nothing published yet
    assert plant.publish_or_hold()
    plant.published()
    first = plant.state_stamp_ns
    assert first == GAP_NS  # the first state is at the reset gap, never 0
    assert plant.answer(action, first + 1, 0.0).outcome == 'future'
    assert plant.waiting
    answer = plant.answer(action, first, 0.0)
    assert answer.outcome == 'stepped' and answer.applied and math.isfinite(answer.reward)
    assert plant.real_steps == 1 and plant.time_ns == first + plant.dt_ns
    # A second answer to the same state is late: it never moves the plant.
    assert plant.answer(action, first, 0.0).outcome == 'late'
    assert plant.real_steps == 1


def test_a_pause_holds_the_next_state_and_resume_publishes_it():
    plant = make_plant()
    plant.published()
    assert not plant.pause(True, lockstep=True)
    # The answer to the state already out is still applied, then the next state is held.
    assert plant.answer(np.zeros(1), plant.state_stamp_ns, 0.0).outcome == 'stepped'
    assert not plant.publish_or_hold() and plant.held and not plant.waiting
    assert plant.answer(np.zeros(1), plant.state_stamp_ns, 0.0).outcome == 'while_paused'
    assert plant.pause(False, lockstep=True)  # resume: publish the held state
    assert not plant.held


def test_resume_republishes_a_state_whose_answer_never_came():
    plant = make_plant()
    plant.published()
    plant.pause(True, lockstep=True)
    assert plant.pause(False, lockstep=True)  # still waiting: publish again
    plant.pause(True, lockstep=False)
    assert not plant.pause(False, lockstep=False)  # realtime: the timer publishes
    assert not plant.pause(False, lockstep=True)  # not paused: nothing to do


def test_lockstep_timeout_never_fires_while_paused():
    plant = make_plant()
    plant.published()
    assert not plant.timed_out(0.0, 0.5, timeout=1.0)
    assert plant.timed_out(0.0, 1.5, timeout=1.0)
    plant.pause(True, lockstep=True)
    assert not plant.timed_out(0.0, 1.5, timeout=1.0)


def test_episodes_end_after_episode_length_and_the_terminal_answer_is_consumed():
    plant = make_plant(episode_length=3)
    records = []
    for _ in range(3):
        plant.published()
        assert plant.answer(np.zeros(1), plant.state_stamp_ns, 0.0).outcome == 'stepped'
    assert plant.episode_end  # the state just reached ends the episode
    end_ns = plant.time_ns
    plant.published()
    answer = plant.answer(np.ones(1), plant.state_stamp_ns, 0.0)
    assert answer.outcome == 'episode_started' and answer.reward is None
    records.extend(answer.records)
    assert plant.real_steps == 3  # the terminal state's answer is not applied
    assert plant.time_ns == end_ns + GAP_NS  # a gap in simulated time at the reset
    assert [r['length'] for r in records] == [3]
    assert not plant.episode_end


def test_a_reset_ends_the_episode_and_makes_the_old_answer_late():
    plant = make_plant(episode_length=100)
    plant.published()
    plant.answer(np.zeros(1), plant.state_stamp_ns, 0.0)
    plant.published()
    records = plant.reset(0.0)
    assert [r['end'] for r in records] == ['reset'] and [r['length'] for r in records] == [1]
    assert not plant.waiting
    assert plant.answer(np.zeros(1), plant.state_stamp_ns, 0.0).outcome == 'late'


def test_realtime_uses_the_zero_command_within_the_limits_once_commands_are_old():
    plant = make_plant(low=np.array([0.5]), high=np.array([1.0]))
    assert plant.zero_command.tolist() == [0.5]  # zero clipped into the limits
    latest = np.array([0.75])
    command, missing = plant.realtime_command(latest, latest_at=10.0, now=10.05, timeout=0.1)
    assert command is latest and not missing
    command, missing = plant.realtime_command(latest, latest_at=10.0, now=10.5, timeout=0.1)
    assert command.tolist() == [0.5] and missing
