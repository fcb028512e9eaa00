"""Distillation of a sparse polynomial policy from a teacher: censored ensemble STLSQ,
DAgger rounds and selection by return on a batched environment."""

from dataclasses import FrozenInstanceError, replace

import numpy as np
from pendulum_data import (
    ACTION_NAMES,
    OBSERVATION_NAMES,
    make_known_polynomial_policy,
    pendulum_states,
    polynomial_row,
)
import pytest

from sindyrl_ros.core.distillation import DistillationSettings, distill_sparse_policy
from sindyrl_ros.core.policies import MLPPolicy


def test_distillation_recovers_known_polynomial_controller():
    teacher = make_known_polynomial_policy()
    observations = pendulum_states(3000, seed=2)
    # The teacher saturates on a good part of these states.
    assert np.mean(np.abs(teacher.act_batch(observations)) == 2.0) > 0.2
    settings = DistillationSettings(degrees=(3,), n_models=10, seed=0, angle_pairs=[(0, 1)])
    student = distill_sparse_policy(teacher, observations, settings)
    assert student.n_nonzero == 2
    powers = student.powers
    coefficients = student.coefficients[:, 0]
    np.testing.assert_allclose(coefficients[polynomial_row(powers, [1, 0, 0])], -1.5, atol=1e-3)
    np.testing.assert_allclose(coefficients[polynomial_row(powers, [0, 1, 1])], 0.5, atol=1e-3)
    summary = student.metadata['distillation']
    assert summary['n_nonzero'] == 2 and summary['validation_rms_error'] < 1e-3
    assert student.metadata['source'] == 'test'  # teacher metadata is carried over
    test_states = pendulum_states(500, seed=9)
    np.testing.assert_allclose(
        student.act_batch(test_states), teacher.act_batch(test_states), atol=1e-3
    )


def test_distillation_of_a_saturating_tanh_teacher():
    # SAC's deterministic action: tanh-squashed, often near its limits.
    layer = (np.array([[-1.5, 0.0, -0.5]]), np.array([0.1]))
    teacher = MLPPolicy([layer], 'tanh', OBSERVATION_NAMES, ACTION_NAMES, [-2.0], [2.0])
    observations = pendulum_states(2000, seed=4)
    settings = DistillationSettings(n_models=5, angle_pairs=[(0, 1)])
    student = distill_sparse_policy(teacher, observations, settings)
    summary = student.metadata['distillation']
    assert student.n_nonzero <= 8
    assert summary['validation_rms_error'] < 0.1  # normalised action units
    assert [c['threshold'] for c in summary['candidates']] == [0.0, 0.005, 0.01, 0.02, 0.05, 0.1]
    # Censoring the saturated samples beats fitting the saturated values directly.
    plain = distill_sparse_policy(teacher, observations, replace(settings, saturation=1.0))
    assert summary['validation_rms_error'] < plain.metadata['distillation']['validation_rms_error']
    # Library without cos_theta^2 and higher (they repeat other monomials on the circle).
    assert student.powers[:, 0].max() == 1
    test_states = pendulum_states(500, seed=11)
    error = student.act_batch(test_states) - teacher.act_batch(test_states)
    assert np.sqrt(np.mean(error**2)) < 0.2  # torque units (limits ±2)


class PendulumBatch:
    """Pendulum-v1 physics for a few pendulums at once (SurrogateVecEnv interface)."""

    def __init__(self, n_envs=8):
        self.n_envs = n_envs
        self.rng = np.random.default_rng(0)
        self.state = np.zeros((n_envs, 2))

    def _observations(self):
        theta, theta_dot = self.state.T
        return np.column_stack([np.cos(theta), np.sin(theta), theta_dot])

    def reset(self, seed=None):
        self.rng = np.random.default_rng(seed)
        return self.reset_done(np.ones(self.n_envs, dtype=bool))

    def reset_done(self, done):
        self.state[done] = self.rng.uniform([-np.pi, -1.0], [np.pi, 1.0], (int(done.sum()), 2))
        return self._observations()

    def step(self, actions):
        torque = np.clip(actions[:, 0], -2.0, 2.0)
        theta, theta_dot = self.state.T
        theta_dot = np.clip(theta_dot + (15.0 * np.sin(theta) + 3.0 * torque) * 0.05, -8, 8)
        self.state = np.column_stack([theta + theta_dot * 0.05, theta_dot])
        no = np.zeros(self.n_envs, dtype=bool)
        return self._observations(), -np.abs(torque), no, no


def test_distillation_with_student_rollouts_dagger():
    teacher = make_known_polynomial_policy()
    settings = DistillationSettings(
        n_models=5, angle_pairs=[(0, 1)], dagger_rounds=2, dagger_steps=50
    )
    student = distill_sparse_policy(
        teacher, pendulum_states(300, seed=5), settings, dagger_env=PendulumBatch()
    )
    summary = student.metadata['distillation']
    assert summary['dagger_rounds'] == 2
    assert len(summary['dagger_validation_rms_errors']) == 3
    assert summary['n_observations'] == 300 + 2 * 8 * 51  # initial + two rollouts
    assert student.equations() == [
        'torque = clip(-1.5*cos_theta + 0.5*sin_theta*theta_dot, -2, 2)'
    ]


class PendulumCost(PendulumBatch):
    """PendulumBatch with Pendulum-v1's cost as reward, so returns rank controllers."""

    def step(self, actions):
        torque = np.clip(actions[:, 0], -2.0, 2.0)
        theta = np.arctan2(np.sin(self.state[:, 0]), np.cos(self.state[:, 0]))
        cost = theta**2 + 0.1 * self.state[:, 1] ** 2 + 0.001 * torque**2
        observations, _, terminated, truncated = super().step(actions)
        return observations, -cost, terminated, truncated


def episode_returns(policy, env, seed, steps):
    observations, total = env.reset(seed=seed), np.zeros(env.n_envs)
    for _ in range(steps):
        observations, reward, _, _ = env.step(policy.act_batch(observations))
        total += reward
    return total


def test_distillation_selected_by_return_on_the_environment():
    # A saturating network-like teacher; the student is scored by its return, not its fit.
    layer = (np.array([[-1.5, 0.0, -0.5]]), np.array([0.1]))
    teacher = MLPPolicy([layer], 'tanh', OBSERVATION_NAMES, ACTION_NAMES, [-2.0], [2.0])
    env = PendulumCost(n_envs=16)
    settings = DistillationSettings(
        degrees=(1, 2, 3),
        n_models=1,
        angle_pairs=[(0, 1)],
        dagger_rounds=1,
        dagger_steps=60,
        return_tolerance=0.05,
        evaluation_episodes=32,
        max_coefficients=12,
    )
    student = distill_sparse_policy(
        teacher, pendulum_states(400, seed=3), settings, dagger_env=env
    )
    summary = student.metadata['distillation']
    assert summary['selection'] == 'shortfall_to_teacher'
    assert summary['evaluation_episodes'] == 32  # two batches of the 16 environments
    teacher_return = summary['teacher_surrogate_return']
    assert summary['allowed_shortfall'] == pytest.approx(0.05 * abs(teacher_return))
    assert 0.0 <= summary['shortfall'] <= summary['allowed_shortfall']
    assert student.n_nonzero <= 12 and summary['degree'] in (1, 2, 3)
    # The sparsest good-enough candidate was kept.
    good = [
        c['n_nonzero']
        for c in summary['candidates']
        if c.get('shortfall', np.inf) <= summary['allowed_shortfall']
    ]
    assert min(good) == student.n_nonzero
    # Start states it was not scored on: still about as good as the teacher.
    fresh_teacher = episode_returns(teacher, env, seed=99, steps=60).mean()
    fresh_student = episode_returns(student, env, seed=99, steps=60).mean()
    assert fresh_student >= fresh_teacher - 0.1 * abs(fresh_teacher)


def test_selection_by_return_needs_an_environment():
    with pytest.raises(ValueError, match='dagger_env'):
        distill_sparse_policy(
            make_known_polynomial_policy(),
            pendulum_states(100),
            DistillationSettings(return_tolerance=0.01),
        )


def test_distillation_searches_several_degrees():
    teacher = make_known_polynomial_policy()
    settings = DistillationSettings(degrees=(1, 2, 3), n_models=5, angle_pairs=[(0, 1)])
    student = distill_sparse_policy(teacher, pendulum_states(2000, seed=2), settings)
    summary = student.metadata['distillation']
    assert {c['degree'] for c in summary['candidates']} == {1, 2, 3}
    assert student.n_nonzero == 2 and summary['degree'] in (2, 3)  # sin_theta*theta_dot
    assert student.equations() == [
        'torque = clip(-1.5*cos_theta + 0.5*sin_theta*theta_dot, -2, 2)'
    ]


def test_distillation_keeps_to_a_coefficient_budget():
    settings = DistillationSettings(
        degrees=(1, 2, 3),
        thresholds=(0.0, 0.3, 1.0),
        n_models=5,
        angle_pairs=[(0, 1)],
        max_coefficients=1,
    )
    student = distill_sparse_policy(
        make_known_polynomial_policy(), pendulum_states(2000, seed=2), settings
    )
    # The exact two-term controller is over the budget: the best one-term one is kept.
    assert student.equations() == ['torque = clip(-1.294*cos_theta, -2, 2)']


def test_settings_are_immutable_and_refuse_bad_values():
    settings = DistillationSettings(degrees=[3, 1, 3], angle_pairs=[[0, 1]])
    assert settings.degrees == (1, 3) and settings.angle_pairs == ((0, 1),)
    with pytest.raises(FrozenInstanceError):
        settings.seed = 1
    for bad in (
        {'degrees': ()},
        {'degrees': (13,)},
        {'thresholds': ()},
        {'saturation': 0.0},
        {'return_tolerance': -0.1},
    ):
        with pytest.raises(ValueError):
            DistillationSettings(**bad)
