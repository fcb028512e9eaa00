"""Surrogate environment on a model fitted to real Pendulum-v1 data."""

import gymnasium as gym
import numpy as np
from pendulum_data import fit_pendulum_model
import pytest

from sindyrl_ros.core.dynamics import SindyDynamics
from sindyrl_ros.core.dynamics_fit import EnsembleConfig
from sindyrl_ros.core.reward import pendulum_reward
from sindyrl_ros.core.surrogate import SurrogateVecEnv, measure_surrogate_speed
from sindyrl_ros.core.trajectories import Trajectory

LOW = np.array([-1.0, -1.0, -8.0])
HIGH = np.array([1.0, 1.0, 8.0])


@pytest.fixture(scope='module')
def recorded():
    env = gym.make('Pendulum-v1').unwrapped
    rng = np.random.default_rng(0)
    observation, _ = env.reset(seed=0)
    observations, actions = [observation], []
    for _ in range(200):
        action = rng.uniform(-2.0, 2.0, size=1)
        observation, *_ = env.step(action)
        observations.append(observation)
        actions.append(action)
    return Trajectory(np.array(observations, dtype=np.float64), np.array(actions))


@pytest.fixture(scope='module')
def model(recorded):
    return fit_pendulum_model([recorded])


def make_env(model, recorded, **kwargs):
    options = dict(
        n_envs=64,
        episode_length=30,
        observation_low=LOW,
        observation_high=HIGH,
        seed=1,
    )
    options.update(kwargs)
    return SurrogateVecEnv(model, pendulum_reward, recorded.observations, **options)


def test_one_step_equals_model_predict(model, recorded):
    env = make_env(model, recorded)
    observations = env.reset(seed=3)
    # Episodes start from recorded real states (projected onto the circle: the float32
    # observations are off it by ~1e-7).
    distance = np.abs(observations[:, None, :] - recorded.observations[None]).max(axis=2)
    assert np.all(distance.min(axis=1) < 1e-6)
    actions = np.random.default_rng(0).uniform(-2, 2, size=(64, 1))
    next_observations, rewards, terminated, truncated = env.step(actions)
    expected = model.project(model.predict(observations, actions))
    np.testing.assert_allclose(next_observations, expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(rewards, pendulum_reward(observations, actions, expected))
    assert not terminated.any() and not truncated.any()
    assert next_observations.shape == (64, 3) and rewards.shape == (64,)
    assert terminated.dtype == bool and truncated.dtype == bool


def test_sampled_member_step_equals_member_predict(model, recorded):
    env = make_env(model, recorded, sample_members=True)
    observations = env.reset(seed=4)
    members = env.members.copy()
    assert members.min() >= 0 and members.max() < model.n_members
    assert len(np.unique(members)) > 1
    actions = np.random.default_rng(1).uniform(-2, 2, size=(64, 1))
    next_observations, *_ = env.step(actions)
    every_member = model.predict_members(observations, actions)  # (M, N, n)
    expected = every_member[members, np.arange(64)]
    model.project(expected)
    np.testing.assert_allclose(next_observations, expected, rtol=0, atol=1e-12)


def test_actions_are_clipped(model, recorded):
    env = make_env(model, recorded)
    observations = env.reset(seed=5)
    wild = np.full((64, 1), 50.0)
    next_observations, *_ = env.step(wild)
    expected = model.project(model.predict(observations, np.full((64, 1), 2.0)))
    np.testing.assert_allclose(next_observations, expected, atol=1e-12)


def test_truncation_and_reset_done(model, recorded):
    env = make_env(model, recorded, episode_length=5)
    env.reset(seed=6)
    actions = np.zeros((64, 1))
    for step in range(5):
        next_observations, _, terminated, truncated = env.step(actions)
        assert truncated.all() == (step == 4)
    done = terminated | truncated
    only_first = np.zeros(64, dtype=bool)
    only_first[0] = True
    current = env.reset_done(only_first)
    np.testing.assert_array_equal(current[1:], next_observations[1:])
    assert env.episode_steps[0] == 0 and np.all(env.episode_steps[1:] == 5)
    current = env.reset_done(done)
    assert np.all(env.episode_steps == 0)
    assert current.shape == (64, 3)


def test_diverging_model_terminates_with_finite_values(model, recorded):
    document = model.to_dict()
    document['saturation'] = {}
    cube = model.feature_names().index('thdot[k]^3')
    document['coefficients'][2][cube] = 50.0  # deliberately exploding
    exploding = SindyDynamics.from_dict(document)
    env = make_env(
        exploding,
        recorded,
        episode_length=200,
        observation_high=[1, 1, np.inf],
        observation_low=[-1, -1, -np.inf],
    )
    env.reset(seed=7)
    ever_terminated = np.zeros(64, dtype=bool)
    for _ in range(60):
        next_observations, rewards, terminated, truncated = env.step(np.full((64, 1), 2.0))
        assert np.all(np.isfinite(next_observations))
        assert np.all(np.isfinite(rewards))
        ever_terminated |= terminated
        env.reset_done(terminated | truncated)
    assert ever_terminated.all()


def test_leaving_bounds_terminates_and_is_penalised(model, recorded):
    tight_high = np.array([1.0, 1.0, 0.5])
    env = make_env(
        model,
        recorded,
        observation_low=-tight_high,
        observation_high=tight_high,
        episode_length=100,
    )
    observations = env.reset(seed=8)
    assert np.all(np.abs(observations[:, 2]) <= 0.5)  # starts are clipped into the bounds
    next_observations, rewards, terminated, _ = env.step(np.full((64, 1), 2.0))
    assert terminated.any()
    assert np.all(np.abs(next_observations[:, 2]) <= 0.5)
    plain = pendulum_reward(observations, np.full((64, 1), 2.0), next_observations)
    # A terminated episode pays its (negative) reward for every step it had left.
    np.testing.assert_allclose(rewards[terminated], plain[terminated] * 100)
    np.testing.assert_allclose(rewards[~terminated], plain[~terminated])
    fixed = make_env(
        model,
        recorded,
        observation_low=-tight_high,
        observation_high=tight_high,
        termination_reward=-123.0,
    )
    fixed.reset(seed=8)
    _, rewards, terminated, _ = fixed.step(np.full((64, 1), 2.0))
    assert np.all(rewards[terminated] == -123.0)


def test_start_noise_perturbs_and_stays_on_the_circle(model, recorded):
    env = make_env(model, recorded, start_noise=0.1)
    observations = env.reset(seed=9)
    distance = np.abs(observations[:, None, :] - recorded.observations[None]).max(axis=2)
    assert np.all(distance.min(axis=1) > 1e-6)
    np.testing.assert_allclose(np.hypot(observations[:, 0], observations[:, 1]), 1.0, atol=1e-12)


def test_reset_is_reproducible(model, recorded):
    env = make_env(model, recorded, sample_members=True, start_noise=0.05)
    first = env.reset(seed=11)
    members = env.members.copy()
    second = env.reset(seed=11)
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(members, env.members)


def test_needs_action_limits(recorded):
    unlimited = SindyDynamics(
        ['cos', 'sin', 'thdot'], ['u'], 0.05, ensemble=EnsembleConfig(n_models=3)
    ).fit([recorded])
    with pytest.raises(ValueError, match='action limits'):
        make_env(unlimited, recorded)
    env = make_env(unlimited, recorded, action_low=[-2.0], action_high=[2.0])
    np.testing.assert_array_equal(env.action_high, [2.0])


def test_speed_measurement_runs(model, recorded):
    # Throughput is reported by the benchmark; here only the function's contract.
    result = measure_surrogate_speed(
        model, pendulum_reward, recorded.observations, LOW, HIGH, n_envs=50, steps=5
    )
    assert result['steps_per_second'] > 0
    assert result['n_envs'] == 50
