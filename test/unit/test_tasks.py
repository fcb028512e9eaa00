"""Task registry, the dm_control gymnasium wrapper and real-environment evaluation."""

import gymnasium
import numpy as np
import pytest

from sindyrl_ros.core.envs import DM_CARTPOLE_SWINGUP_ID, make_dm_control_env
from sindyrl_ros.core.serialization import FormatError
from sindyrl_ros.core.tasks import TASKS, TaskSpec, evaluate_policy, get_task


def test_dm_cartpole_observation_layout_and_reward_match_dm_control():
    env = make_dm_control_env(seed=3)  # first: it picks a headless renderer before the import
    from dm_control import suite

    observation, info = env.reset(seed=3)
    assert observation.shape == (5,) and observation.dtype == np.float64
    assert env.observation_space.shape == (5,) and env.action_space.shape == (1,)
    np.testing.assert_array_equal(env.action_space.low, [-1.0])
    np.testing.assert_array_equal(env.action_space.high, [1.0])
    assert env.unwrapped.dt == pytest.approx(0.01)
    # Same seed and actions on dm_control itself: identical observations and rewards.
    reference = suite.load('cartpole', 'swingup', task_kwargs={'random': 3})
    time_step = reference.reset()
    flat = np.concatenate([time_step.observation['position'], time_step.observation['velocity']])
    np.testing.assert_array_equal(observation, flat)
    rng = np.random.default_rng(0)
    for _ in range(50):
        action = rng.uniform(-1, 1, 1)
        observation, reward, terminated, truncated, _ = env.step(action)
        time_step = reference.step(action)
        flat = np.concatenate(
            [time_step.observation['position'], time_step.observation['velocity']]
        )
        np.testing.assert_array_equal(observation, flat)
        assert reward == time_step.reward
        assert not terminated and not truncated
        # (x, cos θ, sin θ, ẋ, θ̇): the angle pair lies on the unit circle.
        assert observation[1] ** 2 + observation[2] ** 2 == pytest.approx(1.0, abs=1e-6)
    # Starts hanging down (cos θ ≈ -1), as the swing-up task defines.
    first, _ = env.reset(seed=0)
    assert first[1] < -0.99


def test_dm_cartpole_truncates_at_time_limit_and_reseeds():
    env = make_dm_control_env()
    first, _ = env.reset(seed=11)
    again, _ = env.reset(seed=11)
    np.testing.assert_array_equal(first, again)
    other, _ = env.reset(seed=12)
    assert not np.array_equal(first, other)
    steps, truncated, terminated = 0, False, False
    while not (truncated or terminated):
        _, reward, terminated, truncated, _ = env.step(np.zeros(1))
        assert 0.0 <= reward <= 1.0
        steps += 1
    assert truncated and not terminated and steps == 1000
    # Out-of-range actions act as the limit (MuJoCo clamps them), not refused.
    env.reset(seed=1)
    beyond = env.step(np.array([5.0]))[0]
    env.reset(seed=1)
    at_limit = env.step(np.array([1.0]))[0]
    np.testing.assert_array_equal(beyond, at_limit)


def test_dm_cartpole_is_registered_with_gymnasium():
    env = gymnasium.make(DM_CARTPOLE_SWINGUP_ID)
    observation, _ = env.reset(seed=0)
    assert observation.shape == (5,)
    env.close()


@pytest.mark.parametrize('name', sorted(TASKS))
def test_registry_builds_real_envs_matching_the_task(name):
    task = get_task(name)
    env = task.make_env(seed=0)
    observation, _ = env.reset(seed=0)
    assert observation.shape == (task.observation_dim,)
    rng = np.random.default_rng(0)
    observations = [observation]
    for _ in range(100):
        action = rng.uniform(task.action_low, task.action_high)
        observation, reward, terminated, truncated, _ = env.step(action)
        assert np.isfinite(reward)
        observations.append(observation)
    observations = np.asarray(observations, dtype=np.float64)
    assert np.all(observations >= task.observation_low)
    assert np.all(observations <= task.observation_high)
    for cos_index, sin_index in task.angle_pairs:
        radius = observations[:, cos_index] ** 2 + observations[:, sin_index] ** 2
        np.testing.assert_allclose(radius, 1.0, atol=1e-5)
    env.close()
    assert len(task.action_names) == task.action_dim == len(task.action_low)


def test_task_reward_function_matches_the_real_env():
    task = get_task('pendulum')
    reward_fn = task.reward_function()
    env = task.make_env()
    observation, _ = env.reset(seed=4)
    rng = np.random.default_rng(2)
    for _ in range(20):
        action = rng.uniform(-2, 2, 1)
        next_observation, reward, _, _, _ = env.step(action)
        predicted = reward_fn(
            np.asarray(observation, float)[None], action[None], np.asarray(next_observation)[None]
        )
        assert predicted[0] == pytest.approx(reward, abs=1e-4)  # float32 observations
        observation = next_observation


def test_registered_task_values():
    pendulum = get_task('pendulum')
    assert pendulum.observation_names == ('cos_theta', 'sin_theta', 'theta_dot')
    assert pendulum.action_names == ('torque',) and pendulum.angle_pairs == ((0, 1),)
    assert (pendulum.threshold, pendulum.episode_length, pendulum.dt) == (-200.0, 200, 0.05)
    cartpole = get_task('cartpole_swingup')
    assert cartpole.observation_names[0] == 'cart_x' and cartpole.angle_pairs == ((1, 2),)
    assert (cartpole.threshold, cartpole.episode_length, cartpole.dt) == (800.0, 1000, 0.01)
    with pytest.raises(KeyError, match='known tasks'):
        get_task('acrobot')


def test_task_from_dict_round_trip_and_new_gymnasium_task():
    document = get_task('pendulum').to_dict()
    task = TaskSpec.from_dict(document)
    assert task.to_dict() == document
    mountain_car = TaskSpec.from_dict(
        {
            'name': 'mountain_car',
            'env_id': 'MountainCarContinuous-v0',
            'observation_names': ['position', 'velocity'],
            'action_names': ['force'],
            'action_low': -1,
            'action_high': 1,
            'reward': '-0.1 * force**2 + 100 * (position >= 0.45)',
            'threshold': 90,
            'episode_length': 999,
            'dt': 1,
            'observation_low': [-1.3, -0.08],
            'observation_high': [0.7, 0.08],
        }
    )
    assert mountain_car.angle_pairs == ()
    np.testing.assert_array_equal(mountain_car.action_low, [-1.0])
    env = mountain_car.make_env(seed=1)
    assert env.reset(seed=1)[0].shape == (2,)
    env.close()
    reward = mountain_car.reward_function()
    value = reward(np.zeros((1, 2)), np.array([[1.0]]), np.array([[0.5, 0.0]]))
    assert value[0] == pytest.approx(99.9)


def test_task_from_dict_refuses_missing_and_bad_fields():
    document = get_task('pendulum').to_dict()
    missing = dict(document)
    del missing['dt']
    with pytest.raises(FormatError, match=r"missing field\(s\) \['dt'\]"):
        TaskSpec.from_dict(missing)
    with pytest.raises(FormatError, match='unknown field'):
        TaskSpec.from_dict({**document, 'dtt': 0.05})
    with pytest.raises(FormatError, match='observation_low'):
        TaskSpec.from_dict({**document, 'observation_low': [-1.1, -1.1]})
    with pytest.raises(FormatError, match='angle_pairs'):
        TaskSpec.from_dict({**document, 'angle_pairs': [[0, 3]]})
    with pytest.raises(FormatError, match='episode_length'):
        TaskSpec.from_dict({**document, 'episode_length': 200.5})
    with pytest.raises(FormatError, match='action_low'):
        TaskSpec.from_dict({**document, 'action_low': [3.0]})
    # Names that don't fit the environment are refused when it is built.
    wrong = TaskSpec.from_dict({**document, 'env_id': 'MountainCarContinuous-v0'})
    with pytest.raises(ValueError, match='observations have shape'):
        wrong.make_env()


def test_evaluate_policy_is_deterministic_and_counts_steps():
    task = get_task('pendulum')

    def zero_torque(observation):
        return np.zeros(1)

    first = evaluate_policy(task, zero_torque, episodes=3, seed=5)
    second = evaluate_policy('pendulum', zero_torque, episodes=3, seed=5)
    assert first.steps == 3 * 200 and len(first.returns) == 3
    np.testing.assert_array_equal(first.returns, second.returns)
    assert first.mean_return == pytest.approx(first.returns.mean())
    mean, returns, steps = evaluate_policy(
        lambda: gymnasium.make('Pendulum-v1'), zero_torque, episodes=1, seed=5, max_steps=50
    )
    assert steps == 50 and len(returns) == 1
