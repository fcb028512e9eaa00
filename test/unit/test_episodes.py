"""Episode accounting of a real-time plant: steps, episodes, rewards from late observations.

The ledger is fed like the serial bridge feeds it: steps in the rig's stream order, the
sensor node's observations and the controller's modes later and in any order. Rewards are
checked against gymnasium's own Pendulum-v1 reward for the same states and torques.
"""

import math

import gymnasium
import numpy as np
import pytest

from sindyrl_ros.core.episode_control import (
    ACTIVATE,
    ANSWER_RESETS,
    DEACTIVATE,
    END_EPISODE,
    HELD,
    RESETTING,
    RESTART_STEPS,
    RUN_RESET,
    EpisodeControl,
    Settle,
)
from sindyrl_ros.core.episodes import SAFE, UNKNOWN, AnsweredSteps, EpisodeLedger
from sindyrl_ros.core.task_parameters import task_from_parameters
from sindyrl_ros.core.tasks import get_task

TASK = get_task('pendulum')
PERIOD_NS = 50_000_000


def pendulum_rollout(steps: int, seed: int):
    """Observations (steps + 1, 3), torques (steps, 1) and gymnasium's rewards (steps,)."""
    env = gymnasium.make('Pendulum-v1')
    observation, _ = env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    observations, torques, rewards = [observation], [], []
    for _ in range(steps):
        torque = rng.uniform(-2.0, 2.0, size=1)
        observation, reward, _, _, _ = env.step(torque)
        observations.append(observation)
        torques.append(torque)
        rewards.append(reward)
    env.close()
    return np.array(observations), np.array(torques), np.array(rewards)


def stamp(k: int) -> int:
    return 1_000_000_000 + k * PERIOD_NS


def test_episodes_of_episode_length_score_with_the_task_reward_in_any_arrival_order():
    observations, torques, rewards = pendulum_rollout(25, seed=3)
    ledger = EpisodeLedger(TASK.reward_function(), episode_length=10, task='pendulum')
    ended = [ledger.add_step(stamp(k), stamp(k + 1), torques[k], stamp(k), 0.0) for k in range(25)]
    assert ended == ['episode_length' if k in (9, 19) else None for k in range(25)]
    assert ledger.real_steps == 25 and ledger.episode_steps == 5 and ledger.episode_number == 3
    # Nothing is known before the observations arrive.
    assert ledger.poll(0.1) == ([], [])
    # The sensor's observations and the controller's modes arrive late, shuffled.
    rng = np.random.default_rng(0)
    for k in rng.permutation(26):
        ledger.add_observation(stamp(k), observations[k])
    for k in range(25):
        ledger.add_action(stamp(k), 'explore' if k < 10 else 'evaluate')
    scored, records = ledger.poll(0.2)
    assert [s for s, _ in scored] == [stamp(k) for k in range(25)]
    np.testing.assert_allclose([r for _, r in scored], rewards, rtol=1e-6)
    assert [r['episode'] for r in records] == [1, 2]  # the third is still running
    first, second = records
    assert first['length'] == 10 and first['real_steps'] == 10 and first['end'] == 'episode_length'
    assert first['mode'] == 'explore' and second['mode'] == 'evaluate'
    assert first['return'] == pytest.approx(rewards[:10].sum(), rel=1e-6)
    assert second['return'] == pytest.approx(rewards[10:20].sum(), rel=1e-6)
    assert second['real_steps'] == 20 and first['task'] == 'pendulum'
    assert first['missing_rewards'] == 0
    # A reset cuts the third short; it is reported with its 5 steps.
    assert ledger.end_episode('reset')
    _, records = ledger.poll(0.3)
    assert [(r['episode'], r['length'], r['end']) for r in records] == [(3, 5, 'reset')]
    assert records[0]['return'] == pytest.approx(rewards[20:].sum(), rel=1e-6)
    # A reset right after another ends nothing: no empty episode is reported.
    assert not ledger.end_episode('reset')
    assert ledger.poll(0.4) == ([], [])


def test_a_step_without_its_observation_is_counted_and_its_reward_missing_after_the_wait():
    observations, torques, _ = pendulum_rollout(4, seed=1)
    ledger = EpisodeLedger(TASK.reward_function(), 4, 'pendulum', observation_wait=0.5)
    for k in range(4):
        ledger.add_step(stamp(k), stamp(k + 1), torques[k], stamp(k), now=10.0)
    for k in (0, 1, 3, 4):  # the sensor refused observation 2
        ledger.add_observation(stamp(k), observations[k])
    scored, records = ledger.poll(10.2)
    assert len(scored) == 1 and records == []  # step 1 waits for observation 2
    ledger.extend_wait(1.0)  # the node was busy (a reset): the wait starts over later
    assert ledger.poll(11.4) == ([], [])
    scored, records = ledger.poll(11.6)
    assert [s for s, _ in scored] == [stamp(3)]
    (record,) = records
    assert record['length'] == 4 and record['missing_rewards'] == 2
    assert ledger.missing_rewards == 2
    assert record['mode'] == UNKNOWN  # no action message came


def test_modes_come_from_the_applied_command_and_the_majority_names_the_episode():
    observations, torques, _ = pendulum_rollout(6, seed=2)
    ledger = EpisodeLedger(TASK.reward_function(), 6, 'pendulum')
    answered = [stamp(0), None, stamp(1), stamp(3), stamp(4), stamp(5)]  # late, safe, ...
    for k in range(6):
        ledger.add_step(stamp(k), stamp(k + 1), torques[k], answered[k], 0.0)
        ledger.add_observation(stamp(k), observations[k])
        ledger.add_action(stamp(k), 'explore' if k < 2 else 'evaluate')
        ledger.add_action(stamp(k), SAFE)  # a watchdog repeating the stamp: the first counts
    ledger.add_observation(stamp(6), observations[6])
    _, (record,) = ledger.poll(0.0)
    # explore (steps 0 and 2: the command answered stamp 1), safe (1), evaluate (3, 4, 5).
    assert record['mode'] == 'evaluate'
    tie = EpisodeLedger(TASK.reward_function(), 2, 'pendulum')
    tie.add_step(stamp(0), stamp(1), [0.0], stamp(0), 0.0)
    tie.add_step(stamp(1), stamp(2), [0.0], None, 0.0)
    tie.add_action(stamp(0), 'evaluate')
    for k in range(3):
        tie.add_observation(stamp(k), observations[k])
    _, (record,) = tie.poll(0.0)
    assert record['mode'] == SAFE  # one each: the later step decides


def test_missed_steps_count_as_real_steps_and_an_unreported_learned_reward_is_nan():
    ledger = EpisodeLedger(None, 3, 'custom', observation_wait=0.5)
    ledger.add_missed(4)
    ledger.add_missed(0)
    observation = np.zeros(3)
    for k in range(3):
        ledger.add_step(stamp(k), stamp(k + 1), [1.0], stamp(k), 0.0)
    for k in range(4):
        ledger.add_observation(stamp(k), observation)
    assert ledger.poll(0.4) == ([], [])  # a reported reward may still come
    scored, (record,) = ledger.poll(0.6)
    assert ledger.real_steps == 7 and ledger.missed_steps == 4
    assert record['real_steps'] == 7 and record['length'] == 3
    assert math.isnan(record['return']) and all(math.isnan(r) for _, r in scored)
    with pytest.raises(ValueError):
        EpisodeLedger(None, 0, 'x')
    with pytest.raises(ValueError):
        EpisodeLedger(None, 1, 'x', observation_wait=0.0)


def test_old_observations_are_forgotten_and_a_resent_state_keeps_the_first():
    ledger = EpisodeLedger(TASK.reward_function(), 1000, 'pendulum', history=50)
    observations, torques, rewards = pendulum_rollout(300, seed=4)  # float32 observations
    for k in range(300):
        ledger.add_step(stamp(k), stamp(k + 1), torques[k], stamp(k), 0.0)
        ledger.add_observation(stamp(k), observations[k])
        ledger.add_observation(stamp(k), observations[k] + 1.0)  # ignored repeat
        ledger.add_observation(stamp(k + 1), observations[k + 1])
        scored, _ = ledger.poll(0.0)
        assert [r for _, r in scored] == pytest.approx([rewards[k]], rel=1e-6)
        assert len(ledger._observations) <= 2


def test_known_and_reported_rewards_score_at_once_and_termination_ends_the_episode():
    """A simulator knows each step's reward; a plant with a learned reward reports it; a
    task's termination expression ends the episode on the state after a step."""
    observations, torques, rewards = pendulum_rollout(12, seed=5)
    robot = task_from_parameters(
        {
            'task': 'pendulum_robot',
            'observation_names': ['cos_theta', 'sin_theta', 'theta_dot'],
            'action_names': ['torque'],
            'action_low': [-2.0],
            'action_high': [2.0],
            'control_period': 0.05,
            'reward': 'learned',
            'threshold': -200.0,
            'episode_length': 200,
            'observation_low': [-1.1, -1.1, -9.0],
            'observation_high': [1.1, 1.1, 9.0],
            'termination': 'abs(theta_dot) > 1.0',
        }
    )
    ends = robot.termination_function()(observations[1:])
    first_end = int(np.argmax(ends))
    assert ends.any() and robot.env_id == '' and not robot.has_simulator

    known = EpisodeLedger(None, 200, 'robot', termination=robot.termination_function())
    reported = EpisodeLedger(None, 200, 'robot', termination=robot.termination_function())
    for k in range(first_end + 1):
        end = known.add_step(
            stamp(k),
            stamp(k + 1),
            torques[k],
            stamp(k),
            0.0,
            reward=rewards[k],
            observation_after=observations[k + 1],
        )
        assert end == ('termination' if k == first_end else None)
        reported.add_reward(stamp(k), rewards[k])  # the plant may report before the step
        reported.add_step(
            stamp(k),
            stamp(k + 1),
            torques[k],
            stamp(k),
            0.0,
            observation_after=observations[k + 1],
        )
    for ledger in (known, reported):
        scored, (record,) = ledger.poll(0.0)  # no observation needed
        np.testing.assert_allclose([r for _, r in scored], rewards[: first_end + 1])
        assert record['end'] == 'termination' and record['length'] == first_end + 1
        assert record['return'] == pytest.approx(rewards[: first_end + 1].sum())
    # The simulator's own end wins over the length.
    sim = EpisodeLedger(None, 2, 'pendulum')
    assert sim.add_step(stamp(0), stamp(1), [0.0], stamp(0), 0.0, 0.0, end='terminated') == (
        'terminated'
    )


def test_answered_steps_run_from_answer_to_answer_at_any_joint_state_rate():
    """Observations at 1 kHz, answers every 50 ms: steps of 50 ms with the first answer's
    action; repeats are ignored, a gap or a restart breaks the chain, a refused end
    observation still gives the step (without the state after it)."""
    steps_of = AnsweredSteps(0.05)
    ms = 1_000_000
    made = []
    for k in range(0, 301):  # 0 .. 300 ms
        made += steps_of.add_observation(k * ms, np.array([k, 0.0]))
        if k % 50 == 0:
            made += steps_of.add_action(k * ms, [float(k)], 'explore')
            made += steps_of.add_action(k * ms, [-1.0], 'safe')  # a repeat of the stamp
    assert [(s.start_ns // ms, s.end_ns // ms) for s in made] == [
        (0, 50),
        (50, 100),
        (100, 150),
        (150, 200),
        (200, 250),
        (250, 300),
    ]
    assert [s.action[0] for s in made] == [0.0, 50.0, 100.0, 150.0, 200.0, 250.0]
    assert made[-1].observation_after[0] == 300 and steps_of.repeats == 7
    # An answer before its observation arrives: the step waits for it.
    assert steps_of.add_action(350 * ms, [1.0], 'explore') == []
    (step,) = steps_of.add_observation(350 * ms, np.array([350.0, 0.0]))
    assert step.end_ns == 350 * ms and step.observation_after[0] == 350
    # The sensor refused the state at 400 ms: a later state releases the step without it.
    assert steps_of.add_action(400 * ms, [2.0], 'explore') == []
    (step,) = steps_of.add_observation(401 * ms, np.array([401.0, 0.0]))
    assert step.end_ns == 400 * ms and step.observation_after is None
    # A gap of 100 ms (> 1.5 periods) makes no step; neither does a restart.
    assert steps_of.add_action(500 * ms, [3.0], 'explore') == []
    assert steps_of.gaps == 1
    steps_of.add_observation(550 * ms, np.zeros(2))
    steps_of.restart()
    # A late answer to a state seen before the restart starts nothing; the next one does.
    assert steps_of.add_action(550 * ms, [4.0], 'safe') == [] and steps_of.late_answers == 1
    steps_of.add_observation(600 * ms, np.zeros(2))
    steps_of.add_observation(650 * ms, np.zeros(2))
    assert steps_of.add_action(600 * ms, [5.0], 'explore') == []
    (step,) = steps_of.add_action(650 * ms, [6.0], 'explore')
    assert (step.start_ns, step.action[0]) == (600 * ms, 5.0)


def test_episode_control_holds_resets_and_counts_only_while_running():
    control = EpisodeControl(start_paused=True)
    assert control.start() == [DEACTIVATE] and not control.counting
    assert control.pause(False) == [RESTART_STEPS, ACTIVATE] and control.counting
    # An episode ends: the controller holds the safe command while the provider resets.
    assert control.episode_ended() == [DEACTIVATE, END_EPISODE, RESTART_STEPS, RUN_RESET]
    assert control.state == RESETTING and not control.counting
    # The supervisor holds the plant meanwhile and asks for a reset of its own.
    assert control.pause(True) == []
    assert control.request_reset() == []  # answered by the reset already running
    assert control.reset_finished() == [ANSWER_RESETS]  # stays held
    assert control.state == HELD and not control.counting
    # A reset requested while held runs without touching the controller.
    assert control.request_reset() == [END_EPISODE, RESTART_STEPS, RUN_RESET]
    assert control.reset_finished() == [ANSWER_RESETS] and control.state == HELD
    assert control.pause(False) == [RESTART_STEPS, ACTIVATE]
    # Resumed during a reset: running again when it is done.
    control.episode_ended()
    assert control.pause(False) == []
    assert control.reset_finished() == [RESTART_STEPS, ACTIVATE] and control.counting
    assert control.pause(True) == [DEACTIVATE, RESTART_STEPS]
    assert control.pause(True) == [] and control.reset_finished() == []
    # A plant that resets itself: episode ends change nothing.
    free = EpisodeControl(start_paused=False, reset_after_episode=False)
    assert free.start() == [ACTIVATE] and free.episode_ended() == [] and free.counting
    assert free.request_reset() == [DEACTIVATE, END_EPISODE, RESTART_STEPS, RUN_RESET]


def test_settle_waits_until_the_velocities_stay_still_long_enough():
    settle = Settle([2], tolerance=0.05, duration=1.0)
    still, moving = np.array([1.0, 0.0, 0.01]), np.array([1.0, 0.0, 0.2])
    assert not settle.update(0.0, still)
    assert not settle.update(0.9, still)
    assert not settle.update(1.0, moving)  # moved: the clock starts over
    assert not settle.update(1.5, still)
    assert not settle.update(2.0, np.array([1.0, 0.0, np.nan]))  # not a still state
    assert not settle.update(2.1, still)
    assert settle.update(3.1, still)
    settle.restart()
    assert not settle.update(3.2, still)
    with pytest.raises(ValueError):
        Settle([], 0.1, 1.0)
