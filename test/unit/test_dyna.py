"""The Dyna loop on the real Pendulum-v1: model acceptance, step counting, a smoke run."""

import numpy as np

from sindyrl_ros.core.dyna import (
    DynaConfig,
    RealPlant,
    fit_dynamics,
    run_dyna,
    split_for_validation,
)
from sindyrl_ros.core.sac import SACConfig
from sindyrl_ros.core.tasks import evaluate_policy, get_task

TASK = get_task('pendulum')


def random_trajectories(steps: int, seed: int = 0):
    plant = RealPlant(TASK.make_env(seed=seed), TASK, seed)
    plant.collect(steps, None, 0.0)
    return plant


def test_real_plant_counts_every_step_and_splits_episodes():
    plant = random_trajectories(250)
    assert plant.steps == 250
    assert [t.n_steps for t in plant.trajectories] == [200, 50]
    plant.collect(30, None, 0.0)
    assert plant.steps == 280
    # The running episode continues from where the last call stopped.
    assert np.allclose(
        plant.trajectories[-1].observations[0], plant.trajectories[-2].observations[-1]
    )


def test_validation_holds_out_the_tail_of_each_trajectory():
    plant = random_trajectories(400)
    fitting, held_out = split_for_validation(plant.trajectories, 0.25, 50)
    assert [t.n_steps for t in fitting] == [150, 150]
    assert [t.n_steps for t in held_out] == [50, 50]
    assert np.array_equal(held_out[0].observations[0], fitting[0].observations[-1])


def test_a_model_from_one_random_episode_is_accepted():
    plant = random_trajectories(200)
    model, validation, accepted = fit_dynamics(TASK, plant.trajectories, DynaConfig(), 1)
    assert accepted, validation
    assert validation['held_out'] and not validation['diverged']
    assert model.model_version == 1
    assert 'theta_dot[k+1] = 0.750 sin_theta[k] + 1.000 theta_dot[k] + 0.150 torque[k]' in (
        model.equations()
    )


def test_a_model_that_misses_the_acceptance_bound_is_refused():
    plant = random_trajectories(200)
    strict = DynaConfig(max_validation_error=1e-9)
    _, validation, accepted = fit_dynamics(TASK, plant.trajectories, strict, 1)
    assert not accepted
    assert validation['nrmse'] > 1e-9


def test_dyna_smoke_run_beats_the_random_policy():
    """A tiny budget: one episode of real data, ~2,500 SAC updates on the surrogate."""
    config = DynaConfig(
        sac=SACConfig(learning_starts=500),
        surrogate_envs=16,
        surrogate_steps_first=40_000,
    )

    def evaluate(policy):
        return evaluate_policy(TASK, policy, episodes=3, seed=123).mean_return

    result = run_dyna(TASK, config, seed=0, budget=200, evaluate=evaluate, distill=False)
    assert result.real_steps == 200
    assert result.curve[0][0] == 200
    # The surrogate return says what it is the mean of.
    entry = result.log[0]
    assert entry['surrogate_return_episodes'] == 16
    assert 0 <= entry['surrogate_return_cut_short'] <= 16
    assert 0 < entry['surrogate_return_mean_length'] <= TASK.episode_length
    assert entry['policy_version'] == 1 and entry['model_version'] == 1

    rng = np.random.default_rng(0)
    env = TASK.make_env(seed=123)
    random_returns = []
    for episode in range(3):
        env.reset(seed=123 + episode)
        total, done = 0.0, False
        while not done:
            _, reward, terminated, truncated, _ = env.step(rng.uniform(-2, 2, size=1))
            total += reward
            done = terminated or truncated
        random_returns.append(total)
    assert result.final_return > np.mean(random_returns) + 300, (
        result.final_return,
        random_returns,
    )
