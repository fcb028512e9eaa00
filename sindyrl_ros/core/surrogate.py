"""Batched surrogate environment: the SINDy model stands in for the plant during training.

Thousands of environments advance in one vectorised call (no pysindy, no Python
loop over environments), so a policy can be trained on millions of model steps in
minutes while the real plant has only been run for a few hundred.

Safeguards, because a sparse model fitted on little data can be wrong far from it:

* episodes start from *recorded real states* (optionally perturbed), where the
  model is trustworthy;
* angle pairs are projected onto the unit circle after each step;
* a step that leaves the observation bounds or produces a non-finite value ends the
  episode (``terminated``), and the returned observation and reward are always
  finite: the learner never sees inf/NaN;
* leaving the model's domain is never rewarding (see ``termination_reward``);
* with ``sample_members`` every episode runs on one randomly drawn ensemble member,
  so the policy has to work across the model's uncertainty.

``core.surrogate_env.SurrogateVectorEnv`` exposes it as a ``gymnasium.vector.VectorEnv`` (with
autoreset) for RL libraries; the Dyna loop and ``core.sac`` use this class directly.
"""

from __future__ import annotations

from collections.abc import Callable
import time
from typing import Any

import numpy as np

from sindyrl_ros.core.dynamics import SindyDynamics

__all__ = ['SurrogateVecEnv', 'measure_surrogate_speed']

RewardFunction = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


class SurrogateVecEnv:
    """Vectorised environment stepping a :class:`SindyDynamics` model.

    Parameters
    ----------
    dynamics : SindyDynamics
        Fitted model.
    reward_fn : callable
        ``fn(observations (N, n), actions (N, m), next_observations (N, n)) -> (N,)``.
    start_observations : numpy.ndarray, shape (K, n)
        Recorded real observations episodes start from.
    n_envs : int
        Batch size N.
    episode_length : int
        Steps before ``truncated``.
    observation_low, observation_high : numpy.ndarray, shape (n,)
        Domain of the model; leaving it terminates the episode. ±inf allowed.
    start_noise : float
        Standard deviation of Gaussian noise added to start observations, in units
        of each feature's standard deviation over ``start_observations``.
    sample_members : bool
        Run each episode on one ensemble member drawn at reset instead of the
        aggregated model.
    seed : int
        Seed of start states and member draws.
    action_low, action_high : numpy.ndarray, shape (m,), optional
        Action limits; default: the model's ``action_low``/``action_high``.
    termination_reward : float or None
        Reward of a terminating step. ``None`` (default): the step's reward, plus, if
        it is negative, that reward once more for every step the episode had left —
        so that escaping the model's domain never beats staying in it when rewards
        are costs (Pendulum), while positive rewards (dm_control) simply stop.
    reward_limit : float
        Rewards are clipped to ±``reward_limit`` (NaN counts as ``-reward_limit`` and
        terminates the episode).

    Attributes
    ----------
    n_envs, observation_dim, action_dim : int
    action_low, action_high : numpy.ndarray, shape (m,)
    observation_low, observation_high : numpy.ndarray, shape (n,)
    episode_steps : numpy.ndarray of int, shape (n_envs,)
        Steps taken in the current episode of each environment.
    members : numpy.ndarray of int, shape (n_envs,)
        Ensemble member of each environment's episode (-1: aggregated model).
    """

    def __init__(
        self,
        dynamics: SindyDynamics,
        reward_fn: RewardFunction,
        start_observations: np.ndarray,
        n_envs: int,
        episode_length: int,
        observation_low: np.ndarray,
        observation_high: np.ndarray,
        start_noise: float = 0.0,
        sample_members: bool = False,
        seed: int | None = 0,
        action_low: np.ndarray | None = None,
        action_high: np.ndarray | None = None,
        termination_reward: float | None = None,
        reward_limit: float = 1e6,
    ) -> None:
        if not dynamics.is_fitted:
            raise ValueError('the dynamics model is not fitted')
        self.dynamics = dynamics
        self.reward_fn = reward_fn
        self.n_envs = int(n_envs)
        if self.n_envs < 1:
            raise ValueError('n_envs must be >= 1')
        self.episode_length = int(episode_length)
        if self.episode_length < 1:
            raise ValueError('episode_length must be >= 1')
        n, m = dynamics.n_observations, dynamics.n_actions
        self.observation_dim = n
        self.action_dim = m
        self.observation_low = _vector(observation_low, n, 'observation_low')
        self.observation_high = _vector(observation_high, n, 'observation_high')
        if np.any(self.observation_low >= self.observation_high):
            raise ValueError('observation_low must be below observation_high')
        if action_low is None:
            action_low = dynamics.action_low
        if action_high is None:
            action_high = dynamics.action_high
        if action_low is None or action_high is None:
            raise ValueError(
                'action limits unknown: pass action_low/action_high or give them to the model'
            )
        self.action_low = _vector(action_low, m, 'action_low')
        self.action_high = _vector(action_high, m, 'action_high')
        if not (np.all(np.isfinite(self.action_low)) and np.all(np.isfinite(self.action_high))):
            raise ValueError('action limits must be finite')
        starts = np.asarray(start_observations, dtype=np.float64)
        if starts.ndim != 2 or starts.shape[1] != n or starts.shape[0] == 0:
            raise ValueError(f'start_observations must be (K, {n}), got {starts.shape}')
        starts = starts[np.all(np.isfinite(starts), axis=1)]
        if starts.shape[0] == 0:
            raise ValueError('start_observations holds no finite row')
        self.start_observations = starts
        spread = np.std(starts, axis=0)
        self._start_scale = np.where(spread > 1e-12, spread, 0.0)
        self.start_noise = float(start_noise)
        self.sample_members = bool(sample_members)
        if self.sample_members and dynamics.n_members == 0:
            raise ValueError('sample_members needs a model with ensemble members')
        self.termination_reward = termination_reward
        self.reward_limit = float(reward_limit)
        self._rng = np.random.default_rng(seed)
        # Preallocated state; step() writes into these.
        self._observations = np.empty((self.n_envs, n))
        self._next = np.empty((self.n_envs, n))
        self._actions = np.empty((self.n_envs, m))
        self.episode_steps = np.zeros(self.n_envs, dtype=np.int64)
        self.members = np.full(self.n_envs, -1, dtype=np.int64)
        self._finite_low = np.where(
            np.isfinite(self.observation_low), self.observation_low, -1e300
        )
        self._finite_high = np.where(
            np.isfinite(self.observation_high), self.observation_high, 1e300
        )
        if self.sample_members:
            rows = dynamics.member_coefficient_rows
            self._env_coefficients = np.empty((self.n_envs,) + rows.shape[1:])
        self.reset(seed=None)

    # ------------------------------------------------------------------ episodes
    def _draw_starts(self, count: int) -> np.ndarray:
        picks = self._rng.integers(0, self.start_observations.shape[0], size=count)
        starts = self.start_observations[picks].copy()
        if self.start_noise > 0:
            starts += self._rng.standard_normal(starts.shape) * (
                self.start_noise * self._start_scale
            )
        self.dynamics.project(starts)
        np.clip(starts, self._finite_low, self._finite_high, out=starts)
        return starts

    def _restart(self, indices: np.ndarray) -> None:
        if indices.size == 0:
            return
        self._observations[indices] = self._draw_starts(indices.size)
        self.episode_steps[indices] = 0
        if self.sample_members:
            members = self._rng.integers(0, self.dynamics.n_members, size=indices.size)
            self.members[indices] = members
            self._env_coefficients[indices] = self.dynamics.member_coefficient_rows[members]

    def reset(self, seed: int | None = None) -> np.ndarray:
        """Start new episodes in every environment.

        Returns
        -------
        numpy.ndarray, shape (n_envs, n)
        """
        if seed is not None:
            self.reseed(seed)
        self._restart(np.arange(self.n_envs))
        return self._observations.copy()

    def reseed(self, seed: int | None) -> None:
        """Reseed the generator of start states and member draws (no episode restarts)."""
        self._rng = np.random.default_rng(seed)

    def reset_done(self, done: np.ndarray) -> np.ndarray:
        """Start new episodes in the environments flagged ``done``.

        Parameters
        ----------
        done : numpy.ndarray of bool, shape (n_envs,)

        Returns
        -------
        numpy.ndarray, shape (n_envs, n)
            Current observation of every environment (new start states where done).
        """
        done = np.asarray(done, dtype=bool).reshape(self.n_envs)
        self._restart(np.flatnonzero(done))
        return self._observations.copy()

    @property
    def observations(self) -> np.ndarray:
        """Current observations (n_envs, n) — a read-only view."""
        view = self._observations.view()
        view.flags.writeable = False
        return view

    # ------------------------------------------------------------------ stepping
    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Advance every environment one control period.

        Parameters
        ----------
        actions : numpy.ndarray, shape (n_envs, m)
            Clipped to [action_low, action_high]; a NaN action is replaced by the
            middle of the range.

        Returns
        -------
        next_observations : numpy.ndarray, shape (n_envs, n)
            Observation after the step (no automatic reset); always finite and
            within bounds.
        rewards : numpy.ndarray, shape (n_envs,)
        terminated : numpy.ndarray of bool, shape (n_envs,)
            Left the bounds or diverged.
        truncated : numpy.ndarray of bool, shape (n_envs,)
            Reached ``episode_length`` without terminating.
        """
        actions = np.asarray(actions, dtype=np.float64)
        if actions.shape != self._actions.shape:
            actions = actions.reshape(self._actions.shape)
        np.clip(actions, self.action_low, self.action_high, out=self._actions)
        if np.isnan(self._actions).any():
            middle = 0.5 * (self.action_low + self.action_high)
            np.copyto(
                self._actions,
                np.broadcast_to(middle, self._actions.shape),
                where=np.isnan(self._actions),
            )
        nxt = self._next
        with np.errstate(all='ignore'):
            if self.sample_members:
                rows = self.dynamics.feature_rows(self._observations, self._actions)
                np.einsum('inr,ri->in', self._env_coefficients, rows, out=nxt)
            else:
                self.dynamics.predict(self._observations, self._actions, out=nxt)
            self.dynamics.project(nxt)
            inside = np.all(
                (nxt >= self.observation_low) & (nxt <= self.observation_high) & np.isfinite(nxt),
                axis=1,
            )
        terminated = ~inside
        if terminated.any():
            self._make_finite(terminated)
        with np.errstate(all='ignore'):
            rewards = np.asarray(
                self.reward_fn(self._observations, self._actions, nxt), dtype=np.float64
            ).reshape(self.n_envs)
        bad_reward = ~np.isfinite(rewards)
        if bad_reward.any():
            rewards = np.where(np.isnan(rewards), -self.reward_limit, rewards)
            terminated |= bad_reward
        self.episode_steps += 1
        if terminated.any():
            rewards = rewards.copy()
            if self.termination_reward is not None:
                rewards[terminated] = self.termination_reward
            else:
                remaining = np.maximum(self.episode_length - self.episode_steps[terminated], 0)
                lost = rewards[terminated]
                rewards[terminated] = lost + np.minimum(lost, 0.0) * remaining
        np.clip(rewards, -self.reward_limit, self.reward_limit, out=rewards)
        truncated = (self.episode_steps >= self.episode_length) & ~terminated
        # The step's result becomes the current observation (swap, no copy).
        self._observations, self._next = self._next, self._observations
        return self._observations.copy(), rewards, terminated, truncated

    def _make_finite(self, rows: np.ndarray) -> None:
        """Replace diverged observations by finite in-bounds values (in place)."""
        nxt = self._next
        bad = nxt[rows]
        previous = self._observations[rows]
        bad = np.where(np.isnan(bad), previous, bad)
        np.clip(bad, self._finite_low, self._finite_high, out=bad)
        self.dynamics.project(bad)
        np.clip(bad, self._finite_low, self._finite_high, out=bad)
        nxt[rows] = bad

    def __repr__(self) -> str:
        return (
            f'SurrogateVecEnv(n_envs={self.n_envs}, observation_dim={self.observation_dim}, '
            f'action_dim={self.action_dim}, episode_length={self.episode_length}, '
            f'sample_members={self.sample_members})'
        )


def _vector(values: Any, size: int, what: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if array.size == 1 and size > 1:
        array = np.full(size, array[0])
    if array.shape != (size,) or np.any(np.isnan(array)):
        raise ValueError(f'{what} must have {size} values, got {values!r}')
    return array


def measure_surrogate_speed(
    dynamics: SindyDynamics,
    reward_fn: RewardFunction,
    start_observations: np.ndarray,
    observation_low: np.ndarray,
    observation_high: np.ndarray,
    n_envs: int = 1000,
    steps: int = 200,
    episode_length: int = 200,
    sample_members: bool = False,
    seed: int = 0,
    **env_kwargs: Any,
) -> dict[str, float]:
    """Measure surrogate throughput with random actions (for benchmarks, not tests).

    Times ``steps`` calls of :meth:`SurrogateVecEnv.step` plus ``reset_done``, as a
    training loop would make them (policy evaluation excluded).

    Returns
    -------
    dict
        ``steps_per_second`` (environment steps, i.e. calls × n_envs),
        ``seconds_per_call``, ``n_envs``, ``calls``, ``sample_members``.
    """
    env = SurrogateVecEnv(
        dynamics,
        reward_fn,
        start_observations,
        n_envs=n_envs,
        episode_length=episode_length,
        observation_low=observation_low,
        observation_high=observation_high,
        sample_members=sample_members,
        seed=seed,
        **env_kwargs,
    )
    rng = np.random.default_rng(seed)
    actions = rng.uniform(env.action_low, env.action_high, size=(steps, n_envs, env.action_dim))
    env.reset()
    for k in range(min(steps, 5)):  # warm-up: buffers allocated, caches hot
        _, _, terminated, truncated = env.step(actions[k])
        env.reset_done(terminated | truncated)
    started = time.perf_counter()
    for k in range(steps):
        _, _, terminated, truncated = env.step(actions[k])
        env.reset_done(terminated | truncated)
    elapsed = time.perf_counter() - started
    return {
        'steps_per_second': steps * n_envs / elapsed,
        'seconds_per_call': elapsed / steps,
        'n_envs': float(n_envs),
        'calls': float(steps),
        'sample_members': float(sample_members),
    }
