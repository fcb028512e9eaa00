"""Multi-step rollout error of a dynamics model on recorded trajectories.

One-step error says little about a model used for hundreds of steps:
:func:`rollout_error` simulates windows of recorded trajectories with the recorded actions
(:meth:`SindyDynamics.validate <sindyrl_ros.core.dynamics.SindyDynamics.validate>` keeps
the result with the model).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from sindyrl_ros.core.trajectories import Trajectory

if TYPE_CHECKING:
    from sindyrl_ros.core.dynamics import SindyDynamics

__all__ = ['rollout_error']


def rollout_error(
    dynamics: SindyDynamics,
    trajectories: Sequence[Trajectory],
    horizon: int,
    stride: int | None = None,
    divergence_factor: float = 10.0,
) -> dict[str, Any]:
    """Multi-step rollout error of ``dynamics`` on (held-out) trajectories.

    Windows of ``horizon`` steps start every ``stride`` steps; each is simulated
    with the recorded actions from the recorded first observation and compared
    with the recorded observations. One-step error says little about a model
    used for hundreds of steps; this is what the policy will experience.

    Parameters
    ----------
    dynamics : SindyDynamics
    trajectories : sequence of Trajectory
    horizon : int
        Steps per window (shorter trajectories give one window of their length).
    stride : int, optional
        Steps between window starts (default ``max(1, horizon // 5)``).
    divergence_factor : float
        A prediction farther than ``divergence_factor`` × (data range) from the
        data's centre, or non-finite, counts as diverged.

    Returns
    -------
    dict
        ``nrmse``: RMS error over all windows and steps, per feature divided by
        the feature's std in these trajectories, averaged over features;
        ``nrmse_per_feature`` (list), ``mae_per_feature`` (mean absolute error in
        the observation's units, list), ``final_nrmse`` (at the last step of the
        windows), ``one_step_nrmse``, ``max_error`` (largest absolute error),
        ``diverged`` (bool), ``diverged_fraction`` (of windows), ``n_windows``,
        ``horizon``. All finite (errors of diverged windows are measured on
        predictions clipped to the divergence bound).
    """
    horizon = int(horizon)
    if horizon < 1:
        raise ValueError('horizon must be >= 1')
    stride = max(1, horizon // 5) if stride is None else int(stride)
    usable = [t for t in trajectories if t.n_steps >= 1]
    if not usable:
        raise ValueError('no trajectory with at least one transition to validate on')
    all_observations = np.concatenate([t.observations for t in usable])
    centre = 0.5 * (all_observations.max(axis=0) + all_observations.min(axis=0))
    span = np.maximum(all_observations.max(axis=0) - all_observations.min(axis=0), 1e-6)
    bound = divergence_factor * span
    scale = np.std(all_observations, axis=0)
    scale = np.where(scale > 1e-9, scale, 1.0)
    groups: dict[int, list[tuple[Trajectory, int]]] = {}
    for trajectory in usable:
        length = min(horizon, trajectory.n_steps)
        starts = range(0, trajectory.n_steps - length + 1, stride)
        for start in starts:
            groups.setdefault(length, []).append((trajectory, start))
    squared = np.zeros(dynamics.n_observations)
    absolute = np.zeros(dynamics.n_observations)
    final_squared = np.zeros(dynamics.n_observations)
    one_step_squared = np.zeros(dynamics.n_observations)
    count = 0
    n_windows = 0
    n_diverged = 0
    max_error = 0.0
    for length, windows in groups.items():
        observations0 = np.stack([t.observations[s] for t, s in windows])
        actions = np.stack([t.actions[s : s + length] for t, s in windows], axis=1)
        truth = np.stack([t.observations[s : s + length + 1] for t, s in windows], axis=1)
        predicted = dynamics._rollout_batch(observations0, actions)
        with np.errstate(invalid='ignore'):
            bad = ~np.isfinite(predicted) | (np.abs(predicted - centre) > bound)
        window_diverged = np.any(bad, axis=(0, 2))
        predicted = np.nan_to_num(predicted, nan=np.inf)
        predicted = np.clip(predicted, centre - bound, centre + bound)
        error = (predicted - truth)[1:] / scale
        squared += np.sum(error**2, axis=(0, 1))
        absolute += np.sum(np.abs(predicted - truth)[1:], axis=(0, 1))
        final_squared += np.sum(error[-1] ** 2, axis=0)
        one_step_squared += np.sum(error[0] ** 2, axis=0)
        count += error.shape[0] * error.shape[1]
        n_windows += len(windows)
        n_diverged += int(np.sum(window_diverged))
        max_error = max(max_error, float(np.max(np.abs((predicted - truth)[1:]))))
    per_feature = np.sqrt(squared / count)
    metrics = {
        'nrmse': float(np.mean(per_feature)),
        'nrmse_per_feature': [float(v) for v in per_feature],
        'mae_per_feature': [float(v) for v in absolute / count],
        'final_nrmse': float(np.mean(np.sqrt(final_squared / n_windows))),
        'one_step_nrmse': float(np.mean(np.sqrt(one_step_squared / n_windows))),
        'max_error': max_error,
        'diverged': bool(n_diverged > 0),
        'diverged_fraction': n_diverged / n_windows,
        'n_windows': int(n_windows),
        'horizon': horizon,
    }
    dynamics.validation = metrics
    return metrics
