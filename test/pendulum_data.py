"""Real Pendulum-v1 data for tests: random-torque episodes and a model card fitted on them.

Shared by test/unit and test/ros (``test/conftest.py`` puts this folder on ``sys.path``).
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

DT = 0.05  # Pendulum-v1's step


def pendulum_episode(seed: int, steps: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Observations (steps+1, 3), random torques (steps, 1) and the env's rewards (steps,).

    gymnasium Pendulum-v1 reset and its action space both seeded with ``seed``; float64.
    """
    env = gym.make('Pendulum-v1')
    observation, _ = env.reset(seed=seed)
    env.action_space.seed(seed)
    observations, actions, rewards = [observation], [], []
    for _ in range(steps):
        action = env.action_space.sample()
        observation, reward, *_ = env.step(action)
        observations.append(observation)
        actions.append(action)
        rewards.append(reward)
    env.close()
    return (
        np.asarray(observations, dtype=np.float64),
        np.asarray(actions, dtype=np.float64),
        np.asarray(rewards, dtype=np.float64),
    )


def pendulum_model_card(reward: str = 'pendulum', validation_horizon: int | None = 50) -> dict:
    """A real model card: E-SINDy fitted on 2 x 150 random Pendulum-v1 steps, as the model
    updater makes it; with ``reward='learned'`` it carries the reward model fitted on the
    env's rewards too."""
    from sindyrl_ros.core.model_fitting import fit_model
    from sindyrl_ros.core.tasks import get_task

    trajectories, rewarded = [], []
    for seed in range(2):
        observations, actions, rewards = pendulum_episode(seed, 150)
        trajectories.append((observations, actions, DT * np.arange(len(observations))))
        rewarded.append((observations, actions, rewards))
    task = get_task('pendulum').to_dict()
    task['reward'] = reward
    config = {
        'library': {'degree': 3, 'control': 'affine'},
        'ensemble': {'n_models': 10, 'seed': 0},
    }
    if validation_horizon is not None:
        config['validation_horizon'] = validation_horizon
    result = fit_model(
        {
            'task': task,
            'config': config,
            'trajectories': trajectories,
            'reward_trajectories': rewarded,
            'reward_config': {'degree': 3},
            'model_version': 1,
            'n_start_observations': 64,
            'seed': 0,
        }
    )
    assert result.get('accepted'), result
    return result['card']


OBSERVATION_NAMES = ['cos_theta', 'sin_theta', 'theta_dot']
ACTION_NAMES = ['torque']


def polynomial_row(powers: np.ndarray, exponents) -> int:
    """The row of ``powers`` (a polynomial library's exponents) equal to ``exponents``."""
    return int(np.flatnonzero((powers == np.array(exponents)).all(axis=1))[0])


def make_known_polynomial_policy():
    """u = clip(-1.5 cos_theta + 0.5 sin_theta * theta_dot, -2, 2) as a sparse policy."""
    from sindyrl_ros.core.policies import SparsePolynomialPolicy, polynomial_powers

    powers = polynomial_powers(3, 3)
    coefficients = np.zeros((len(powers), 1))
    coefficients[polynomial_row(powers, [1, 0, 0])] = -1.5
    coefficients[polynomial_row(powers, [0, 1, 1])] = 0.5
    return SparsePolynomialPolicy(
        powers, coefficients, OBSERVATION_NAMES, ACTION_NAMES, [-2.0], [2.0], {'source': 'test'}
    )


def pendulum_states(count: int, seed: int = 0) -> np.ndarray:
    """``count`` states (cos, sin, theta_dot) with uniform angle and speed in [-8, 8]."""
    rng = np.random.default_rng(seed)
    theta = rng.uniform(-np.pi, np.pi, count)
    return np.column_stack([np.cos(theta), np.sin(theta), rng.uniform(-8, 8, count)])


def fit_pendulum_model(trajectories, n_models: int = 10):
    """E-SINDy on Pendulum-v1 trajectories (names cos, sin, thdot; u), thdot clipped at ±8."""
    from sindyrl_ros.core.dynamics import SindyDynamics
    from sindyrl_ros.core.dynamics_fit import EnsembleConfig

    return SindyDynamics(
        ['cos', 'sin', 'thdot'],
        ['u'],
        DT,
        saturation={'thdot': (-8.0, 8.0)},
        action_low=[-2.0],
        action_high=[2.0],
        ensemble=EnsembleConfig(n_models=n_models),
    ).fit(trajectories)


# The names recordings in the unit tests use (a model's short names).
RECORDED_OBSERVATIONS = ('cos', 'sin', 'thdot')
RECORDED_ACTIONS = ('u',)
DT_NS = 50_000_000


def write_episode(writer, start_ns: int, observations, actions, mode: str = 'explore') -> None:
    """Record an episode as the sensor and controller send it: observation k and its answer
    at ``start_ns + k * DT_NS`` (the last observation unanswered when ``actions`` is shorter)."""
    for k, observation in enumerate(observations):
        writer.write_observation(start_ns + k * DT_NS, RECORDED_OBSERVATIONS, observation)
        if k < len(actions):
            writer.write_action(start_ns + k * DT_NS, RECORDED_ACTIONS, actions[k], mode)
