"""Episode accounting of a real-time plant: steps, episodes, rewards from late observations.

The ledger is fed like the serial bridge feeds it: steps in the rig's stream order, the
sensor node's observations and the controller's modes later and in any order. Rewards are
checked against gymnasium's own Pendulum-v1 reward for the same states and torques.
"""

import math

import gymnasium
import numpy as np
import pytest

from sindyrl_ros.core.episode_ledger import SAFE, UNKNOWN, EpisodeLedger
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
    assert ended == [k in (9, 19) for k in range(25)]
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


def test_missed_steps_count_as_real_steps_and_a_learned_reward_gives_nan_returns():
    ledger = EpisodeLedger(None, 3, 'custom')
    ledger.add_missed(4)
    ledger.add_missed(0)
    observation = np.zeros(3)
    for k in range(3):
        ledger.add_step(stamp(k), stamp(k + 1), [1.0], stamp(k), 0.0)
    for k in range(4):
        ledger.add_observation(stamp(k), observation)
    scored, (record,) = ledger.poll(0.0)
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
