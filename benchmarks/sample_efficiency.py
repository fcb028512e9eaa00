"""Sample efficiency of SINDy-RL against model-free SAC and PPO (stable-baselines3).

The question a robot owner asks is how many real steps (minutes of robot time) a method
needs before its policy works, and whether it keeps working.  Every method is measured the
same way, on one evaluation grid per task: every ``eval_interval`` real training steps the
policy in force there (the one that acts on the next real step, trained on exactly the
real steps so far) is evaluated with 10 deterministic episodes on a separate copy of the
real environment, from start states that are fresh at every grid point and that training
never sees.  Per seed this gives the first crossing of the task's threshold
(``steps_to_threshold``), the grid point from which the threshold is met at every later
evaluation up to the budget (``steps_to_held_threshold``), and a final 50-episode
evaluation of the policy the run ends with (``final_eval_return_50``).  Evaluation episodes
are not training data and are not counted as real steps (they are counted separately).

``sindy_rl`` runs the Dyna loop in this process (``core.dyna.run_dyna``);
``sindy_rl_graph`` runs the same protocol through the ROS 2 node graph (``sindyrl-ros
train``: separate processes, real DDS, the embedded plant in lockstep) and evaluates the
policies it released on the same grid.

Run ``python benchmarks/sample_efficiency.py --help``; see benchmarks/README.md for the
protocol and the default settings.  stable-baselines3 is a benchmark-only dependency
(benchmarks/requirements.txt); the sindyrl_ros package never imports it.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
from dataclasses import dataclass, replace
import fcntl
import json
import math
from pathlib import Path
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import gymnasium
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'test' / 'ros'))

from common import (  # noqa: E402
    command_line,
    finite_or_none,
    git_state,
    machine_info,
    package_versions,
    read_json,
    utc_now,
    write_json,
    write_text,
)

from sindyrl_ros.core.tasks import TaskSpec, evaluate_policy, get_task  # noqa: E402

RESULTS_FORMAT = 'sindyrl_ros/benchmark/sample_efficiency'
# 2: one evaluation grid for every method, fresh evaluation seeds at every grid point,
# runs to the budget (first crossing and held threshold), final 50-episode evaluation,
# the ROS graph as a method, the commit per seed.  Version 1 results are not mixed in.
RESULTS_VERSION = 2
RESULTS_NAME = 'sample_efficiency'
BENCHMARK_DIR = Path(__file__).resolve().parent
REPOSITORY = BENCHMARK_DIR.parent

TASK_NAMES = ('pendulum', 'cartpole_swingup')
METHODS = ('sindy_rl', 'sindy_rl_graph', 'sac', 'ppo')
SINDY_METHODS = ('sindy_rl', 'sindy_rl_graph')
BASELINE_METHODS = ('sac', 'ppo')
METHOD_LABELS = {
    'sindy_rl': 'SINDy-RL (Dyna, core loop)',
    'sindy_rl_graph': 'SINDy-RL (ROS graph)',
    'sac': 'SAC (SB3)',
    'ppo': 'PPO (SB3)',
}
METHOD_COLORS = {
    'sindy_rl': 'tab:red',
    'sindy_rl_graph': 'tab:orange',
    'sac': 'tab:blue',
    'ppo': 'tab:green',
}
# Methods run when --methods is not given.  The swing-up through the graph steps 20,000
# training and ~200,000 evaluation steps in lockstep over DDS and distils a sparse policy
# after every model: too slow for the default run on 2 cores; the core loop measures the
# swing-up (`--methods sindy_rl_graph --tasks cartpole_swingup` still runs it).
DEFAULT_METHODS = {
    'pendulum': METHODS,
    'cartpole_swingup': ('sindy_rl', 'sac', 'ppo'),
}

# ---------------------------------------------------------------- evaluation protocol
#
# Seed streams (gymnasium reset seeds), disjoint by construction:
# - training: run_dyna's plant resets with seed + episode, SB3's training envs with
#   seed + env index (then continue their own generator), the graph's plant once with the
#   seed: all below TRAINING_SEED_LIMIT (checked for the Dyna loop before it runs);
# - the final 50-episode evaluation: FINAL_EVAL_SEED + i, i < 50;
# - the grid evaluation at real step g: EVAL_SEED + EVAL_SEED_STRIDE * (g // grid) + i,
#   i < 10, grid = the task's GRID_INTERVAL: fresh start states at every grid point, the
#   same for every method and seed at the same real step.
EVAL_EPISODES = 10
EVAL_SEED = 1_000_000
EVAL_SEED_STRIDE = 1_000
FINAL_EVAL_EPISODES = 50
FINAL_EVAL_SEED = 500_000
TRAINING_SEED_LIMIT = 100_000
assert TRAINING_SEED_LIMIT <= FINAL_EVAL_SEED
assert FINAL_EVAL_SEED + FINAL_EVAL_EPISODES <= EVAL_SEED
assert EVAL_EPISODES <= EVAL_SEED_STRIDE

# The common evaluation grid of each task: every method is evaluated at multiples of its
# eval_interval, itself a multiple of this (SINDy-RL and SAC on every grid point; PPO, whose
# policy changes once per rollout of 4,096 / 16,384 steps, on every 20th / 16th).
GRID_INTERVAL = {'pendulum': 200, 'cartpole_swingup': 1_000}
TORCH_THREADS = 1

# Seeds per task when --seeds is not given (SINDy-RL, core loop and graph alike).  Swing-up:
# 3, not 5, for run time; recorded in the results as 'seeds_note'.
DEFAULT_SINDY_SEEDS = {'pendulum': 5, 'cartpole_swingup': 3}
SEEDS_NOTES = {
    'cartpole_swingup': '3 SINDy-RL seeds by default (not 5), for run time on 2 cores',
}
DEFAULT_BASELINE_SEEDS = 3
# Longest wall time of one graph run (sindyrl-ros train --timeout).
DEFAULT_GRAPH_TIMEOUT_S = 4 * 3600.0


def eval_seed(real_steps: int, task_name: str) -> int:
    """First reset seed of the grid evaluation at ``real_steps`` (a grid point)."""
    grid = GRID_INTERVAL[task_name]
    if real_steps <= 0 or real_steps % grid:
        raise ValueError(f'{real_steps} real steps is not a point of the {grid}-step grid')
    return EVAL_SEED + EVAL_SEED_STRIDE * (real_steps // grid)


@dataclass(frozen=True)
class Options:
    """How this invocation runs each seed (command-line options)."""

    budget_scale: float = 1.0
    surrogate_scale: float = 1.0
    stop_at_threshold: bool = False
    graph_runs: Path | None = None
    graph_timeout_s: float = DEFAULT_GRAPH_TIMEOUT_S


def scaled_budget(budget: int, interval: int, scale: float) -> int:
    """The real-step budget under a debug scale, in whole evaluation intervals (at least one)."""
    if scale == 1.0:
        return int(budget)
    return max(interval, int(round(budget * scale / interval)) * interval)


# --------------------------------------------------------------------------- SINDy-RL


# Per-task settings of the Dyna loop: the one place to tune them for this benchmark, for the
# core loop and the graph alike.  'budget' is the real-step budget; the rest are DynaConfig
# fields (defaults otherwise).  initial_steps and steps_per_iteration are multiples of the
# episode length and of the task's grid: every policy is released on a grid point.
SINDY_RL_SETTINGS: dict[str, dict[str, Any]] = {
    'pendulum': {
        'budget': 2_000,
        'dyna': {'initial_steps': 200, 'steps_per_iteration': 200},
    },
    'cartpole_swingup': {
        'budget': 20_000,
        'dyna': {
            'initial_steps': 1_000,
            'steps_per_iteration': 1_000,
            # Episodes are 1,000 steps: more surrogate experience per model than Pendulum.
            'surrogate_steps_first': 300_000,
            'surrogate_steps_per_model': 150_000,
        },
    },
}


def sindy_rl_config(task: TaskSpec, seed: int, options: Options):
    """The DynaConfig and real-step budget used for ``task`` and ``seed``.

    The E-SINDy ensemble's bootstrap draws follow the seed (as the model updater's ``seed``
    does in the graph), so seeds vary every random choice of the method.
    """
    from sindyrl_ros.core.dyna import DynaConfig

    settings = SINDY_RL_SETTINGS[task.name]
    config = DynaConfig(**settings['dyna'])
    config.ensemble = replace(config.ensemble, seed=int(seed))
    if options.surrogate_scale != 1.0:
        for name in ('surrogate_steps_first', 'surrogate_steps_per_model'):
            steps = getattr(config, name)
            setattr(config, name, max(1, int(round(steps * options.surrogate_scale))))
    grid = GRID_INTERVAL[task.name]
    for name in ('initial_steps', 'steps_per_iteration'):
        value = getattr(config, name)
        if value % grid or value % task.episode_length:
            raise ValueError(
                f'{task.name}: {name} = {value} must be a multiple of the evaluation grid '
                f'({grid}) and of the episode length ({task.episode_length}), so that every '
                'policy is released on a grid point'
            )
    budget = scaled_budget(settings['budget'], config.steps_per_iteration, options.budget_scale)
    return config, budget


def sindy_rl_settings(task: TaskSpec, options: Options) -> dict[str, Any]:
    config, budget = sindy_rl_config(task, 0, options)
    dyna = config.to_dict()
    dyna['ensemble']['seed'] = 'the run seed'
    return {
        'budget': budget,
        'eval_interval': config.steps_per_iteration,
        'hyperparameters': {'dyna_config': dyna, 'torch_threads': TORCH_THREADS},
    }


# ------------------------------------------------------------------ SB3 baselines

# Hyperparameters from rl-baselines3-zoo (DLR-RM/rl-baselines3-zoo), copied as
# stable-baselines3 keyword arguments; the zoo's n_timesteps is replaced by the budget.
ZOO_SAC = ('hyperparams/sac.yml', 'c94924e5b31bce36920f29d3eb18b975231bdec4')
ZOO_PPO = ('hyperparams/ppo.yml', '208b6fdf3a9aa24de44b2e068c6e5f6a07d97fcc')
SWINGUP_NOTE = (
    'rl-baselines3-zoo has no dm_control or MuJoCo cart-pole swing-up entry; the closest '
    'is InvertedPendulumSwingupBulletEnv-v0 (PyBullet cart-pole swing-up), used here.'
)


@dataclass
class BaselineSpec:
    """One stable-baselines3 baseline on one task."""

    algorithm: str  # 'sac' | 'ppo'
    zoo_file: str
    zoo_commit: str
    zoo_entry: str
    budget: int  # real training steps
    eval_interval: int  # real steps between evaluations: a multiple of the task's grid
    kwargs: dict[str, Any]  # passed to SAC(...) / PPO(...)
    n_envs: int = 1
    normalize: bool = False  # VecNormalize (observations and rewards), as the zoo's
    note: str = ''

    def to_dict(self) -> dict[str, Any]:
        return {
            'algorithm': self.algorithm,
            'source': {
                'repository': 'DLR-RM/rl-baselines3-zoo',
                'file': self.zoo_file,
                'commit': self.zoo_commit,
                'entry': self.zoo_entry,
            },
            'sb3_kwargs': self.kwargs,
            'n_envs': self.n_envs,
            'normalize': self.normalize,
            'policy': 'MlpPolicy',
            'device': 'cpu',
            'torch_threads': TORCH_THREADS,
            'note': self.note,
        }


BASELINES: dict[tuple[str, str], BaselineSpec] = {
    # sac.yml Pendulum-v1: n_timesteps 20000, learning_rate 1e-3 (rest SB3 defaults).
    ('pendulum', 'sac'): BaselineSpec(
        'sac',
        *ZOO_SAC,
        'Pendulum-v1',
        budget=20_000,
        eval_interval=200,
        kwargs={'learning_rate': 1e-3},
    ),
    # ppo.yml Pendulum-v1 (tuned): n_envs 4, n_timesteps 1e5 (budget here 200k).
    ('pendulum', 'ppo'): BaselineSpec(
        'ppo',
        *ZOO_PPO,
        'Pendulum-v1',
        budget=200_000,
        eval_interval=4_000,  # every 20th grid point: one rollout is 4 envs x 1024 steps
        n_envs=4,
        kwargs={
            'n_steps': 1024,
            'gae_lambda': 0.95,
            'gamma': 0.9,
            'n_epochs': 10,
            'ent_coef': 0.0,
            'learning_rate': 1e-3,
            'clip_range': 0.2,
            'use_sde': True,
            'sde_sample_freq': 4,
        },
    ),
    # sac.yml InvertedPendulumSwingupBulletEnv-v0 = the pybullet defaults (n_timesteps 3e5).
    ('cartpole_swingup', 'sac'): BaselineSpec(
        'sac',
        *ZOO_SAC,
        'InvertedPendulumSwingupBulletEnv-v0',
        budget=100_000,
        eval_interval=1_000,
        note=SWINGUP_NOTE,
        kwargs={
            'learning_rate': 7.3e-4,
            'buffer_size': 300_000,
            'batch_size': 256,
            'ent_coef': 'auto',
            'gamma': 0.98,
            'tau': 0.02,
            'train_freq': 8,
            'gradient_steps': 8,
            'learning_starts': 10_000,
            'use_sde': True,
            'policy_kwargs': {'log_std_init': -3, 'net_arch': [400, 300]},
        },
    ),
    # ppo.yml InvertedPendulumSwingupBulletEnv-v0: normalize, n_envs 8, n_timesteps 2e6.
    ('cartpole_swingup', 'ppo'): BaselineSpec(
        'ppo',
        *ZOO_PPO,
        'InvertedPendulumSwingupBulletEnv-v0',
        budget=1_000_000,
        eval_interval=16_000,  # every 16th grid point: one rollout is 8 envs x 2048 steps
        n_envs=8,
        normalize=True,
        note=SWINGUP_NOTE,
        kwargs={
            'n_steps': 2048,
            'batch_size': 64,
            'gae_lambda': 0.95,
            'gamma': 0.99,
            'n_epochs': 10,
            'ent_coef': 0.0,
            'learning_rate': 2.5e-4,
            'clip_range': 0.2,
        },
    ),
}


# -------------------------------------------------------------------- evaluation


class GridEvaluator:
    """Evaluations of one run: on the task's grid, and the final one; counts their steps.

    Every evaluation builds a separate instance of the real environment
    (``core.tasks.evaluate_policy``) and runs deterministic episodes from the seeds of its
    stream (module comment above :data:`EVAL_SEED`).
    """

    def __init__(self, task: TaskSpec, label: str, started: float) -> None:
        self.task = task
        self.label = label
        self.started = started
        self.curve: list[list[float]] = []  # [[real steps, mean return], ...]
        self.steps = 0
        self.seconds = 0.0
        self.final_steps = 0
        self.final_seconds = 0.0

    def at(self, policy, real_steps: int, note: str = '') -> float:
        """Mean return of ``policy`` at the grid point ``real_steps``."""
        began = time.perf_counter()
        evaluation = evaluate_policy(
            self.task, policy, episodes=EVAL_EPISODES, seed=eval_seed(real_steps, self.task.name)
        )
        self.seconds += time.perf_counter() - began
        self.steps += evaluation.steps
        mean_return = float(evaluation.mean_return)
        self.curve.append([int(real_steps), mean_return])
        print(
            f'[{self.label}] real steps {real_steps:>8d} (+{self.steps} eval)  return '
            f'{mean_return:9.1f}  ({time.perf_counter() - self.started:7.1f} s){note}',
            flush=True,
        )
        return mean_return

    def final(self, policy, what: str = 'final policy'):
        """The final evaluation: 50 episodes from the final stream (``PolicyEvaluation``)."""
        began = time.perf_counter()
        evaluation = evaluate_policy(
            self.task, policy, episodes=FINAL_EVAL_EPISODES, seed=FINAL_EVAL_SEED
        )
        self.final_seconds += time.perf_counter() - began
        self.final_steps += evaluation.steps
        print(
            f'[{self.label}] {what}: {FINAL_EVAL_EPISODES}-episode return '
            f'{evaluation.mean_return:.1f} (± {np.std(evaluation.returns):.1f})',
            flush=True,
        )
        return evaluation


def safe_command_policy(task: TaskSpec):
    """What a SINDy-RL controller does in evaluate mode before any policy: the safe command
    (zero, clipped into the action limits)."""
    action = np.clip(np.zeros(task.action_dim), task.action_low, task.action_high)
    return lambda observation: action.copy()


class PolicyInForce:
    """Evaluates a run's policy in force at every grid point, from its releases.

    A policy released at real step ``s`` (trained on the first ``s`` steps) acts from step
    ``s + 1`` on: it is in force at the grid points ``>= s`` until the next release.
    Before the first release the safe command is in force.
    """

    def __init__(self, grid: GridEvaluator, interval: int, budget: int, idle_policy) -> None:
        self.grid = grid
        self.interval = int(interval)
        self.budget = int(budget)
        self.policy = idle_policy
        self.version: Any = None
        self.next_point = self.interval

    def _note(self) -> str:
        return (
            '  (no policy yet: safe command)'
            if self.version is None
            else (f'  policy v{self.version}')
        )

    def catch_up(self, real_steps: int) -> None:
        """Evaluate the grid points up to ``real_steps`` (and the budget) not done yet."""
        while self.next_point <= min(real_steps, self.budget):
            self.grid.at(self.policy, self.next_point, self._note())
            self.next_point += self.interval

    def release(self, policy, version: Any, real_steps: int) -> float | None:
        """A new policy is in force from ``real_steps``; its evaluation there if that is a
        grid point (None otherwise: the next grid point will evaluate it)."""
        self.catch_up(real_steps - 1)
        self.policy, self.version = policy, version
        if real_steps == self.next_point:
            self.next_point += self.interval
            return self.grid.at(policy, real_steps, self._note())
        return None


def first_crossing(curve: list[list[float]], threshold: float) -> int | None:
    """The first evaluated real-step count with a mean return >= ``threshold``."""
    return next((int(steps) for steps, value in curve if value >= threshold), None)


def held_crossing(
    curve: list[list[float]], threshold: float, interval: int, budget: int
) -> int | None:
    """The first grid point from which every later evaluation up to the budget meets the
    threshold; None when the last one does not, or the curve does not cover the grid."""
    expected = list(range(interval, budget + 1, interval))
    if [int(steps) for steps, _ in curve] != expected:
        return None
    held = None
    for steps, value in reversed(curve):
        if value < threshold:
            break
        held = int(steps)
    return held


def crossings(record: dict, task: TaskSpec, settings: dict, options: Options) -> None:
    """Add ``steps_to_threshold`` and ``steps_to_held_threshold`` to a seed's record."""
    curve = record['curves']
    record['steps_to_threshold'] = first_crossing(curve, task.threshold)
    record['steps_to_held_threshold'] = (
        None
        if options.stop_at_threshold
        else held_crossing(curve, task.threshold, settings['eval_interval'], settings['budget'])
    )


def provenance() -> dict[str, Any]:
    """Where and from what a seed was measured: commit, tree state, command, machine, date."""
    return {
        'date': utc_now(),
        'git': git_state(REPOSITORY),
        'command': command_line(),
        'machine': machine_info(),
    }


def grid_fields(grid, final, wall_time_s: float) -> dict[str, Any]:
    """What every method's record says about its evaluation grid and final evaluation."""
    return {
        'curves': grid.curve,
        'final_return': grid.curve[-1][1] if grid.curve else None,
        'final_eval_return_50': float(final.mean_return),
        'final_eval_returns_50': [float(value) for value in final.returns],
        'wall_time_s': wall_time_s,
        'eval_time_s': grid.seconds,
        'eval_steps': grid.steps,
        'final_eval_steps': grid.final_steps,
    }


# ------------------------------------------------------------------ SINDy-RL, core loop


class CountSteps(gymnasium.Wrapper):
    """Counts the real plant's steps, so an evaluation knows the real step it happens at."""

    def __init__(self, env: gymnasium.Env) -> None:
        super().__init__(env)
        self.steps = 0

    def step(self, action):
        self.steps += 1
        return self.env.step(action)


def run_sindy_rl(task: TaskSpec, seed: int, options: Options) -> dict[str, Any]:
    """One seed of the Dyna loop (core.dyna.run_dyna) with the benchmark's evaluation.

    ``run_dyna`` evaluates every new policy when it is released; here that evaluation is the
    grid evaluation at the real step of the release (always a grid point with these
    settings), and grid points where a model was rejected evaluate the policy still in
    force.  The loop runs to the budget unless ``options.stop_at_threshold``.
    """
    from sindyrl_ros.core.dyna import run_dyna
    from sindyrl_ros.core.policies import SparsePolynomialPolicy

    config, budget = sindy_rl_config(task, seed, options)
    settings = sindy_rl_settings(task, options)
    episodes = budget // task.episode_length + 2
    if seed + episodes >= TRAINING_SEED_LIMIT:
        raise ValueError(f'seed {seed}: training resets would reach {TRAINING_SEED_LIMIT}')
    label = f'{task.name}/sindy_rl seed {seed}'
    started = time.perf_counter()
    grid = GridEvaluator(task, label, started)
    in_force = PolicyInForce(grid, config.steps_per_iteration, budget, safe_command_policy(task))
    plants: list[CountSteps] = []

    def make_counted_env(seed=None, **overrides):
        plants.append(CountSteps(task.make_env(seed=seed, **overrides)))
        return plants[-1]

    plant_task = copy.copy(task)
    plant_task.make_env = make_counted_env  # the plant only: evaluations use `task`
    sparse_final: list = []
    released = [0]  # policies released so far

    def evaluate(policy) -> float:
        if isinstance(policy, SparsePolynomialPolicy):  # distilled after the loop
            sparse_final.append(grid.final(policy, 'sparse policy'))
            return float(sparse_final[-1].mean_return)
        if len(plants) != 1:
            raise RuntimeError(f'run_dyna made {len(plants)} plants; expected one')
        real_steps = plants[0].steps
        released[0] += 1
        value = in_force.release(policy, released[0], real_steps)
        if value is None:
            raise RuntimeError(
                f'{label}: a policy was released at {real_steps} real steps, off the '
                f'{config.steps_per_iteration}-step evaluation grid'
            )
        return value

    def progress(entry: dict) -> None:
        accepted = 'accepted' if entry.get('model_accepted') else 'REJECTED'
        print(
            f'[{label}] model {entry.get("model_version")} {accepted} at {entry["real_steps"]} '
            f'real steps, nrmse {entry.get("validation_nrmse", math.nan):.3g}, surrogate '
            f'return {entry.get("surrogate_return", math.nan):.1f}',
            flush=True,
        )

    result = run_dyna(
        plant_task,
        config,
        seed,
        budget,
        evaluate,
        stop_at_threshold=options.stop_at_threshold,
        distill=True,
        progress=progress,
    )
    if plants[0].steps != result.real_steps:
        raise RuntimeError(
            f'{label}: {plants[0].steps} plant steps, run_dyna counted {result.real_steps}'
        )
    in_force.catch_up(result.real_steps)
    final = grid.final(result.policy if result.policy else in_force.policy)
    wall = time.perf_counter() - started
    record = {
        **grid_fields(grid, final, wall),
        'real_steps': int(result.real_steps),
        'nn_parameters': result.policy.n_parameters if result.policy else None,
        'sparse_policy_coefficients': (
            result.sparse_policy.n_parameters if result.sparse_policy else None
        ),
        'sparse_policy_return_50': (float(sparse_final[-1].mean_return) if sparse_final else None),
        'model_nonzero': result.model.n_nonzero if result.model else None,
        'dyna_log': [finite_or_none(dict(entry)) for entry in result.log],
    }
    crossings(record, task, settings, options)
    print_done(label, record)
    return record


def print_done(label: str, record: dict) -> None:
    sparse = record.get('sparse_policy_return_50')
    if sparse is not None:
        coefficients = record.get('sparse_policy_coefficients')
        sparse = f', sparse policy ({coefficients} coefficients) {sparse:.1f}'
    print(
        f'[{label}] done: first crossing {record["steps_to_threshold"]}, held from '
        f'{record["steps_to_held_threshold"]}, {record["real_steps"]} real steps '
        f'(+{record["eval_steps"]} grid and {record["final_eval_steps"]} final evaluation '
        f'steps), final {FINAL_EVAL_EPISODES}-episode return '
        f'{record["final_eval_return_50"]:.1f}{sparse or ""}, {record["wall_time_s"]:.1f} s',
        flush=True,
    )


# -------------------------------------------------------------- SINDy-RL, ROS graph

# What the graph is told that no node parameter expresses: these DynaConfig fields must stay
# at their defaults for the graph to run the same loop as the core (checked).
GRAPH_UNMAPPED = {
    'ensemble': ('max_iter', 'n_candidates_to_drop', 'target', 'unbias', 'normalize_columns'),
    'sac': (
        'tau',
        'buffer_size',
        'initial_alpha',
        'target_entropy',
        'auto_entropy',
        'log_std_min',
        'log_std_max',
        'return_window',
    ),
    'library': ('include_bias',),
}

def graph_parameters(
    task: TaskSpec, config, seed: int, stop_at_threshold: bool
) -> dict[str, dict[str, Any]]:
    """The node parameters that make the graph run the core loop's settings for ``seed``.

    Raises
    ------
    ValueError
        When a DynaConfig field that no node parameter expresses is not at its default.
    """
    from sindyrl_ros.core.dyna import DynaConfig

    defaults = DynaConfig().to_dict()
    used = config.to_dict()
    for group, names in GRAPH_UNMAPPED.items():
        for name in names:
            if used[group][name] != defaults[group][name]:
                raise ValueError(f'the graph has no parameter for {group}.{name}')
    if config.sac.actor_lr != config.sac.critic_lr or config.sac.actor_lr != config.sac.alpha_lr:
        raise ValueError('the graph has one sac_learning_rate for actor, critics and alpha')
    library, ensemble, sac = config.library, config.ensemble, config.sac
    return {
        'plant': {'seed': int(seed)},
        'controller': {'seed': int(seed), 'exploration_noise': float(config.exploration_noise)},
        'model_updater': {
            'seed': int(seed),
            # One refit per chunk of exploration, as run_dyna refits at every hold.
            'refit_every': int(config.steps_per_iteration),
            'max_validation_error': float(config.max_validation_error),
            'validation_horizon': int(config.validation_horizon),
            'validation_fraction': float(config.validation_fraction),
            'library_degree': int(library.degree),
            'library_control': str(library.control),
            'library_circle_reduction': bool(library.circle_reduction),
            'ensemble_models': int(ensemble.n_models),
            'stlsq_threshold': float(ensemble.threshold),
            'ridge_alpha': float(ensemble.alpha),
            'bagging': bool(ensemble.bagging),
            'library_ensemble': bool(ensemble.library_ensemble),
            'aggregate': str(ensemble.aggregate),
            'n_start_observations': int(config.n_start_observations),
        },
        'policy_trainer': {
            'seed': int(seed),
            'surrogate_steps_first': int(config.surrogate_steps_first),
            'surrogate_steps_per_model': int(config.surrogate_steps_per_model),
            'surrogate_envs': int(config.surrogate_envs),
            'start_noise': float(config.start_noise),
            'sparse_degree': int(config.sparse_degree),
            'sac_hidden': [int(width) for width in sac.hidden],
            'sac_activation': str(sac.activation),
            'sac_batch_size': int(sac.batch_size),
            'sac_learning_starts': int(sac.learning_starts),
            'sac_updates_per_step': float(sac.updates_per_step),
            'sac_learning_rate': float(sac.actor_lr),
            'sac_gamma': float(sac.gamma),
            'device': str(sac.device),
            'torch_threads': TORCH_THREADS,
            'distill_sparse': True,
            'deploy_policy': 'mlp',
        },
        'run_supervisor': {
            'initial_steps': int(config.initial_steps),
            'steps_per_iteration': int(config.steps_per_iteration),
            'eval_episodes': EVAL_EPISODES,
            'eval_every_policy': True,
            'hold_for_policy': True,
            # To the budget unless asked otherwise: the benchmark finds the crossings.
            'stop_at_threshold': bool(stop_at_threshold),
        },
    }


GRAPH_DIFFERENCES = (
    'The graph evaluates each new policy itself, on the plant, with eval_episodes episodes '
    "from the plant's own reset stream (seeded once with the run seed); the benchmark "
    'evaluates the policies the graph released, loaded from run_dir/policies, on the grid '
    'like every other method (graph_curve keeps the on-plant evaluations).',
    'Start observations for surrogate episodes: drawn per model with seed + model version '
    '(model updater), from one generator seeded with the seed in run_dyna.',
    'The policy trainer distils a sparse policy after every model before publishing it '
    '(wall time only: the plant is held meanwhile); run_dyna distils once, at the end.',
    'Between processes: DDS, lockstep plant, controller exploring with its own seeded noise.',
)


def graph_settings(task: TaskSpec, options: Options) -> dict[str, Any]:
    config, budget = sindy_rl_config(task, 0, options)
    parameters = graph_parameters(task, config, 0, options.stop_at_threshold)
    for section in ('plant', 'controller', 'model_updater', 'policy_trainer'):
        parameters[section]['seed'] = 'the run seed'
    core = sindy_rl_settings(task, options)['hyperparameters']['dyna_config']
    return {
        'budget': budget,
        'eval_interval': config.steps_per_iteration,
        'hyperparameters': {
            'graph_parameters': parameters,
            'graph_parameter_base': f'config/{task.name}.yaml',
            'core_dyna_config': core,
            'differences_from_core_loop': list(GRAPH_DIFFERENCES),
            'torch_threads': TORCH_THREADS,
        },
    }


def graph_config_file(task: TaskSpec, parameters: dict, path: Path) -> None:
    """config/<task>.yaml with ``parameters`` merged into its node sections."""
    import yaml

    from sindyrl_ros import graph

    document = yaml.safe_load(graph.task_config(task.name).read_text())
    for section, values in parameters.items():
        if values:
            node = document.setdefault(section, {}) or {}
            document[section] = node
            node.setdefault('ros__parameters', {}).update(values)
    path.write_text(yaml.safe_dump(document, sort_keys=False))


def run_graph_process(command: list[str], env: dict[str, str], label: str, log: Path) -> int:
    """Run ``sindyrl-ros train``, its output shown with the seed's label and kept in ``log``."""
    with open(log, 'w', encoding='utf-8') as kept:
        process = subprocess.Popen(
            command,
            cwd=REPOSITORY,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors='replace',
        )
        try:
            for line in process.stdout:
                kept.write(line)
                print(f'[{label}] {line.rstrip()}', flush=True)
            return process.wait()
        finally:
            if process.poll() is None:  # interrupted: Ctrl-C reached it too; wait for it
                try:
                    process.wait(60)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def run_sindy_rl_graph(task: TaskSpec, seed: int, options: Options) -> dict[str, Any]:
    """One seed of SINDy-RL through the ROS graph: ``sindyrl-ros train`` on the sim backend.

    The run's progress log says which policy was released at which real step; the policies
    it saved are evaluated on the grid (and finally) exactly as the core loop's are.
    """
    from ros_testing import DomainLease

    from sindyrl_ros.core.policy_loading import load_policy
    from sindyrl_ros.core.progress import read_progress
    from sindyrl_ros.processes import ros_environment

    config, budget = sindy_rl_config(task, seed, options)
    settings = graph_settings(task, options)
    label = f'{task.name}/sindy_rl_graph seed {seed}'
    parent = options.graph_runs or Path(tempfile.gettempdir())
    parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(
        tempfile.mkdtemp(
            prefix=f'{task.name}-seed{seed}-{time.strftime("%Y%m%d-%H%M%S")}-', dir=parent
        )
    )
    config_path = workdir / f'{task.name}.yaml'
    run_dir = workdir / 'run'
    graph_config_file(
        task, graph_parameters(task, config, seed, options.stop_at_threshold), config_path
    )
    started = time.perf_counter()
    lease = DomainLease()
    try:
        command = [
            sys.executable,
            '-m',
            'sindyrl_ros.cli',
            'train',
            '--task',
            task.name,
            '--config',
            str(config_path),
            '--budget',
            str(budget),
            '--run-dir',
            str(run_dir),
            '--domain-id',
            str(lease.domain_id),
            '--timeout',
            f'{options.graph_timeout_s:.0f}',
        ]
        print(f'[{label}] {" ".join(command)}', flush=True)
        code = run_graph_process(
            command, ros_environment(lease.domain_id), label, workdir / 'train.log'
        )
    finally:
        lease.release()
    graph_wall = time.perf_counter() - started
    summary_path = run_dir / 'summary.json'
    # 0: threshold reached, 3: budget spent without reaching it (always so when the
    # threshold parameter is out of reach); anything else is a failed run.
    if code not in (0, 3) or not summary_path.exists():
        raise RuntimeError(
            f'{label}: sindyrl-ros train exited with code {code}; output in '
            f'{workdir / "train.log"}, node logs in {run_dir / "logs"}'
        )
    summary = json.loads(summary_path.read_text())
    events, skipped = read_progress(run_dir)
    releases = [
        [int(event['real_steps']), event.get('policy_version')]
        for event in events
        if event.get('event') == 'release'
    ]
    graph_curve = [
        [int(event['real_steps']), float(event['eval_return_mean'])]
        for event in events
        if event.get('event') == 'evaluation' and event.get('eval_return_mean') is not None
    ]

    def policy_file(kind: str, version) -> Path:
        return run_dir / 'policies' / f'{kind}_{version}.json'

    def load(kind: str, version):
        return load_policy(policy_file(kind, version), task.observation_names, task.action_names)

    grid = GridEvaluator(task, label, time.perf_counter())
    in_force = PolicyInForce(grid, config.steps_per_iteration, budget, safe_command_policy(task))
    for real_steps, version in releases:
        in_force.release(load('policy', version), version, real_steps)
    real_steps = int(summary.get('real_steps') or 0)
    in_force.catch_up(real_steps)
    final_version = in_force.version
    if final_version is None:
        final = grid.final(in_force.policy, 'safe command (no policy released)')
        sparse = None
    else:
        final = grid.final(in_force.policy, f'final policy v{final_version}')
        sparse_path = policy_file('sparse', final_version)
        sparse = load('sparse', final_version) if sparse_path.exists() else None
    sparse_final = grid.final(sparse, 'sparse policy') if sparse is not None else None
    record = {
        **grid_fields(grid, final, graph_wall + grid.seconds + grid.final_seconds),
        'real_steps': real_steps,
        'nn_parameters': in_force.policy.n_parameters if final_version is not None else None,
        'sparse_policy_coefficients': sparse.n_parameters if sparse is not None else None,
        'sparse_policy_return_50': (
            float(sparse_final.mean_return) if sparse_final is not None else None
        ),
        'model_nonzero': summary.get('model_nonzero'),
        'graph_curve': graph_curve,
        'graph_steps_to_threshold': first_crossing(graph_curve, task.threshold),
        'graph_eval_steps': summary.get('eval_steps'),
        'graph_wall_time_s': graph_wall,
        'held_wall_time_s': summary.get('held_wall_time_s'),
        'releases': releases,
        'final_policy_version': final_version,
        'stop_reason': summary.get('stop_reason'),
        'progress_lines_skipped': skipped,
    }
    crossings(record, task, settings, options)
    print_done(label, record)
    if options.graph_runs is None:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f'[{label}] run kept in {workdir}', flush=True)
    return record


# ------------------------------------------------------------------ SB3 baselines, runs


def make_training_env(task: TaskSpec, spec: BaselineSpec, seed: int):
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    env = make_vec_env(lambda: task.make_env(), n_envs=spec.n_envs, seed=seed)
    if spec.normalize:
        env = VecNormalize(env, gamma=spec.kwargs.get('gamma', 0.99))
    return env


def run_baseline(task: TaskSpec, method: str, seed: int, options: Options) -> dict[str, Any]:
    """One seed of SB3 SAC or PPO, the policy in force evaluated at every grid point.

    SAC's policy changes only at its gradient updates, which follow each rollout of
    ``train_freq`` steps; PPO's only at the end of a rollout.  A grid point is therefore
    evaluated at the start of the first rollout at or after it (after the updates on all
    data so far: the policy evaluated at N steps has learnt from exactly N), and, for PPO,
    in the middle of a rollout, where the policy in force is the one collecting it.
    """
    import stable_baselines3
    from stable_baselines3.common.callbacks import BaseCallback

    spec = BASELINES[(task.name, method)]
    settings = baseline_settings(task.name, method, options)
    budget, interval = settings['budget'], settings['eval_interval']
    if seed + spec.n_envs >= TRAINING_SEED_LIMIT:
        raise ValueError(f'seed {seed}: training resets would reach {TRAINING_SEED_LIMIT}')
    label = f'{task.name}/{method} seed {seed}'
    started = time.perf_counter()
    grid = GridEvaluator(task, label, started)

    env = make_training_env(task, spec, seed)
    algorithm = {'sac': stable_baselines3.SAC, 'ppo': stable_baselines3.PPO}[method]
    kwargs = json.loads(json.dumps(spec.kwargs))  # a copy SB3 may not mutate
    model = algorithm('MlpPolicy', env, seed=seed, device='cpu', verbose=0, **kwargs)
    on_policy = method == 'ppo'

    def act(observation: np.ndarray) -> np.ndarray:
        if spec.normalize:
            observation = env.normalize_obs(observation)  # the statistics in force
        action, _ = model.predict(observation, deterministic=True)
        return action

    class EvaluateOnGrid(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.next_point = interval
            self.stop = False

        def evaluate_due(self) -> None:
            steps = int(self.model.num_timesteps)
            while not self.stop and self.next_point <= min(steps, budget):
                if steps != self.next_point:
                    raise RuntimeError(
                        f'{label}: grid point {self.next_point} evaluated at {steps} steps'
                    )
                mean_return = grid.at(act, self.next_point)
                self.next_point += interval
                if mean_return >= task.threshold and options.stop_at_threshold:
                    self.stop = True

        def _on_rollout_start(self) -> None:
            self.evaluate_due()

        def _on_step(self) -> bool:
            # PPO: within a rollout the policy in force is the one collecting it; its last
            # step's point waits for the update (the next rollout start or the end).
            if on_policy and self.locals.get('n_steps', 0) + 1 < self.locals.get(
                'n_rollout_steps', 0
            ):
                self.evaluate_due()
            return not self.stop

        def _on_training_end(self) -> None:
            self.evaluate_due()

    model.learn(total_timesteps=budget, callback=EvaluateOnGrid())
    final = grid.final(act)
    wall = time.perf_counter() - started
    env.close()
    record = {
        **grid_fields(grid, final, wall),
        'real_steps': int(model.num_timesteps),
        'nn_parameters': policy_parameter_count(model, method),
        'sb3_resolved_hyperparameters': resolved_hyperparameters(model),
    }
    crossings(record, task, settings, options)
    print_done(label, record)
    return record


def policy_parameter_count(model, method: str) -> int:
    """Weights of the deterministic policy only (no critics, value head or log-std)."""
    if method == 'sac':
        modules = [model.actor.latent_pi, model.actor.mu]
    else:
        modules = [model.policy.mlp_extractor.policy_net, model.policy.action_net]
    return int(sum(p.numel() for module in modules for p in module.parameters()))


def resolved_hyperparameters(model) -> dict[str, Any]:
    """The settings SB3 actually used: the zoo's values plus SB3's defaults for the rest."""
    names = (
        'learning_rate',
        'buffer_size',
        'batch_size',
        'learning_starts',
        'gamma',
        'tau',
        'gradient_steps',
        'ent_coef',
        'target_entropy',
        'use_sde',
        'sde_sample_freq',
        'n_steps',
        'n_epochs',
        'gae_lambda',
        'vf_coef',
        'max_grad_norm',
        'n_envs',
    )
    values: dict[str, Any] = {}
    for name in names:
        value = getattr(model, name, None)
        if isinstance(value, (bool, int, float, str)):
            values[name] = value
    if getattr(model, 'train_freq', None) is not None:
        values['train_freq'] = [model.train_freq.frequency, model.train_freq.unit.value]
    clip_range = getattr(model, 'clip_range', None)
    if callable(clip_range):
        values['clip_range'] = float(clip_range(1.0))
    values['net_arch'] = json.loads(json.dumps(getattr(model.policy, 'net_arch', None)))
    values['activation_fn'] = getattr(model.policy, 'activation_fn', type(None)).__name__
    return values


def baseline_settings(task_name: str, method: str, options: Options) -> dict[str, Any]:
    spec = BASELINES[(task_name, method)]
    interval = spec.eval_interval
    train_freq = spec.kwargs.get('train_freq', 1)
    if interval % GRID_INTERVAL[task_name] or interval % spec.n_envs or interval % train_freq:
        raise ValueError(
            f'{task_name}/{method}: eval_interval {interval} must be a multiple of the grid '
            f'({GRID_INTERVAL[task_name]}), n_envs ({spec.n_envs}) and train_freq ({train_freq})'
        )
    return {
        'budget': scaled_budget(spec.budget, interval, options.budget_scale),
        'eval_interval': interval,
        'hyperparameters': spec.to_dict(),
    }


def method_settings(task: TaskSpec, method: str, options: Options) -> dict[str, Any]:
    if method == 'sindy_rl':
        return sindy_rl_settings(task, options)
    if method == 'sindy_rl_graph':
        return graph_settings(task, options)
    return baseline_settings(task.name, method, options)


def run_seed(task: TaskSpec, method: str, seed: int, options: Options) -> dict[str, Any]:
    if method == 'sindy_rl':
        return run_sindy_rl(task, seed, options)
    if method == 'sindy_rl_graph':
        return run_sindy_rl_graph(task, seed, options)
    return run_baseline(task, method, seed, options)


# ----------------------------------------------------------------- results file


def task_knowledge(task: TaskSpec) -> dict[str, Any]:
    """What SINDy-RL is told about the task that SAC and PPO learn from returns only."""
    from sindyrl_ros.core import reward

    function = reward.REWARDS.get(task.reward)
    # The reward's docstring up to its Parameters section: what it is and its formula.
    description = (
        (function.__doc__ or '').split('Parameters\n')[0].replace('``', '`').replace('*', '')
        if function is not None
        else f'the expression {task.reward}'
    )
    return {
        'reward': task.reward,
        'reward_description': ' '.join(description.split()),
        'observation_names': list(task.observation_names),
        'observation_low': task.observation_low.tolist(),
        'observation_high': task.observation_high.tolist(),
        'saturation': {name: list(limits) for name, limits in task.saturation.items()},
        'angle_pairs': [list(pair) for pair in task.angle_pairs],
        'use': 'the surrogate computes the exact reward of every model step; recorded '
        'transitions outside the observation bounds are not fitted and surrogate episodes '
        'end there; saturated features are clipped by the model; (cos, sin) pairs are '
        'kept on the unit circle',
    }


def protocol(task: TaskSpec, method: str, settings: dict[str, Any], options: Options) -> dict:
    """Everything that must match for seeds to be pooled in one entry."""
    grid = GRID_INTERVAL[task.name]
    interval = settings['eval_interval']
    block = {
        'threshold': task.threshold,
        'budget_real_steps': settings['budget'],
        'evaluation': {
            'episodes': EVAL_EPISODES,
            'deterministic': True,
            'grid_interval_real_steps': grid,
            'interval_real_steps': interval,
            'when': f'at every multiple g of {interval} real training steps up to the budget: '
            'the policy in force at g (the one acting on real step g + 1, trained on the '
            'first g steps; before any SINDy-RL policy: the safe command)',
            'episode_seeds': f'at g: reset(seed={EVAL_SEED} + {EVAL_SEED_STRIDE} * (g // '
            f'{grid}) + i), i = 0..{EVAL_EPISODES - 1}: fresh at every grid point, the same '
            'for every method and seed at the same g',
            'environment': 'a separate instance of the real environment per evaluation',
            'eval_steps_excluded_from_real_steps': True,
        },
        'final_evaluation': {
            'episodes': FINAL_EVAL_EPISODES,
            'deterministic': True,
            'policy': 'the policy the run ends with (and, for SINDy-RL, its sparse policy)',
            'episode_seeds': f'reset(seed={FINAL_EVAL_SEED} + i), i = 0..'
            f'{FINAL_EVAL_EPISODES - 1}',
        },
        'training_seeds': f'below {TRAINING_SEED_LIMIT}: run_dyna resets with seed + episode, '
        'SB3 seeds env i with seed + i once, the graph seeds its plant once with the seed',
        'stop_at_threshold': options.stop_at_threshold,
        'held_measured': not options.stop_at_threshold,
        'hyperparameters': settings['hyperparameters'],
        'task_knowledge': task_knowledge(task),
        'debug_budget_scale': None if options.budget_scale == 1.0 else options.budget_scale,
        'debug_surrogate_scale': (
            None
            if options.surrogate_scale == 1.0 or method not in SINDY_METHODS
            else options.surrogate_scale
        ),
    }
    if method == 'sindy_rl_graph':
        block['graph'] = {
            'command': 'sindyrl-ros train --task <task> --config <config/<task>.yaml with '
            'hyperparameters.graph_parameters> --budget <budget> --run-dir <dir> '
            '--domain-id <a leased domain>',
            'backend': 'sim (embedded plant, lockstep)',
            'run_supervisor_stop_at_threshold': bool(options.stop_at_threshold),
        }
    return block


# Per-seed fields of every method, and of some.
PER_SEED_FIELDS = (
    'steps_to_threshold',
    'steps_to_held_threshold',
    'final_return',
    'final_eval_return_50',
    'final_eval_returns_50',
    'wall_time_s',
    'eval_time_s',
    'eval_steps',
    'final_eval_steps',
    'real_steps',
    'curves',
    'nn_parameters',
    'provenance',
)
METHOD_FIELDS = {
    'sindy_rl': (
        'sparse_policy_coefficients',
        'sparse_policy_return_50',
        'model_nonzero',
        'dyna_log',
    ),
    'sindy_rl_graph': (
        'sparse_policy_coefficients',
        'sparse_policy_return_50',
        'model_nonzero',
        'graph_curve',
        'graph_steps_to_threshold',
        'graph_eval_steps',
        'graph_wall_time_s',
        'held_wall_time_s',
        'releases',
        'final_policy_version',
        'stop_reason',
        'progress_lines_skipped',
    ),
}


def seed_fields(method: str) -> tuple[str, ...]:
    return PER_SEED_FIELDS + METHOD_FIELDS.get(method, ())


def seed_rows(entry: dict, method: str) -> dict[int, dict[str, Any]]:
    """The per-seed lists of an entry, regrouped by seed."""
    rows: dict[int, dict[str, Any]] = {}
    for index, seed in enumerate(entry.get('seeds', [])):
        rows[int(seed)] = {
            name: entry[name][index]
            for name in seed_fields(method)
            if name in entry and index < len(entry[name])
        }
    return rows


def store_run(entry: dict, method: str, seed: int, record: dict[str, Any]) -> None:
    """Add (or replace) one seed in an entry, keeping the lists ordered by seed."""
    rows = seed_rows(entry, method)
    if 'sb3_resolved_hyperparameters' in record:
        entry['sb3_resolved_hyperparameters'] = record['sb3_resolved_hyperparameters']
    rows[int(seed)] = {name: record.get(name) for name in seed_fields(method)}
    seeds = sorted(rows)
    entry['seeds'] = seeds
    for name in seed_fields(method):
        entry[name] = [rows[s].get(name) for s in seeds]


def median_steps(values: list[int | None], budget: int) -> tuple[float | None, bool]:
    """Median steps, counting "never" (None) as more than the budget.

    Returns (value, is_lower_bound): when the median falls on a run that never got there,
    the median with those runs set to the budget is a lower bound.
    """
    if not values:
        return None, False
    exact = statistics.median([math.inf if v is None else v for v in values])
    if math.isfinite(exact):
        return float(exact), False
    return float(statistics.median([budget if v is None else v for v in values])), True


def median_of(values: list) -> float | None:
    present = [v for v in values or [] if v is not None]
    return float(statistics.median(present)) if present else None


def summarise(document: dict) -> dict[str, Any]:
    """Medians per task and method, SINDy-RL's step ratios, and graph / core ratios."""
    summary: dict[str, Any] = {}
    for task_name, methods in document.get('tasks', {}).items():
        task_summary: dict[str, Any] = {}
        for method, entry in methods.items():
            budget = entry['budget_real_steps']
            values: dict[str, Any] = {
                'seeds': len(entry['seeds']),
                'reached': sum(v is not None for v in entry['steps_to_threshold']),
                'held': (
                    sum(v is not None for v in entry['steps_to_held_threshold'])
                    if entry.get('held_measured')
                    else None
                ),
            }
            for name in ('steps_to_threshold', 'steps_to_held_threshold'):
                if name == 'steps_to_held_threshold' and not entry.get('held_measured'):
                    values[f'median_{name}'] = None
                    values[f'median_{name}_lower_bound'] = None
                    continue
                steps, lower = median_steps(entry[name], budget)
                values[f'median_{name}'] = None if lower else steps
                values[f'median_{name}_lower_bound'] = steps if lower else None
            for name in (
                'final_eval_return_50',
                'final_return',
                'wall_time_s',
                'eval_steps',
                'final_eval_steps',
                'real_steps',
                'nn_parameters',
                'sparse_policy_coefficients',
                'sparse_policy_return_50',
            ):
                if name in entry:
                    values[f'median_{name}'] = median_of(entry[name])
            if 'graph_steps_to_threshold' in entry:
                steps, lower = median_steps(entry['graph_steps_to_threshold'], budget)
                values['median_graph_steps_to_threshold'] = None if lower else steps
                values['median_graph_steps_to_threshold_lower_bound'] = steps if lower else None
            task_summary[method] = values
        for ours in SINDY_METHODS:
            if ours not in task_summary:
                continue
            for baseline in BASELINE_METHODS:
                if baseline not in task_summary:
                    continue
                for name, key in (
                    ('first', 'steps_to_threshold'),
                    ('held', 'steps_to_held_threshold'),
                ):
                    task_summary[ours][f'step_ratio_{name}_vs_{baseline}'] = step_ratio(
                        task_summary[ours], task_summary[baseline], key
                    )
        if 'sindy_rl' in task_summary and 'sindy_rl_graph' in task_summary:
            core, graph = task_summary['sindy_rl'], task_summary['sindy_rl_graph']
            ratios = {
                key: step_ratio(core, graph, key)
                for key in ('steps_to_threshold', 'steps_to_held_threshold')
            }
            for key in ('final_eval_return_50', 'wall_time_s'):
                a, b = core.get(f'median_{key}'), graph.get(f'median_{key}')
                ratios[key] = {
                    'core': a,
                    'graph': b,
                    'ratio': b / a if a not in (None, 0) and b is not None else None,
                }
            task_summary['graph_vs_core'] = ratios
        summary[task_name] = task_summary
    return summary


def step_ratio(ours: dict, theirs: dict, key: str) -> dict:
    """theirs / ours of the median ``key`` (e.g. baseline / SINDy-RL: how many times fewer
    real steps SINDy-RL needed), with the bound a censored median gives."""
    mine, mine_low = ours.get(f'median_{key}'), ours.get(f'median_{key}_lower_bound')
    other, other_low = theirs.get(f'median_{key}'), theirs.get(f'median_{key}_lower_bound')
    if mine is not None and other is not None:
        return {'value': other / mine, 'bound': 'exact'}
    if mine is not None and other_low is not None:
        return {
            'value': other_low / mine,
            'bound': 'lower',
            'note': 'the numerator median did not get there within its budget',
        }
    if mine_low is not None and other is not None:
        return {
            'value': other / mine_low,
            'bound': 'upper',
            'note': 'the denominator median did not get there within its budget',
        }
    return {'value': None, 'bound': None, 'note': 'not measured, or neither median got there'}


# -------------------------------------------------------------------- reports


def ordered(mapping: dict, order: tuple[str, ...]) -> list[tuple[str, Any]]:
    """Items in the benchmark's order (tasks, methods), unknown keys last."""
    rank = {name: index for index, name in enumerate(order)}
    return sorted(mapping.items(), key=lambda item: (rank.get(item[0], len(order)), item[0]))


def steps_cell(values: dict, key: str, per_seed: list | None, measured: bool = True) -> str:
    if not measured:
        return 'not measured (runs stopped at the first crossing)'
    if values.get(f'median_{key}') is not None:
        median = f'{values[f"median_{key}"]:,.0f}'
    elif values.get(f'median_{key}_lower_bound') is not None:
        median = f'≥ {values[f"median_{key}_lower_bound"]:,.0f}'
    else:
        median = '–'
    seeds = ', '.join('never' if v is None else f'{v:,}' for v in per_seed or [])
    return f'{median} ({seeds})'


def number(value: Any, digits: int = 1) -> str:
    return '–' if value is None else f'{value:,.{digits}f}'


def ratio_text(ratio: dict | None) -> str | None:
    if not ratio or ratio.get('value') is None:
        return None
    sign = {'exact': '', 'lower': '≥ ', 'upper': '≤ '}[ratio['bound']]
    return f'{sign}{ratio["value"]:.1f}×'


def knowledge_text(knowledge: dict) -> str:
    bounds = ', '.join(
        f'{name} ∈ [{low:g}, {high:g}]'
        for name, low, high in zip(
            knowledge['observation_names'],
            knowledge['observation_low'],
            knowledge['observation_high'],
        )
    )
    saturation = ', '.join(
        f'{name} clipped to [{low:g}, {high:g}]'
        for name, (low, high) in knowledge.get('saturation', {}).items()
    )
    pairs = ', '.join(
        f'({knowledge["observation_names"][i]}, {knowledge["observation_names"][j]})'
        for i, j in knowledge.get('angle_pairs', [])
    )
    text = (
        f'Task knowledge SINDy-RL uses that SAC and PPO learn from returns: the exact reward '
        f'function `{knowledge["reward"]}` ({knowledge["reward_description"].rstrip(".")}), '
        'computed by the surrogate for every model step; the observation bounds '
        f'{bounds} (recorded transitions outside are not fitted, surrogate episodes end there)'
    )
    if saturation:
        text += f'; the saturation {saturation} (the model clips its predictions there)'
    if pairs:
        text += f'; the angle pairs {pairs} (kept on the unit circle)'
    return text + '.'


def markdown_report(document: dict) -> str:
    """Summary table per task, ratios, task knowledge, and the protocol in a few lines."""
    lines = [
        '# Sample efficiency: SINDy-RL vs SAC and PPO',
        '',
        f'Generated {document.get("date")} by `{document.get("command")}`',
        f'on {document["machine"]["cpu_model"]} ({document["machine"]["cores"]} cores), '
        f'{document["machine"]["os"]}; commit {(document.get("git") or {}).get("commit")}'
        f'{" (work tree dirty)" if (document.get("git") or {}).get("dirty") else ""}. Each '
        'seed records its own commit, command and machine (`provenance`).',
        '',
        f"Protocol (version {RESULTS_VERSION}): every method is evaluated on the task's grid "
        'of real training steps; at each grid point g the policy in force (trained on the '
        f'first g real steps) runs {EVAL_EPISODES} deterministic episodes on a separate '
        'instance of the real environment, from start states that are fresh at every grid '
        'point, the same for every method at the same g, and never used in training. '
        '"First crossing" = the first grid point at or above the threshold; "held" = the first '
        'grid point from which every later evaluation up to the budget is at or above it. '
        f'"Final" = {FINAL_EVAL_EPISODES} episodes of the policy the run ends with, from yet '
        'another seed stream. Real steps exclude evaluation episodes (counted in the eval '
        'steps column). Medians over seeds; "never" = not within the budget, counted as more '
        'than the budget; "≥" marks a lower bound. Ratio = baseline median real steps / '
        'SINDy-RL median real steps.',
        '',
    ]
    for task_name, methods in ordered(document.get('tasks', {}), TASK_NAMES):
        methods = dict(ordered(methods, METHODS))
        summary = document['summary'][task_name]
        first = next(iter(methods.values()))
        lines += [
            f'## {task_name} (threshold {first["threshold"]:g})',
            '',
            '| method | seeds (reached / held) | budget | evaluated every '
            '| first crossing: median (per seed) | held from: median (per seed) '
            f'| final return, {FINAL_EVAL_EPISODES} episodes | eval steps (real steps) '
            '| wall time | policy size |',
            '|---|---|---|---|---|---|---|---|---|---|',
        ]
        for method, entry in methods.items():
            values = summary[method]
            measured = bool(entry.get('held_measured'))
            held = values['held'] if measured else '–'
            held_cell = steps_cell(
                values, 'steps_to_held_threshold', entry['steps_to_held_threshold'], measured
            )
            size = f'{number(values.get("median_nn_parameters"), 0)} NN parameters'
            if values.get('median_sparse_policy_coefficients') is not None:
                size += (
                    f'; sparse policy {values["median_sparse_policy_coefficients"]:,.0f} '
                    'coefficients, final return '
                    f'{number(values.get("median_sparse_policy_return_50"))}'
                )
            scales = [
                f'{name} {entry[key]}'
                for name, key in (
                    ('budget scale', 'debug_budget_scale'),
                    ('surrogate scale', 'debug_surrogate_scale'),
                )
                if entry.get(key) is not None
            ]
            if scales:
                size += f' **(debug: {", ".join(scales)})**'
            lines.append(
                f'| {METHOD_LABELS.get(method, method)} | {values["seeds"]} '
                f'({values["reached"]} / {held}) | {entry["budget_real_steps"]:,} '
                f'| {entry["evaluation"]["interval_real_steps"]:,} '
                f'| {steps_cell(values, "steps_to_threshold", entry["steps_to_threshold"])} '
                f'| {held_cell} '
                f'| {number(values.get("median_final_eval_return_50"))} '
                f'| {number(values.get("median_eval_steps"), 0)} '
                f'({number(values.get("median_real_steps"), 0)}) '
                f'| {number(values.get("median_wall_time_s"), 0)} s | {size} |'
            )
        for ours in SINDY_METHODS:
            for baseline in BASELINE_METHODS:
                first_ratio = ratio_text(
                    summary.get(ours, {}).get(f'step_ratio_first_vs_{baseline}')
                )
                held_ratio = ratio_text(
                    summary.get(ours, {}).get(f'step_ratio_held_vs_{baseline}')
                )
                if first_ratio or held_ratio:
                    lines.append(
                        f'\n{METHOD_LABELS[ours]} needs {first_ratio or "–"} fewer real steps '
                        f'than {METHOD_LABELS[baseline]} to the first crossing, '
                        f'{held_ratio or "–"} to the held threshold.'
                    )
        versus = summary.get('graph_vs_core')
        if versus:
            graph_values = summary['sindy_rl_graph']
            graph_own = methods['sindy_rl_graph'].get('graph_steps_to_threshold')
            lines.append(
                '\nGraph / core loop, ratio of medians: real steps to the first crossing '
                f'{ratio_text(versus["steps_to_threshold"]) or "–"}, to the held threshold '
                f'{ratio_text(versus["steps_to_held_threshold"]) or "–"}; final return '
                f'{number(versus["final_eval_return_50"]["graph"])} (graph) vs '
                f'{number(versus["final_eval_return_50"]["core"])} (core); wall time '
                f"{number(versus['wall_time_s']['ratio'], 2)}×. The graph's own on-plant "
                'evaluations, at the real steps it released each policy: first crossing '
                f'{steps_cell(graph_values, "graph_steps_to_threshold", graph_own)}. The graph '
                'spends a few real steps at every mode switch (counted as training steps), so '
                "its policies are released just after the grid points the core loop's are "
                'released on, and are in force from the next one.'
            )
        knowledge = first.get('task_knowledge')
        if knowledge:
            lines.append(f'\n{knowledge_text(knowledge)}')
        notes = {
            entry['hyperparameters'].get('note')
            for entry in methods.values()
            if isinstance(entry.get('hyperparameters'), dict)
        }
        notes |= {entry.get('seeds_note') for entry in methods.values()}
        for note in sorted(n for n in notes if n):
            lines.append(f'\nNote: {note}')
        if task_name == 'cartpole_swingup' and 'sindy_rl_graph' not in methods:
            lines.append(
                '\nNote: the ROS graph is measured on the pendulum only by default (run time); '
                'the swing-up is measured with the core loop, which drives the same protocol.'
            )
        lines.append('')
    return '\n'.join(lines) + '\n'


def step_grid_band(curves: list[list[list[float]]]) -> tuple[np.ndarray, ...]:
    """Median, min and max over seeds on the union of evaluated step counts.

    A seed's return at step s is its last evaluation at or before s; after its last
    evaluation it stays there (a run stopped at the threshold keeps its frozen policy).
    """
    grid = np.unique(np.concatenate([np.asarray(c, dtype=float)[:, 0] for c in curves if c]))
    values = np.full((len(curves), len(grid)), np.nan)
    for row, curve in enumerate(curves):
        if not curve:
            continue
        points = np.asarray(curve, dtype=float)
        index = np.searchsorted(points[:, 0], grid, side='right') - 1
        valid = index >= 0
        values[row, valid] = points[index[valid], 1]
    counted = np.isfinite(values).any(axis=0)
    grid, values = grid[counted], values[:, counted]
    return grid, np.nanmedian(values, axis=0), np.nanmin(values, axis=0), np.nanmax(values, 0)


def plot_curves(document: dict, path: Path) -> None:
    """Return vs real steps (log x), median and min-max band, one subplot per task."""
    import matplotlib

    matplotlib.use('Agg')
    from matplotlib import ticker
    import matplotlib.pyplot as plt

    tasks = [name for name, _ in ordered(document.get('tasks', {}), TASK_NAMES)]
    if not tasks:
        return
    figure, axes = plt.subplots(1, len(tasks), figsize=(6.5 * len(tasks), 4.5), squeeze=False)
    for axis, task_name in zip(axes[0], tasks):
        threshold = None
        for method, entry in ordered(document['tasks'][task_name], METHODS):
            threshold = entry['threshold']
            curves = [c for c in entry['curves'] if c]
            if not curves:
                continue
            grid, median, low, high = step_grid_band(curves)
            color = METHOD_COLORS.get(method)
            label = f'{METHOD_LABELS.get(method, method)} ({len(curves)} seeds)'
            axis.plot(grid, median, color=color, label=label, marker='o', markersize=2.5)
            axis.fill_between(grid, low, high, color=color, alpha=0.2, linewidth=0)
        if threshold is not None:
            axis.axhline(threshold, color='black', linestyle='--', linewidth=1, label='threshold')
        axis.set_xscale('log')
        axis.xaxis.set_major_formatter(ticker.FuncFormatter(lambda x, _: f'{x:,.0f}'))
        # Label the 2x and 5x minor ticks too: a curve often spans less than a decade.
        axis.xaxis.set_minor_formatter(
            ticker.FuncFormatter(lambda x, _: f'{x:,.0f}' if f'{x:.0e}'[0] in '25' else '')
        )
        axis.set_xlabel('real environment steps (evaluation excluded)')
        axis.set_ylabel('mean return, 10 deterministic episodes')
        axis.set_title(task_name)
        axis.grid(True, which='both', alpha=0.3)
        axis.legend(loc='best', fontsize=8)
    figure.suptitle('median over seeds, band = min to max', fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + '.tmp.png')
    figure.savefig(temporary, dpi=120)
    plt.close(figure)
    temporary.replace(path)


def write_reports(document: dict, out: Path) -> None:
    document['summary'] = summarise(document)
    write_json(out / f'{RESULTS_NAME}.json', document)
    write_text(out / f'{RESULTS_NAME}.md', markdown_report(document))
    plot_curves(document, out / f'{RESULTS_NAME}.png')


@contextlib.contextmanager
def results_lock(out: Path):
    """Exclusive use of the results files while one run merges its entry into them."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / f'.{RESULTS_NAME}.lock', 'w') as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


OLD_VERSION_ANNOUNCED: set[Path] = set()


def load_document(out: Path) -> dict:
    """The results document in ``out``; a fresh one when there is none or it is of an older
    protocol version (the old file is kept as ``<name>.v<version>.json``, never mixed in)."""
    path = out / f'{RESULTS_NAME}.json'
    fresh = {'format': RESULTS_FORMAT, 'version': RESULTS_VERSION, 'tasks': {}}
    document = read_json(path)
    if document is None:
        return fresh
    if document.get('format') != RESULTS_FORMAT:
        raise ValueError(
            f'{path}: format {document.get("format")!r}, expected {RESULTS_FORMAT!r}; '
            'move it away to start over'
        )
    version = document.get('version')
    if version != RESULTS_VERSION:
        kept = path.with_name(f'{RESULTS_NAME}.v{version}.json')
        if kept.exists() and path in OLD_VERSION_ANNOUNCED:
            return fresh
        if not kept.exists():
            shutil.copyfile(path, kept)
        OLD_VERSION_ANNOUNCED.add(path)
        print(
            f'{path}: results of version {version!r}, measured with another protocol; they '
            f'are not mixed with version {RESULTS_VERSION}: starting a fresh document (the '
            f'old file is kept as {kept})',
            flush=True,
        )
        return fresh
    return document


def keep_backup(out: Path) -> Path:
    """Copy the results file aside once per run before an entry is replaced."""
    source = out / f'{RESULTS_NAME}.json'
    backup = out / f'{RESULTS_NAME}.json.bak'
    if source.exists() and not getattr(keep_backup, 'done', False):
        shutil.copyfile(source, backup)
        keep_backup.done = True
    return backup


# ------------------------------------------------------------------------- main


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
    )
    parser.add_argument(
        '--quick',
        action='store_true',
        help='smoke run: 1 seed, pendulum, SINDy-RL (core loop) and SAC, stopping at the '
        'first crossing, into benchmarks/results/quick',
    )
    parser.add_argument('--tasks', nargs='+', choices=TASK_NAMES, default=None)
    parser.add_argument(
        '--methods',
        nargs='+',
        choices=METHODS,
        default=None,
        help='default: all four on the pendulum, all but sindy_rl_graph on the swing-up',
    )
    parser.add_argument(
        '--seeds',
        type=int,
        default=None,
        help=f'SINDy-RL seeds 0..N-1, core loop and graph (default per task: '
        f'{DEFAULT_SINDY_SEEDS})',
    )
    parser.add_argument(
        '--baseline-seeds',
        type=int,
        default=None,
        help=f'SAC/PPO seeds 0..N-1 (default {DEFAULT_BASELINE_SEEDS})',
    )
    parser.add_argument(
        '--out',
        type=Path,
        default=None,
        help='results folder (default benchmarks/results; --quick: benchmarks/results/quick; '
        'with a debug scale: benchmarks/results/tmp/debug)',
    )
    parser.add_argument(
        '--rerun',
        action='store_true',
        help='run seeds again even when the results file has them with the same settings',
    )
    parser.add_argument(
        '--stop-at-threshold',
        action='store_true',
        help='stop each run at its first crossing (policy frozen there); the held threshold '
        'is then not measured (default: every run trains to its budget; --quick: stop)',
    )
    parser.add_argument(
        '--budget-scale',
        type=float,
        default=1.0,
        help='debug only: multiply every real-step budget, rounded to whole evaluation '
        'intervals (default 1; results are marked)',
    )
    parser.add_argument(
        '--surrogate-scale',
        type=float,
        default=1.0,
        help='debug only: multiply the surrogate steps of SINDy-RL, core loop and graph '
        '(default 1; results are marked)',
    )
    parser.add_argument(
        '--graph-runs',
        type=Path,
        default=None,
        help='keep the run directories of sindy_rl_graph here (default: a temporary '
        'directory, removed after each seed)',
    )
    parser.add_argument(
        '--graph-timeout',
        type=float,
        default=DEFAULT_GRAPH_TIMEOUT_S,
        help='seconds after which a graph run is stopped and counted as failed '
        '(default %(default)s)',
    )
    arguments = parser.parse_args(argv)
    if arguments.quick:
        arguments.tasks = arguments.tasks or ['pendulum']
        arguments.methods = arguments.methods or ['sindy_rl', 'sac']
        arguments.seeds = 1 if arguments.seeds is None else arguments.seeds
        arguments.baseline_seeds = (
            1 if arguments.baseline_seeds is None else arguments.baseline_seeds
        )
        arguments.stop_at_threshold = True
        arguments.out = arguments.out or BENCHMARK_DIR / 'results' / 'quick'
    arguments.tasks = arguments.tasks or list(TASK_NAMES)
    for name in ('budget_scale', 'surrogate_scale'):
        if getattr(arguments, name) <= 0:
            parser.error(f'--{name.replace("_", "-")} must be positive')
    if arguments.budget_scale != 1.0 or arguments.surrogate_scale != 1.0:
        # Debug runs never land next to real results unless asked to.
        arguments.out = arguments.out or BENCHMARK_DIR / 'results' / 'tmp' / 'debug'
    arguments.out = arguments.out or BENCHMARK_DIR / 'results'
    return arguments


def methods_for(arguments: argparse.Namespace, task_name: str) -> list[str]:
    return list(arguments.methods or DEFAULT_METHODS[task_name])


def seeds_for(arguments: argparse.Namespace, task_name: str, method: str) -> list[int]:
    if method in SINDY_METHODS:
        count = arguments.seeds if arguments.seeds is not None else DEFAULT_SINDY_SEEDS[task_name]
    else:
        count = (
            arguments.baseline_seeds
            if arguments.baseline_seeds is not None
            else DEFAULT_BASELINE_SEEDS
        )
    return list(range(count))


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    import torch

    # Two cores: one learner at a time, one torch thread each (SB3 and SINDy-RL alike).
    torch.set_num_threads(TORCH_THREADS)
    options = Options(
        budget_scale=arguments.budget_scale,
        surrogate_scale=arguments.surrogate_scale,
        stop_at_threshold=arguments.stop_at_threshold,
        graph_runs=arguments.graph_runs.resolve() if arguments.graph_runs else None,
        graph_timeout_s=arguments.graph_timeout,
    )
    out = arguments.out
    with results_lock(out):
        document = load_document(out)
    print(
        f'sample-efficiency benchmark: tasks {arguments.tasks}, methods '
        f'{arguments.methods or "default per task"}, '
        f'{"stop at the first crossing" if options.stop_at_threshold else "full budgets"}, '
        f'results in {out}',
        flush=True,
    )
    for task_name in arguments.tasks:
        task = get_task(task_name)
        for method in methods_for(arguments, task_name):
            settings = method_settings(task, method, options)
            wanted = protocol(task, method, settings, options)
            entries = document['tasks'].setdefault(task_name, {})
            entry = entries.get(method)
            comparable = {key: (entry or {}).get(key) for key in wanted}
            if entry is not None and json.loads(json.dumps(finite_or_none(wanted))) != comparable:
                backup = keep_backup(out)
                print(
                    f'{task_name}/{method}: settings differ from the {len(entry["seeds"])} '
                    f'stored seed(s); those are replaced (previous file kept as {backup})',
                    flush=True,
                )
                entry = None
            if entry is None:
                entry = {'method': method, **wanted, 'seeds': []}
                entries[method] = entry
            for seed in seeds_for(arguments, task_name, method):
                if seed in entry['seeds'] and not arguments.rerun:
                    print(f'{task_name}/{method} seed {seed}: already in results, skipped')
                    continue
                torch.manual_seed(seed)
                origin = provenance()
                record = run_seed(task, method, seed, options)
                record['provenance'] = origin
                store_run(entry, method, seed, record)
                if method in SINDY_METHODS and arguments.seeds is None:
                    if task_name in SEEDS_NOTES:
                        entry['seeds_note'] = SEEDS_NOTES[task_name]
                entry['last_run'] = {'date': utc_now(), 'command': command_line()}
                # Another run (another task or method) may have written meanwhile: merge this
                # entry into what is on disk now, under a lock, instead of overwriting it.
                with results_lock(out):
                    document = load_document(out)
                    document['tasks'].setdefault(task_name, {})[method] = entry
                    document.update(
                        {
                            'format': RESULTS_FORMAT,
                            'version': RESULTS_VERSION,
                            'date': utc_now(),
                            'command': command_line(),
                            'git': origin['git'],
                            'versions': package_versions(),
                            'machine': machine_info(),
                            'torch_threads': TORCH_THREADS,
                            'methods_run_sequentially': True,
                        }
                    )
                    write_reports(document, out)
    if 'date' in document:
        with results_lock(out):
            document = load_document(out)
            write_reports(document, out)
        print(f'wrote {out}/{RESULTS_NAME}.json, .md and .png', flush=True)
        print(json.dumps(finite_or_none(document['summary']), indent=1), flush=True)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
