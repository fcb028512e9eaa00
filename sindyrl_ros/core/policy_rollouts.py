"""Deterministic and noisy rollouts of a policy in a batched environment.

The environment has the ``SurrogateVecEnv`` interface: ``n_envs``, ``reset(seed=None)``,
``step(actions) -> (next_observations, rewards, terminated, truncated)`` (no auto-reset)
and ``reset_done(done)``.  Distillation rolls its students out to label the states they
visit (DAgger) and scores them against the teacher start by start; the Dyna policy learner
reports a policy's surrogate return and collects the states a sparse policy is fitted on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from sindyrl_ros.core.policies import NumpyPolicy

__all__ = [
    'episode_returns',
    'episode_states',
    'noisy_visited_states',
    'surrogate_return_of',
    'visited_states',
]


def visited_states(
    policy: NumpyPolicy, env: Any, steps: int, seed: int, max_states: int
) -> np.ndarray:
    """Finite observations (K, n) visited by a policy in a batched environment.

    ``steps`` batched steps from ``env.reset(seed=seed)``; finished or non-finite slots are
    restarted.  More than ``max_states`` states are thinned to a random ``max_states`` of
    them (seeded by ``seed``), in their original order.
    """
    observations = np.asarray(env.reset(seed=seed), dtype=np.float64)
    visited = [observations]
    for _ in range(steps):
        next_observations, _, terminated, truncated = env.step(policy.act_batch(observations))
        next_observations = np.asarray(next_observations, dtype=np.float64)
        finite = np.all(np.isfinite(next_observations), axis=1)
        visited.append(next_observations[finite])
        done = np.asarray(terminated, bool) | np.asarray(truncated, bool) | ~finite
        if done.any():
            observations = np.asarray(env.reset_done(done), dtype=np.float64)
        else:
            observations = next_observations
    states = np.concatenate(visited)
    if len(states) > max_states:
        keep = np.random.default_rng(seed).choice(len(states), max_states, replace=False)
        states = states[np.sort(keep)]
    return states


def episode_returns(policy: Any, env: Any, steps: int, seeds: Sequence[int]) -> np.ndarray:
    """Returns (len(seeds) * n_envs,) of deterministic episodes, one batch per seed.

    ``env.reset(seed)`` draws the same start states for every policy scored with the same
    seeds, so the returns of a student and of its teacher compare start by start.  Rewards
    after an episode ends (terminated or truncated) are not counted.
    """
    returns = []
    act = policy.act_batch if hasattr(policy, 'act_batch') else None
    for seed in seeds:
        observations = np.asarray(env.reset(seed=seed), dtype=np.float64)
        totals = np.zeros(len(observations))
        alive = np.ones(len(observations), dtype=bool)
        for _ in range(steps):
            if act is not None:
                actions = act(observations)
            else:
                actions = np.array([np.asarray(policy(x), dtype=np.float64) for x in observations])
            observations, rewards, terminated, truncated = env.step(actions)
            totals += np.where(alive, np.asarray(rewards, dtype=np.float64), 0.0)
            alive &= ~(np.asarray(terminated, bool) | np.asarray(truncated, bool))
            if not alive.any():
                break
            observations = np.asarray(observations, dtype=np.float64)
        returns.append(totals)
    return np.concatenate(returns)


def episode_states(
    policy: Any, env: Any, steps: int, seeds: Sequence[int], episodes: np.ndarray
) -> np.ndarray:
    """States (K, n) of chosen episodes of :func:`episode_returns` (same seeds, same order)."""
    states = []
    n_envs = int(env.n_envs)
    for batch, seed in enumerate(seeds):
        slots = episodes[(episodes >= batch * n_envs) & (episodes < (batch + 1) * n_envs)]
        slots = slots - batch * n_envs
        if slots.size == 0:
            continue
        observations = np.asarray(env.reset(seed=seed), dtype=np.float64)
        alive = np.zeros(n_envs, dtype=bool)
        alive[slots] = True
        for _ in range(steps):
            states.append(observations[alive])
            observations, _, terminated, truncated = env.step(policy.act_batch(observations))
            observations = np.asarray(observations, dtype=np.float64)
            alive &= ~(np.asarray(terminated, bool) | np.asarray(truncated, bool))
            alive &= np.all(np.isfinite(observations), axis=1)
            if not alive.any():
                break
    return np.concatenate(states)


def surrogate_return_of(policy: NumpyPolicy, env, episode_length: int) -> tuple[float, np.ndarray]:
    """Mean return of one deterministic surrogate episode in each of the env's slots.

    Returns
    -------
    (mean return, episode lengths of shape (n_envs,)) : the lengths say how many of the
        episodes the mean is made of ran their full ``episode_length``.
    """
    observations = env.reset()
    totals = np.zeros(env.n_envs)
    lengths = np.zeros(env.n_envs, dtype=np.int64)
    alive = np.ones(env.n_envs, dtype=bool)
    for _ in range(episode_length):
        next_observations, reward, terminated, truncated = env.step(policy.act_batch(observations))
        totals += np.where(alive, reward, 0.0)
        lengths += alive
        alive &= ~(terminated | truncated)
        if not alive.any():
            break
        observations = next_observations
    return float(np.mean(totals)), lengths


def noisy_visited_states(policy: NumpyPolicy, env, episode_length: int, seed: int) -> np.ndarray:
    """States the policy visits in the surrogate (with a little action noise for coverage)."""
    rng = np.random.default_rng(seed)
    half_range = 0.5 * (env.action_high - env.action_low)
    states = []
    observations = env.reset()
    for _ in range(episode_length):
        states.append(observations.copy())
        actions = policy.act_batch(observations)
        actions = actions + 0.1 * half_range * rng.standard_normal(actions.shape)
        observations, _, terminated, truncated = env.step(actions)
        observations = env.reset_done(terminated | truncated)
    return np.concatenate(states)
