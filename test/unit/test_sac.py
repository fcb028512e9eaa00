"""SAC trainer: export equivalence, reproducibility, warm start, and a small learning run.

The batched environment here is the exact Pendulum-v1 physics vectorised in numpy, with
the SurrogateVecEnv interface, so these tests don't depend on a fitted SINDy model.
"""

import copy

import numpy as np
import pytest
import torch

from sindyrl_ros.core.policies import MLPPolicy
from sindyrl_ros.core.policy_loading import policy_from_json
from sindyrl_ros.core.sac import SACConfig, SACTrainer, resolve_device
from sindyrl_ros.core.tasks import evaluate_policy, get_task

TASK = get_task('pendulum')


class ExactPendulumVecEnv:
    """Pendulum-v1's equations for n_envs pendulums at once (SurrogateVecEnv interface).

    Episodes start anywhere on the circle (θ uniform in [-π, π], θ̇ in [-1, 1]) as in
    gymnasium, so the policy must learn the swing-up.
    """

    def __init__(self, n_envs=8, episode_length=200, seed=0):
        self.n_envs = n_envs
        self.observation_dim, self.action_dim = 3, 1
        self.action_low, self.action_high = np.array([-2.0]), np.array([2.0])
        self.episode_length = episode_length
        self.rng = np.random.default_rng(seed)
        self.theta = np.zeros(n_envs)
        self.theta_dot = np.zeros(n_envs)
        self.steps = np.zeros(n_envs, dtype=int)

    def _observations(self):
        return np.stack([np.cos(self.theta), np.sin(self.theta), self.theta_dot], axis=1)

    def _start(self, mask):
        count = int(mask.sum())
        self.theta[mask] = self.rng.uniform(-np.pi, np.pi, count)
        self.theta_dot[mask] = self.rng.uniform(-1.0, 1.0, count)
        self.steps[mask] = 0

    def reset(self, seed=None):
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        self._start(np.ones(self.n_envs, dtype=bool))
        return self._observations()

    def reset_done(self, done):
        self._start(np.asarray(done, dtype=bool))
        return self._observations()

    def step(self, actions):
        torque = np.clip(np.asarray(actions, dtype=float).reshape(self.n_envs), -2.0, 2.0)
        angle = (self.theta + np.pi) % (2 * np.pi) - np.pi
        reward = -(angle**2 + 0.1 * self.theta_dot**2 + 0.001 * torque**2)
        accel = 3 * 10.0 / 2 * np.sin(self.theta) + 3.0 * torque
        self.theta_dot = np.clip(self.theta_dot + accel * 0.05, -8.0, 8.0)
        self.theta = self.theta + self.theta_dot * 0.05
        self.steps += 1
        terminated = np.zeros(self.n_envs, dtype=bool)
        return self._observations(), reward, terminated, self.steps >= self.episode_length


def make_trainer(seed=0, bounds=True, **overrides):
    config = SACConfig(seed=seed, **overrides)
    kwargs = {}
    if bounds:
        kwargs = {
            'observation_low': TASK.observation_low,
            'observation_high': TASK.observation_high,
        }
    return SACTrainer(3, 1, TASK.action_low, TASK.action_high, config, **kwargs)


def torch_deterministic_float64(trainer, observations):
    actor64 = copy.deepcopy(trainer.actor).cpu().double()
    with torch.no_grad():
        return actor64.deterministic(torch.from_numpy(observations)).numpy()


@pytest.mark.parametrize('bounds', [True, False])
@pytest.mark.parametrize('activation', ['relu', 'tanh'])
def test_exported_numpy_policy_matches_torch_actor(bounds, activation):
    trainer = make_trainer(bounds=bounds, activation=activation, learning_starts=256)
    trainer.train(ExactPendulumVecEnv(4), 256 + 4 * 20)  # a few updates: non-initial weights
    assert trainer.total_updates > 0
    policy = trainer.export_policy(TASK.observation_names, TASK.action_names, {'model': 3})
    assert isinstance(policy, MLPPolicy)
    assert policy.hidden_sizes == (64, 64) and policy.hidden_activation == activation
    assert policy.metadata['model'] == 3 and policy.metadata['updates'] == trainer.total_updates
    rng = np.random.default_rng(1)
    observations = rng.uniform(-1, 1, (300, 3)) * [1.0, 1.0, 8.0]
    expected = torch_deterministic_float64(trainer, observations)
    np.testing.assert_allclose(policy.act_batch(observations), expected, rtol=0, atol=1e-9)
    single = np.array([policy(x).copy() for x in observations])
    np.testing.assert_allclose(single, expected, rtol=0, atol=1e-9)
    # The float32 training actor agrees to float32 precision.
    np.testing.assert_allclose(trainer.act(observations), expected, atol=1e-5)
    # And the JSON form carries the same function.
    reloaded = policy_from_json(policy.to_json())
    np.testing.assert_array_equal(reloaded.act_batch(observations), policy.act_batch(observations))


def test_training_is_reproducible_on_cpu():
    def run(seed):
        trainer = make_trainer(seed=seed, learning_starts=256, batch_size=64)
        trainer.train(ExactPendulumVecEnv(4), 256 + 4 * 50)
        return trainer.export_policy(TASK.observation_names, TASK.action_names)

    first, second, other = run(0), run(0), run(1)
    for a, b in zip(first.weights, second.weights, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first.weights[0], other.weights[0])


def test_progress_callback_early_stop_and_warm_start():
    trainer = make_trainer(learning_starts=256, batch_size=64, progress_every=10)
    env = ExactPendulumVecEnv(8)
    reports = []

    def progress(report):
        reports.append(report)
        return report['updates'] >= 30  # ask to stop

    result = trainer.train(env, 100_000, progress=progress)
    assert result['stopped_early'] and result['updates'] == 30
    assert [r['updates'] for r in reports] == [10, 20, 30]
    expected_keys = {
        'updates',
        'env_steps',
        'mean_episode_return',
        'episodes',
        'alpha',
        'critic_loss',
        'actor_loss',
        'wall_time_s',
    }
    assert expected_keys <= set(reports[-1])
    assert np.isfinite(reports[-1]['critic_loss']) and reports[-1]['alpha'] > 0
    # Warm start on a "new model": networks kept, buffer dropped and refilled.
    weights_before = trainer.actor.head.weight.detach().clone()
    second = trainer.train(ExactPendulumVecEnv(8, seed=5), 256 + 8 * 5, reset_buffer=True)
    assert second['call_env_steps'] == 256 + 8 * 5
    # Updates resume once the new buffer holds learning_starts transitions.
    assert second['updates'] == 30 + second['call_updates'] and second['call_updates'] == 1 + 5
    assert not torch.equal(weights_before, trainer.actor.head.weight)
    assert trainer.buffer.size == 256 + 8 * 5


class NaNOnceEnv(ExactPendulumVecEnv):
    """Returns a non-finite observation for one pendulum once (a broken surrogate)."""

    calls = 0

    def step(self, actions):
        observations, reward, terminated, truncated = super().step(actions)
        self.calls += 1
        if self.calls == 3:
            observations = observations.copy()
            observations[0, 2] = np.nan
        return observations, reward, terminated, truncated


def test_non_finite_transitions_are_not_learned():
    trainer = make_trainer(learning_starts=64, batch_size=32)
    trainer.train(NaNOnceEnv(4), 64 + 4 * 10)
    stored = trainer.buffer.next_observations[: trainer.buffer.size]
    assert torch.isfinite(stored).all()
    assert trainer.buffer.size == 64 + 4 * 10 - 1


def test_config_validation_and_device():
    with pytest.raises(ValueError, match='unknown SAC parameters'):
        SACConfig.from_dict({'learning_rate': 1e-3})
    with pytest.raises(ValueError, match='activation'):
        SACConfig(activation='sigmoid')
    config = SACConfig.from_dict({'hidden': [32, 32], 'gamma': 0.98})
    assert config.hidden == (32, 32) and config.to_dict()['hidden'] == [32, 32]
    expected = 'cuda' if torch.cuda.is_available() else 'cpu'
    assert resolve_device('auto').type == expected
    assert make_trainer(device='cpu').device.type == 'cpu'


def test_sac_learns_pendulum_swing_up_beyond_random():
    """Tiny budget (2500 updates, ~6 s idle): clearly better than random on Pendulum-v1."""
    trainer = make_trainer(seed=0, learning_starts=1000)
    n_envs = 8
    result = trainer.train(ExactPendulumVecEnv(n_envs), 1000 + 2500 * n_envs)
    assert result['updates'] >= 2500
    assert np.isfinite(result['mean_episode_return'])
    policy = trainer.export_policy(TASK.observation_names, TASK.action_names)
    trained = evaluate_policy(TASK, policy, episodes=5, seed=100)
    rng = np.random.default_rng(0)
    random_policy = evaluate_policy(
        TASK, lambda observation: rng.uniform(-2.0, 2.0, 1), episodes=5, seed=100
    )
    assert trained.steps == 5 * 200
    assert trained.mean_return > random_policy.mean_return + 300
    assert trained.mean_return > -800
