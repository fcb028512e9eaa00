"""Surrogate throughput: batched SINDy-surrogate steps per second on one core.

For each task, a model is fitted on real random-action data (as the Dyna loop's first fit)
and the batched surrogate is stepped with random actions, as SAC's data collection steps it
(policy evaluation excluded). Target from the core issue: >= 200,000 steps/s on one core.
Baseline, side by side: the real simulator (gymnasium / dm_control) stepped in a loop, and
pysindy's own `predict` stepped in a loop (what a surrogate built on pysindy would cost).

    python benchmarks/surrogate_speed.py [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
from pathlib import Path
import sys
import time

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    command_line,
    machine_info,
    package_versions,
    utc_now,
    write_json,
)

TARGET_STEPS_PER_SECOND = 200_000
SETTINGS = {'pendulum': 200, 'cartpole_swingup': 1_000}  # random real steps to fit on


def fitted_model(task, steps: int, seed: int = 0):
    from sindyrl_ros.core.dyna import DynaConfig, RealPlant, fit_dynamics

    plant = RealPlant(task.make_env(seed=seed), task, seed)
    plant.collect(steps, None, 0.0)
    model, validation, accepted = fit_dynamics(task, plant.trajectories, DynaConfig(), 1)
    return model, plant.trajectories, accepted


def real_env_speed(task, steps: int = 5_000) -> float:
    env = task.make_env(seed=0)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    actions = rng.uniform(task.action_low, task.action_high, size=(steps, len(task.action_low)))
    started = time.perf_counter()
    for action in actions:
        _, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            env.reset()
    return steps / (time.perf_counter() - started)


def pysindy_predict_speed(model, observations: np.ndarray, steps: int = 200) -> float:
    """One pysindy predict call per step for a single environment."""
    rng = np.random.default_rng(0)
    state = observations[:1].copy()
    low, high = model.action_low, model.action_high
    started = time.perf_counter()
    for _ in range(steps):
        action = rng.uniform(low, high, size=(1, len(low)))
        state = model.pysindy_model.predict(state, u=action)
    return steps / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--out', type=Path, default=Path(__file__).parent / 'results')
    parser.add_argument('--envs', type=int, default=1000, help='parallel surrogate episodes')
    arguments = parser.parse_args(argv)

    from threadpoolctl import threadpool_limits
    import torch

    from sindyrl_ros.core.surrogate import measure_surrogate_speed
    from sindyrl_ros.core.tasks import get_task

    torch.set_num_threads(1)
    results = {}
    with threadpool_limits(limits=1):  # one core: BLAS may not spread the batch
        for name, steps in SETTINGS.items():
            task = get_task(name)
            model, trajectories, accepted = fitted_model(task, steps)
            starts = np.concatenate([t.observations for t in trajectories])
            surrogate = {}
            for sample_members in (False, True):
                measured = measure_surrogate_speed(
                    model,
                    task.reward_function(),
                    starts,
                    task.observation_low,
                    task.observation_high,
                    n_envs=arguments.envs,
                    episode_length=task.episode_length,
                    sample_members=sample_members,
                )
                key = 'per_episode_members' if sample_members else 'aggregated_model'
                surrogate[key] = measured
            results[name] = {
                'model_fitted_on_real_steps': steps,
                'model_accepted': bool(accepted),
                'model_nonzero_coefficients': model.n_nonzero,
                'surrogate': surrogate,
                'real_simulator_steps_per_second': real_env_speed(task),
                'pysindy_predict_steps_per_second': pysindy_predict_speed(model, starts),
                'target_steps_per_second': TARGET_STEPS_PER_SECOND,
                'target_met': surrogate['aggregated_model']['steps_per_second']
                >= TARGET_STEPS_PER_SECOND,
            }
            line = results[name]
            print(
                f'{name}: surrogate {surrogate["aggregated_model"]["steps_per_second"]:,.0f} '
                f'steps/s ({arguments.envs} envs, one core; '
                f'{surrogate["per_episode_members"]["steps_per_second"]:,.0f} with per-episode '
                f'ensemble members) | real simulator '
                f'{line["real_simulator_steps_per_second"]:,.0f} steps/s | pysindy predict loop '
                f'{line["pysindy_predict_steps_per_second"]:,.0f} steps/s',
                flush=True,
            )
    document = {
        'format': 'sindyrl_ros/benchmark/surrogate_speed',
        'version': 1,
        'date': utc_now(),
        'command': command_line(),
        'machine': machine_info(),
        'versions': package_versions(),
        'threads': 1,
        'tasks': results,
    }
    arguments.out.mkdir(parents=True, exist_ok=True)
    write_json(arguments.out / 'surrogate_speed.json', document)
    print(f'wrote {arguments.out / "surrogate_speed.json"}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
