"""Fitting the E-SINDy ensemble of a dynamics model with pysindy.

:func:`fit_ensemble` fits the coefficients of a
:class:`~sindyrl_ros.core.dynamics.SindyDynamics` with pysindy 2.1 (``DiscreteSINDy`` +
``EnsembleOptimizer`` around ``STLSQ``, bagging and library ensembling, median or mean
coefficients), as :class:`EnsembleConfig` says; the model then runs them with its own
numpy evaluation. pysindy is imported only when a fit runs.
"""

from __future__ import annotations

from collections.abc import Sequence
import contextlib
from dataclasses import asdict, dataclass
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from sindyrl_ros.core.library import format_term, make_pysindy_library
from sindyrl_ros.core.trajectories import Trajectory

if TYPE_CHECKING:
    from sindyrl_ros.core.dynamics import SindyDynamics

__all__ = ['EnsembleConfig', 'EnsembleFit', 'fit_ensemble']


@dataclass
class EnsembleConfig:
    """Sparse regression and ensembling settings (E-SINDy).

    Attributes
    ----------
    n_models : int
        Ensemble members.
    threshold : float
        STLSQ threshold: coefficients smaller in magnitude are set to zero.
    alpha : float
        Ridge regularisation of each STLSQ least-squares step.
    max_iter : int
        STLSQ iterations.
    bagging : bool
        Fit each member on a bootstrap resample of the transitions.
    library_ensemble : bool
        Drop ``n_candidates_to_drop`` random library terms per member.
    n_candidates_to_drop : int
        Terms dropped per member with library ensembling.
    aggregate : {'median', 'mean'}
        How member coefficients are combined into the model used by :meth:`predict`.
    seed : int
        Seed of the bootstrap/library draws (pysindy uses numpy's global generator;
        it is seeded for the fit and restored afterwards).
    """

    n_models: int = 20
    threshold: float = 0.001
    alpha: float = 1e-5
    max_iter: int = 20
    bagging: bool = True
    library_ensemble: bool = True
    n_candidates_to_drop: int = 1
    aggregate: str = 'median'
    target: str = 'delta'
    unbias: bool = True
    normalize_columns: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_models < 1:
            raise ValueError('n_models must be >= 1')
        if self.threshold < 0 or self.alpha < 0:
            raise ValueError('threshold and alpha must be >= 0')
        if self.aggregate not in ('median', 'mean'):
            raise ValueError(f"aggregate must be 'median' or 'mean', got {self.aggregate!r}")
        if self.target not in ('delta', 'next'):
            raise ValueError(f"target must be 'delta' or 'next', got {self.target!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of the configuration."""
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> EnsembleConfig:
        """Inverse of :meth:`to_dict`."""
        unknown = set(doc) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f'unknown ensemble fields {sorted(unknown)}')
        return cls(**doc)


@contextlib.contextmanager
def _seeded_global_numpy(seed: int):
    """pysindy's ensembling draws from ``np.random``; seed it, then restore the caller's state."""
    state = np.random.get_state()
    np.random.seed(seed % (2**32))
    try:
        yield
    finally:
        np.random.set_state(state)


@dataclass
class EnsembleFit:
    """What :func:`fit_ensemble` found, for :meth:`SindyDynamics.fit` to keep.

    Attributes
    ----------
    pysindy_model : pysindy.DiscreteSINDy
        The fitted pysindy model.
    coefficients : numpy.ndarray, shape (n, n_terms)
        Aggregated coefficients Ξᵀ of the next-observation form x[k+1] = Θ(x[k], u[k]) Ξ.
    member_coefficients : numpy.ndarray, shape (M, n, n_terms)
        Coefficients of each ensemble member, in the same form.
    observation_scale : numpy.ndarray, shape (n,)
        Standard deviation of each observation feature in the data (1 where constant).
    fit_info : dict
        ``n_samples``, ``n_saturated_dropped``, ``n_trajectories``, ``fit_seconds``.
    """

    pysindy_model: Any
    coefficients: np.ndarray
    member_coefficients: np.ndarray
    observation_scale: np.ndarray
    fit_info: dict[str, Any]


def fit_ensemble(dynamics: SindyDynamics, trajectories: Sequence[Trajectory]) -> EnsembleFit:
    """Fit the ensemble of ``dynamics`` (its library and settings) on recorded trajectories.

    ``dynamics`` is left unchanged: :meth:`SindyDynamics.fit` keeps the result.

    Parameters
    ----------
    dynamics : SindyDynamics
        The model to fit: names, control period, angle pairs, saturation limits, library
        and ensemble settings.
    trajectories : sequence of Trajectory
        Each with observations (T+1, n) and actions (T, m); trajectories
        without a transition are skipped.

    Returns
    -------
    EnsembleFit

    Raises
    ------
    ValueError
        If no trajectory holds a transition, one has the wrong number of columns or holds
        NaN or infinite values, or every transition ends on a saturation limit.
    RuntimeError
        If pysindy's library columns differ from the model's terms.
    """
    import pysindy as ps
    from threadpoolctl import threadpool_limits

    usable = [t for t in trajectories if t.n_steps >= 1]
    if not usable:
        raise ValueError('no trajectory with at least one transition to fit on')
    config = dynamics.ensemble
    n, m = dynamics.n_observations, dynamics.n_actions
    for index, trajectory in enumerate(usable):
        if trajectory.observations.shape[1] != n or trajectory.actions.shape[1] != m:
            raise ValueError(
                f'trajectory {index}: observations/actions have '
                f'{trajectory.observations.shape[1]}/{trajectory.actions.shape[1]} columns, '
                f'model expects {n}/{m}'
            )
        if not (
            np.all(np.isfinite(trajectory.observations))
            and np.all(np.isfinite(trajectory.actions))
        ):
            raise ValueError(f'trajectory {index} holds NaN or infinite values')
    # x_next is given explicitly, so every transition stands alone and the ones
    # ending on a saturation limit can simply be masked out.
    x = np.concatenate([t.observations[:-1] for t in usable])
    x_next = np.concatenate([t.observations[1:] for t in usable])
    u = np.concatenate([t.actions for t in usable])
    keep = ~dynamics._at_saturation(x_next)
    x, x_next, u = x[keep], x_next[keep], u[keep]
    if x.shape[0] == 0:
        raise ValueError('every transition ends on a saturation limit: nothing to fit')
    if config.target == 'delta':
        x_next = x_next - x
    n_samples = int(x.shape[0])
    started = time.perf_counter()
    library = make_pysindy_library(
        dynamics.library, dynamics.observation_names, dynamics.action_names, dynamics.angle_pairs
    )
    aggregator = None
    if config.aggregate == 'mean':

        def aggregator(coefficient_list):
            return np.mean(coefficient_list, axis=0)

    optimizer = ps.EnsembleOptimizer(
        ps.STLSQ(
            threshold=config.threshold,
            alpha=config.alpha,
            max_iter=config.max_iter,
            unbias=config.unbias,
            normalize_columns=config.normalize_columns,
        ),
        bagging=config.bagging,
        library_ensemble=config.library_ensemble,
        n_models=config.n_models,
        n_candidates_to_drop=config.n_candidates_to_drop,
        ensemble_aggregator=aggregator,
    )
    # A fresh optimizer per fit: pysindy keeps appending to coef_list and freezes
    # n_subset at the first fit's sample count, so a reused one mixes stale members.
    optimizer.coef_list = []
    model = ps.DiscreteSINDy(optimizer=optimizer, feature_library=library)
    # Single-threaded BLAS: the regressions are small, and on a loaded machine
    # OpenBLAS threads spin against other processes (measured 0.6 s -> 21 s for a
    # cartpole fit on 2 busy cores). It also keeps a background refit from starving
    # the controller.
    with (
        _seeded_global_numpy(config.seed),
        np.errstate(all='ignore'),
        threadpool_limits(limits=1, user_api='blas'),
    ):
        model.fit(
            [x],
            t=dynamics.dt,
            x_next=[x_next],
            u=[u],
            feature_names=dynamics.observation_names + dynamics.action_names,
        )
    fit_seconds = time.perf_counter() - started
    names = library.get_feature_names(dynamics.observation_names + dynamics.action_names)
    expected = [
        format_term(t, dynamics.observation_names + dynamics.action_names, '', pysindy_style=True)
        for t in dynamics.terms
    ]
    if names != expected:
        raise RuntimeError(
            f'pysindy library columns {names} differ from the numpy terms {expected}'
        )
    coefficients = np.array(model.coefficients(), dtype=np.float64)
    member_coefficients = np.array(optimizer.coef_list, dtype=np.float64)
    if config.target == 'delta':
        # Store the next-observation form x[k+1] = x[k] + Θ Ξ_delta: add the identity
        # on each observation's linear term.
        for index in range(n):
            column = dynamics._linear_term[index]
            coefficients[index, column] += 1.0
            member_coefficients[:, index, column] += 1.0
    all_observations = np.concatenate([t.observations for t in usable])
    scale = np.std(all_observations, axis=0)
    return EnsembleFit(
        pysindy_model=model,
        coefficients=coefficients,
        member_coefficients=member_coefficients,
        observation_scale=np.where(scale > 1e-12, scale, 1.0),
        fit_info={
            'n_samples': int(n_samples),
            'n_saturated_dropped': int(np.sum(~keep)),
            'n_trajectories': len(usable),
            'fit_seconds': float(fit_seconds),
        },
    )
