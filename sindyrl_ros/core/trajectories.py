"""Trajectories of (observation, action) samples recorded on a plant.

A SINDy model x[k+1] = f(x[k], u[k]) is fitted on pairs of consecutive
observations, so samples only belong together if they are exactly one control
period apart. Real robots drop messages and get paused: the model updater pairs
messages by stamp and cuts trajectories at gaps (core.transitions.TransitionAssembler),
and :func:`split_outside_bounds` drops what a smooth model cannot describe.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ['Trajectory', 'split_outside_bounds']


@dataclass
class Trajectory:
    """One gap-free run on the plant.

    Attributes
    ----------
    observations : numpy.ndarray, shape (T+1, n)
        Observation before each action plus the final observation.
    actions : numpy.ndarray, shape (T, m)
        ``actions[k]`` was applied at ``observations[k]`` and led to
        ``observations[k+1]``.
    rewards : numpy.ndarray or None, shape (T,)
        Reward measured for each step, if the plant reports one.
    times : numpy.ndarray or None, shape (T+1,)
        Measurement time of each observation in seconds.
    """

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray | None = None
    times: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.observations = np.asarray(self.observations, dtype=np.float64)
        self.actions = np.asarray(self.actions, dtype=np.float64)
        if self.observations.ndim != 2:
            raise ValueError(f'observations must be (T+1, n), got shape {self.observations.shape}')
        if self.actions.ndim == 1:
            self.actions = self.actions[:, None]
        if self.actions.ndim != 2 or self.actions.shape[0] + 1 != self.observations.shape[0]:
            raise ValueError(
                f'actions must be (T, m) with T = len(observations) - 1 = '
                f'{self.observations.shape[0] - 1}, got shape {self.actions.shape}'
            )
        if self.rewards is not None:
            self.rewards = np.asarray(self.rewards, dtype=np.float64).reshape(-1)
            if self.rewards.shape[0] != self.actions.shape[0]:
                raise ValueError(
                    f'rewards must be (T,) = ({self.actions.shape[0]},), got {self.rewards.shape}'
                )
        if self.times is not None:
            self.times = np.asarray(self.times, dtype=np.float64).reshape(-1)
            if self.times.shape[0] != self.observations.shape[0]:
                raise ValueError(
                    f'times must be (T+1,) = ({self.observations.shape[0]},), '
                    f'got {self.times.shape}'
                )

    @property
    def n_steps(self) -> int:
        """Number of transitions T."""
        return int(self.actions.shape[0])


def split_outside_bounds(
    trajectories: list[Trajectory],
    observation_low: np.ndarray,
    observation_high: np.ndarray,
    min_steps: int = 1,
) -> list[Trajectory]:
    """Keep only the parts of trajectories that stay inside observation bounds.

    Where a plant hits something a smooth model cannot describe (a cart against the
    end stop of its rail), those samples would bend every fitted coefficient. The
    surrogate terminates episodes at the same bounds, so the model is never asked to
    predict there.

    Parameters
    ----------
    trajectories : list of Trajectory
    observation_low, observation_high : numpy.ndarray, shape (n,)
        Inclusive bounds (±inf for none).
    min_steps : int
        Pieces with fewer transitions are dropped.

    Returns
    -------
    list of Trajectory
        Pieces in which every observation lies within the bounds.
    """
    low = np.asarray(observation_low, dtype=np.float64)
    high = np.asarray(observation_high, dtype=np.float64)
    pieces = []
    for trajectory in trajectories:
        inside = np.all(
            (trajectory.observations >= low) & (trajectory.observations <= high), axis=1
        )
        edges = np.diff(np.concatenate(([0], inside.astype(np.int8), [0])))
        starts, stops = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        for start, stop in zip(starts, stops):
            if stop - start - 1 < max(min_steps, 1):
                continue
            pieces.append(
                Trajectory(
                    observations=trajectory.observations[start:stop].copy(),
                    actions=trajectory.actions[start : stop - 1].copy(),
                    rewards=None
                    if trajectory.rewards is None
                    else trajectory.rewards[start : stop - 1].copy(),
                    times=None
                    if trajectory.times is None
                    else trajectory.times[start:stop].copy(),
                )
            )
    return pieces
