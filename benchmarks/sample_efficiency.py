"""Sample efficiency of SINDy-RL against model-free SAC and PPO (stable-baselines3).

The question a robot owner asks is how many real steps (minutes of robot time) a method
needs before its policy works.  Every method is therefore measured the same way: after
regular intervals of *real* training steps its current policy is evaluated with 10
deterministic episodes on a separate copy of the real environment, and the first
evaluated step count with a mean return at or above the task's threshold is its
``steps_to_threshold``.  Evaluation episodes are not training data and are not counted as
real steps (they are counted separately, in ``eval_steps``).

Run ``python benchmarks/sample_efficiency.py --help``; see benchmarks/README.md for the
protocol and the default settings.  stable-baselines3 is a benchmark-only dependency
(benchmarks/requirements.txt); the sindyrl_ros package never imports it.
"""

from __future__ import annotations

import argparse
import contextlib
from dataclasses import dataclass, field
import fcntl
import json
import math
from pathlib import Path
import shutil
import statistics
import sys
import time
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import (  # noqa: E402
    command_line,
    finite_or_none,
    machine_info,
    package_versions,
    read_json,
    utc_now,
    write_json,
    write_text,
)

from sindyrl_ros.core.tasks import TaskSpec, evaluate_policy, get_task  # noqa: E402

RESULTS_FORMAT = 'sindyrl_ros/benchmark/sample_efficiency'
RESULTS_VERSION = 1
RESULTS_NAME = 'sample_efficiency'
BENCHMARK_DIR = Path(__file__).resolve().parent

TASK_NAMES = ('pendulum', 'cartpole_swingup')
METHODS = ('sindy_rl', 'sac', 'ppo')
METHOD_LABELS = {'sindy_rl': 'SINDy-RL (Dyna)', 'sac': 'SAC (SB3)', 'ppo': 'PPO (SB3)'}
METHOD_COLORS = {'sindy_rl': 'tab:red', 'sac': 'tab:blue', 'ppo': 'tab:green'}

# Same evaluation for every method and seed: episode i of every evaluation starts from
# reset(seed=EVAL_SEED + i), so all policies are compared on the same initial states.
EVAL_EPISODES = 10
EVAL_SEED = 1_000_000
TORCH_THREADS = 1

# Seeds per task when --seeds is not given.  Swing-up: 3, not 5, so that the default run
# stays near 2 h on the 2-core machine (a swing-up SINDy-RL seed takes up to ~10 min, and the
# SAC baseline alone ~30 min per seed); recorded in the results as 'seeds_note'.
DEFAULT_SINDY_SEEDS = {'pendulum': 5, 'cartpole_swingup': 3}
SEEDS_NOTES = {
    'cartpole_swingup': '3 SINDy-RL seeds by default (not 5) to fit ~2 h on 2 cores',
}
DEFAULT_BASELINE_SEEDS = 3


# --------------------------------------------------------------------------- SINDy-RL


# Per-task settings of the Dyna loop: the one place to tune them for this benchmark.
# 'budget' is the real-step budget; the rest are DynaConfig fields (defaults otherwise).
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


def sindy_rl_config(task_name: str):
    """The DynaConfig and real-step budget used for ``task_name``."""
    from sindyrl_ros.core.dyna import DynaConfig

    settings = SINDY_RL_SETTINGS[task_name]
    return DynaConfig(**settings['dyna']), int(settings['budget'])


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
    eval_interval: int  # real steps between evaluations
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
        eval_interval=500,
        kwargs={'learning_rate': 1e-3},
    ),
    # ppo.yml Pendulum-v1 (tuned): n_envs 4, n_timesteps 1e5 (budget here 200k).
    ('pendulum', 'ppo'): BaselineSpec(
        'ppo',
        *ZOO_PPO,
        'Pendulum-v1',
        budget=200_000,
        eval_interval=4_096,
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
        eval_interval=5_000,
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
        eval_interval=32_768,
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


@dataclass
class Evaluator:
    """Deterministic evaluation on a separate real env; keeps its own step/time count."""

    task: TaskSpec
    episodes: int = EVAL_EPISODES
    steps: int = 0
    seconds: float = 0.0
    calls: int = 0

    def __call__(self, policy) -> float:
        started = time.perf_counter()
        evaluation = evaluate_policy(self.task, policy, episodes=self.episodes, seed=EVAL_SEED)
        self.seconds += time.perf_counter() - started
        self.steps += evaluation.steps
        self.calls += 1
        return float(evaluation.mean_return)


@dataclass
class RunRecord:
    """What one (task, method, seed) run produced."""

    seed: int
    curve: list[list[float]]  # [[real steps, mean return], ...]
    steps_to_threshold: int | None
    final_return: float
    wall_time_s: float
    eval_time_s: float
    eval_steps: int
    real_steps: int
    extra: dict[str, Any] = field(default_factory=dict)


def print_point(label: str, steps: int, mean_return: float, started: float, note: str = ''):
    print(
        f'[{label}] real steps {steps:>8d}  return {mean_return:9.1f}'
        f'  ({time.perf_counter() - started:7.1f} s){note}',
        flush=True,
    )


def run_sindy_rl(task: TaskSpec, seed: int, budget_scale: float, stop: bool) -> RunRecord:
    """One seed of the Dyna loop (core.dyna.run_dyna) with the benchmark's evaluation."""
    from sindyrl_ros.core.dyna import run_dyna

    config, budget = sindy_rl_config(task.name)
    budget = max(1, int(round(budget * budget_scale)))
    evaluator = Evaluator(task)
    label = f'{task.name}/sindy_rl seed {seed}'
    started = time.perf_counter()

    def progress(entry: dict) -> None:
        accepted = 'accepted' if entry.get('model_accepted') else 'REJECTED'
        note = (
            f'  model {accepted} nrmse {entry.get("validation_nrmse", math.nan):.3g}'
            f'  surrogate return {entry.get("surrogate_return", math.nan):.1f}'
        )
        print_point(label, entry['real_steps'], entry['eval_return'], started, note)

    result = run_dyna(
        task,
        config,
        seed,
        budget,
        evaluator,
        stop_at_threshold=stop,
        distill=True,
        progress=progress,
    )
    wall = time.perf_counter() - started
    sparse_return = result.sparse_policy_return
    print(
        f'[{label}] done: steps to threshold {result.steps_to_threshold}, network return '
        f'{result.final_return:.1f}, sparse policy return '
        f'{math.nan if sparse_return is None else sparse_return:.1f} '
        f'({result.sparse_policy.n_parameters if result.sparse_policy else 0} coefficients vs '
        f'{result.policy.n_parameters if result.policy else 0} network parameters), '
        f'{wall:.1f} s',
        flush=True,
    )
    return RunRecord(
        seed=seed,
        curve=[[int(s), float(r)] for s, r in result.curve],
        steps_to_threshold=result.steps_to_threshold,
        final_return=float(result.final_return),
        wall_time_s=wall,
        eval_time_s=evaluator.seconds,
        eval_steps=evaluator.steps,
        real_steps=int(result.real_steps),
        extra={
            'nn_parameters': result.policy.n_parameters if result.policy else None,
            'network_return': float(result.final_return),
            'sparse_policy_coefficients': (
                result.sparse_policy.n_parameters if result.sparse_policy else None
            ),
            'sparse_policy_return': sparse_return,
            'model_nonzero': result.model.n_nonzero if result.model else None,
            'dyna_log': [finite_or_none(dict(entry)) for entry in result.log],
        },
    )


def sindy_rl_settings(task_name: str, budget_scale: float) -> dict[str, Any]:
    config, budget = sindy_rl_config(task_name)
    return {
        'budget': max(1, int(round(budget * budget_scale))),
        'eval_interval': config.steps_per_iteration,
        'hyperparameters': {'dyna_config': config.to_dict(), 'torch_threads': TORCH_THREADS},
    }


def make_training_env(task: TaskSpec, spec: BaselineSpec, seed: int):
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    env = make_vec_env(lambda: task.make_env(), n_envs=spec.n_envs, seed=seed)
    if spec.normalize:
        env = VecNormalize(env, gamma=spec.kwargs.get('gamma', 0.99))
    return env


def run_baseline(
    task: TaskSpec, method: str, seed: int, budget_scale: float, stop: bool
) -> RunRecord:
    """One seed of SB3 SAC or PPO, evaluated every ``eval_interval`` real steps."""
    import stable_baselines3
    from stable_baselines3.common.callbacks import BaseCallback

    spec = BASELINES[(task.name, method)]
    budget = max(1, int(round(spec.budget * budget_scale)))
    interval = min(spec.eval_interval, budget)
    evaluator = Evaluator(task)
    label = f'{task.name}/{method} seed {seed}'
    curve: list[list[float]] = []
    reached: list[int] = []
    started = time.perf_counter()

    env = make_training_env(task, spec, seed)
    algorithm = {'sac': stable_baselines3.SAC, 'ppo': stable_baselines3.PPO}[method]
    kwargs = json.loads(json.dumps(spec.kwargs))  # a copy SB3 may not mutate
    model = algorithm('MlpPolicy', env, seed=seed, device='cpu', verbose=0, **kwargs)

    def act(observation: np.ndarray) -> np.ndarray:
        if spec.normalize:
            observation = env.normalize_obs(observation)  # frozen training statistics
        action, _ = model.predict(observation, deterministic=True)
        return action

    class EvaluateEveryInterval(BaseCallback):
        # Evaluated at the start of a rollout, i.e. right after the gradient updates on
        # all data so far: the policy evaluated at N steps has learnt from exactly N.
        def __init__(self) -> None:
            super().__init__()
            self.next_eval = interval
            self.stop = False

        def evaluate(self) -> None:
            steps = int(self.model.num_timesteps)
            mean_return = evaluator(act)
            curve.append([steps, mean_return])
            print_point(label, steps, mean_return, started)
            if mean_return >= task.threshold and not reached:
                reached.append(steps)
                self.stop = stop
            while self.next_eval <= steps:
                self.next_eval += interval

        def _on_rollout_start(self) -> None:
            if self.model.num_timesteps >= self.next_eval and not self.stop:
                self.evaluate()

        def _on_step(self) -> bool:
            return not self.stop

        def _on_training_end(self) -> None:
            if not self.stop and (not curve or curve[-1][0] < self.model.num_timesteps):
                self.evaluate()

    model.learn(total_timesteps=budget, callback=EvaluateEveryInterval())
    wall = time.perf_counter() - started
    env.close()
    steps_to_threshold = reached[0] if reached else None
    print(
        f'[{label}] done: steps to threshold {steps_to_threshold}, final return '
        f'{curve[-1][1]:.1f}, {wall:.1f} s',
        flush=True,
    )
    return RunRecord(
        seed=seed,
        curve=curve,
        steps_to_threshold=steps_to_threshold,
        final_return=float(curve[-1][1]),
        wall_time_s=wall,
        eval_time_s=evaluator.seconds,
        eval_steps=evaluator.steps,
        real_steps=int(model.num_timesteps),
        extra={
            'nn_parameters': policy_parameter_count(model, method),
            'sb3_resolved_hyperparameters': resolved_hyperparameters(model),
        },
    )


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


def baseline_settings(task_name: str, method: str, budget_scale: float) -> dict[str, Any]:
    spec = BASELINES[(task_name, method)]
    budget = max(1, int(round(spec.budget * budget_scale)))
    return {
        'budget': budget,
        'eval_interval': min(spec.eval_interval, budget),
        'hyperparameters': spec.to_dict(),
    }


# ----------------------------------------------------------------- results file

PER_SEED_FIELDS = (
    'steps_to_threshold',
    'final_return',
    'wall_time_s',
    'eval_time_s',
    'eval_steps',
    'real_steps',
    'curves',
)
SINDY_FIELDS = (
    'nn_parameters',
    'network_return',
    'sparse_policy_coefficients',
    'sparse_policy_return',
    'model_nonzero',
    'dyna_log',
)


def protocol(settings: dict[str, Any], task: TaskSpec, stop: bool) -> dict[str, Any]:
    """Everything that must match for seeds to be pooled in one entry."""
    return {
        'threshold': task.threshold,
        'budget_real_steps': settings['budget'],
        'evaluation': {
            'episodes': EVAL_EPISODES,
            'deterministic': True,
            'episode_seeds': f'reset(seed={EVAL_SEED} + i), i = 0..{EVAL_EPISODES - 1}',
            'environment': 'a separate instance of the real environment',
            'interval_real_steps': settings['eval_interval'],
            'eval_steps_excluded_from_real_steps': True,
        },
        'stop_at_threshold': stop,
        'hyperparameters': settings['hyperparameters'],
    }


def seed_rows(entry: dict) -> dict[int, dict[str, Any]]:
    """The per-seed lists of an entry, regrouped by seed."""
    rows: dict[int, dict[str, Any]] = {}
    for index, seed in enumerate(entry.get('seeds', [])):
        rows[int(seed)] = {
            name: entry[name][index]
            for name in (*PER_SEED_FIELDS, *SINDY_FIELDS)
            if name in entry and index < len(entry[name])
        }
    return rows


def store_run(entry: dict, record: RunRecord, method: str) -> None:
    """Add (or replace) one seed in an entry, keeping the lists ordered by seed."""
    rows = seed_rows(entry)
    row = {
        'steps_to_threshold': record.steps_to_threshold,
        'final_return': record.final_return,
        'wall_time_s': record.wall_time_s,
        'eval_time_s': record.eval_time_s,
        'eval_steps': record.eval_steps,
        'real_steps': record.real_steps,
        'curves': record.curve,
    }
    if method == 'sindy_rl':
        row.update({name: record.extra.get(name) for name in SINDY_FIELDS})
    else:
        row['nn_parameters'] = record.extra.get('nn_parameters')
        entry['sb3_resolved_hyperparameters'] = record.extra.get('sb3_resolved_hyperparameters')
    rows[record.seed] = row
    seeds = sorted(rows)
    entry['seeds'] = seeds
    names = PER_SEED_FIELDS + (SINDY_FIELDS if method == 'sindy_rl' else ('nn_parameters',))
    for name in names:
        entry[name] = [rows[seed].get(name) for seed in seeds]


def median_steps(values: list[int | None], budget: int) -> tuple[float | None, bool]:
    """Median steps to threshold, counting "never reached" as more than the budget.

    Returns (value, is_lower_bound): when the median falls on a run that never reached
    the threshold, the median with those runs set to the budget is a lower bound.
    """
    if not values:
        return None, False
    exact = statistics.median([math.inf if v is None else v for v in values])
    if math.isfinite(exact):
        return float(exact), False
    return float(statistics.median([budget if v is None else v for v in values])), True


def summarise(document: dict) -> dict[str, Any]:
    """Medians per task and method, and SINDy-RL's step ratios to each baseline."""
    summary: dict[str, Any] = {}
    for task_name, methods in document.get('tasks', {}).items():
        task_summary: dict[str, Any] = {}
        for method, entry in methods.items():
            budget = entry['budget_real_steps']
            steps, lower = median_steps(entry['steps_to_threshold'], budget)
            values = {
                'seeds': len(entry['seeds']),
                'reached': sum(v is not None for v in entry['steps_to_threshold']),
                'median_steps_to_threshold': None if lower else steps,
                'median_steps_to_threshold_lower_bound': steps if lower else None,
                'median_final_return': statistics.median(entry['final_return']),
                'median_wall_time_s': statistics.median(entry['wall_time_s']),
            }
            for name in ('nn_parameters', 'sparse_policy_coefficients'):
                if entry.get(name) and all(v is not None for v in entry[name]):
                    values[f'median_{name}'] = statistics.median(entry[name])
            for name in ('sparse_policy_return', 'network_return'):
                present = [v for v in entry.get(name, []) if v is not None]
                if present:
                    values[f'median_{name}'] = statistics.median(present)
            task_summary[method] = values
        sindy = task_summary.get('sindy_rl')
        if sindy:
            for baseline in ('sac', 'ppo'):
                if baseline in task_summary:
                    sindy[f'step_ratio_vs_{baseline}'] = step_ratio(
                        sindy, methods['sindy_rl'], task_summary[baseline], methods[baseline]
                    )
        summary[task_name] = task_summary
    return summary


def step_ratio(sindy: dict, sindy_entry: dict, baseline: dict, baseline_entry: dict) -> dict:
    """How many times fewer real steps SINDy-RL needed (baseline / SINDy-RL medians)."""
    ours = sindy['median_steps_to_threshold']
    theirs = baseline['median_steps_to_threshold']
    theirs_low = baseline['median_steps_to_threshold_lower_bound']
    if ours is not None and theirs is not None:
        return {'value': theirs / ours, 'bound': 'exact'}
    if ours is not None and theirs_low is not None:
        return {
            'value': theirs_low / ours,
            'bound': 'lower',
            'note': 'the baseline median did not reach the threshold within its budget',
        }
    if ours is None and theirs is not None:
        ours_low = sindy['median_steps_to_threshold_lower_bound']
        return {
            'value': theirs / ours_low,
            'bound': 'upper',
            'note': 'the SINDy-RL median did not reach the threshold within its budget',
        }
    return {'value': None, 'bound': None, 'note': 'neither median reached the threshold'}


# -------------------------------------------------------------------- reports


def ordered(mapping: dict, order: tuple[str, ...]) -> list[tuple[str, Any]]:
    """Items in the benchmark's order (tasks, methods), unknown keys last."""
    rank = {name: index for index, name in enumerate(order)}
    return sorted(mapping.items(), key=lambda item: (rank.get(item[0], len(order)), item[0]))


def markdown_report(document: dict) -> str:
    """Summary table per task, ratios, and the protocol in a few lines."""
    lines = [
        '# Sample efficiency: SINDy-RL vs SAC and PPO',
        '',
        f'Generated {document.get("date")} by `{document.get("command")}`',
        f'on {document["machine"]["cpu_model"]} ({document["machine"]["cores"]} cores), '
        f'{document["machine"]["os"]}.',
        '',
        'Real steps exclude evaluation episodes (10 deterministic episodes on a separate env '
        'instance at each evaluation point). Medians over seeds; "never" = threshold not '
        'reached within the budget, counted as more than the budget; "≥" marks a lower '
        'bound. Ratio = baseline median real steps / SINDy-RL median real steps.',
        '',
    ]
    for task_name, methods in ordered(document.get('tasks', {}), TASK_NAMES):
        methods = dict(ordered(methods, METHODS))
        summary = document['summary'][task_name]
        threshold = next(iter(methods.values()))['threshold']
        lines += [
            f'## {task_name} (threshold {threshold:g})',
            '',
            '| method | seeds (reached) | budget | median steps to threshold (per seed) '
            '| median final return | median wall time | policy size |',
            '|---|---|---|---|---|---|---|',
        ]
        for method, entry in methods.items():
            values = summary[method]
            if values['median_steps_to_threshold'] is not None:
                median = f'{values["median_steps_to_threshold"]:,.0f}'
            else:
                median = f'≥ {values["median_steps_to_threshold_lower_bound"]:,.0f}'
            per_seed = ', '.join(
                'never' if v is None else f'{v:,}' for v in entry['steps_to_threshold']
            )
            size = f'{values.get("median_nn_parameters", 0):,.0f} NN parameters'
            if method == 'sindy_rl' and 'median_sparse_policy_coefficients' in values:
                sparse_return = values.get('median_sparse_policy_return', math.nan)
                network_return = values.get('median_network_return', math.nan)
                size += (
                    f'; sparse policy {values["median_sparse_policy_coefficients"]:,.0f} '
                    f'coefficients, return {sparse_return:.1f} (network {network_return:.1f})'
                )
            if entry.get('debug_budget_scale') is not None:
                size += f' **(debug budget scale {entry["debug_budget_scale"]})**'
            lines.append(
                f'| {METHOD_LABELS[method]} | {values["seeds"]} ({values["reached"]}) '
                f'| {entry["budget_real_steps"]:,} | {median} ({per_seed}) '
                f'| {values["median_final_return"]:.1f} | {values["median_wall_time_s"]:.0f} s '
                f'| {size} |'
            )
        sindy = summary.get('sindy_rl', {})
        for baseline in ('sac', 'ppo'):
            ratio = sindy.get(f'step_ratio_vs_{baseline}')
            if ratio and ratio['value'] is not None:
                sign = {'exact': '', 'lower': '≥ ', 'upper': '≤ '}[ratio['bound']]
                lines.append(
                    f'\nSINDy-RL needs {sign}{ratio["value"]:.1f}× fewer real steps than '
                    f'{METHOD_LABELS[baseline]}.'
                )
        notes = {
            entry['hyperparameters'].get('note')
            for entry in methods.values()
            if isinstance(entry.get('hyperparameters'), dict)
        }
        notes |= {entry.get('seeds_note') for entry in methods.values()}
        for note in sorted(n for n in notes if n):
            lines.append(f'\nNote: {note}')
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


def load_document(out: Path) -> dict:
    document = read_json(out / f'{RESULTS_NAME}.json')
    if document is None:
        return {'format': RESULTS_FORMAT, 'version': RESULTS_VERSION, 'tasks': {}}
    if document.get('format') != RESULTS_FORMAT or document.get('version') != RESULTS_VERSION:
        raise ValueError(
            f'{out / RESULTS_NAME}.json: format {document.get("format")!r} version '
            f'{document.get("version")!r}, expected {RESULTS_FORMAT!r} {RESULTS_VERSION}; '
            'move it away to start over'
        )
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
        help='smoke run: 1 seed, pendulum, SINDy-RL and SAC, into benchmarks/results/quick',
    )
    parser.add_argument('--tasks', nargs='+', choices=TASK_NAMES, default=None)
    parser.add_argument('--methods', nargs='+', choices=METHODS, default=None)
    parser.add_argument(
        '--seeds',
        type=int,
        default=None,
        help=f'SINDy-RL seeds 0..N-1 (default per task: {DEFAULT_SINDY_SEEDS})',
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
        'with --budget-scale: benchmarks/results/tmp/debug)',
    )
    parser.add_argument(
        '--rerun',
        action='store_true',
        help='run seeds again even when the results file has them with the same settings',
    )
    parser.add_argument(
        '--full-budget',
        action='store_true',
        help='keep training after the threshold is reached (default: stop, policy frozen)',
    )
    parser.add_argument(
        '--budget-scale',
        type=float,
        default=1.0,
        help='debug only: multiply every real-step budget (default 1; results are marked)',
    )
    arguments = parser.parse_args(argv)
    if arguments.quick:
        arguments.tasks = arguments.tasks or ['pendulum']
        arguments.methods = arguments.methods or ['sindy_rl', 'sac']
        arguments.seeds = 1 if arguments.seeds is None else arguments.seeds
        arguments.baseline_seeds = (
            1 if arguments.baseline_seeds is None else arguments.baseline_seeds
        )
        arguments.out = arguments.out or BENCHMARK_DIR / 'results' / 'quick'
    arguments.tasks = arguments.tasks or list(TASK_NAMES)
    arguments.methods = arguments.methods or list(METHODS)
    if arguments.budget_scale <= 0:
        parser.error('--budget-scale must be positive')
    if arguments.budget_scale != 1.0:
        # Debug runs never land next to real results unless asked to.
        arguments.out = arguments.out or BENCHMARK_DIR / 'results' / 'tmp' / 'debug'
    arguments.out = arguments.out or BENCHMARK_DIR / 'results'
    return arguments


def seeds_for(arguments: argparse.Namespace, task_name: str, method: str) -> list[int]:
    if method == 'sindy_rl':
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
    stop = not arguments.full_budget
    out = arguments.out
    document = load_document(out)
    print(
        f'sample-efficiency benchmark: tasks {arguments.tasks}, methods {arguments.methods}, '
        f'results in {out}',
        flush=True,
    )
    for task_name in arguments.tasks:
        task = get_task(task_name)
        for method in arguments.methods:
            if method == 'sindy_rl':
                settings = sindy_rl_settings(task_name, arguments.budget_scale)
            else:
                settings = baseline_settings(task_name, method, arguments.budget_scale)
            wanted = protocol(settings, task, stop)
            scale = arguments.budget_scale
            wanted['debug_budget_scale'] = None if scale == 1.0 else scale
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
                if method == 'sindy_rl':
                    record = run_sindy_rl(task, seed, arguments.budget_scale, stop)
                else:
                    record = run_baseline(task, method, seed, arguments.budget_scale, stop)
                store_run(entry, record, method)
                if method == 'sindy_rl' and arguments.seeds is None and task_name in SEEDS_NOTES:
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
