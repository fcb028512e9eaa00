"""E-SINDy dynamics model with control: x[k+1] = Θ(x[k], u[k]) Ξ.

Fitted with pysindy 2.1 (``DiscreteSINDy`` + ``EnsembleOptimizer`` around
``STLSQ``, bagging and library ensembling, median or mean coefficients), then run
with its own batched numpy evaluation (:class:`~sindyrl_ros.core.library.FeatureEvaluator`)
because pysindy's ``predict`` costs milliseconds per call and the surrogate
environment needs hundreds of thousands of steps per second.

The ensemble members are kept: the surrogate can draw one member per episode
(model uncertainty as domain randomisation), and their spread
(:meth:`SindyDynamics.disagreement`) says where the model is extrapolating.

Angles observed as (cos θ, sin θ) are projected back onto the unit circle after
every predicted step; without it, multi-step rollouts of polynomial models drift
off the circle and blow up.
"""

from __future__ import annotations

from collections.abc import Sequence
import contextlib
from dataclasses import asdict, dataclass
import math
from pathlib import Path
import time
from typing import Any

import numpy as np

from sindyrl_ros.core.library import (
    FeatureEvaluator,
    LibraryConfig,
    Term,
    build_terms,
    format_term,
    make_pysindy_library,
)
from sindyrl_ros.core.serialization import (
    FormatError,
    as_float_array,
    check_document,
    load_json_document,
    require,
    save_json_document,
)
from sindyrl_ros.core.trajectories import Trajectory

__all__ = ['MODEL_FORMAT', 'MODEL_VERSION', 'EnsembleConfig', 'SindyDynamics']

MODEL_FORMAT = 'sindyrl_ros/model'
MODEL_VERSION = 1


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


class SindyDynamics:
    """Discrete-time sparse dynamics model with control, fitted as an E-SINDy ensemble.

    Parameters
    ----------
    observation_names : sequence of str
        n observation feature names, e.g. ``('cos', 'sin', 'thdot')``.
    action_names : sequence of str
        m action names, e.g. ``('u',)``.
    dt : float
        Control period in seconds (one model step).
    angle_pairs : sequence of (int, int)
        Observation indices (cos, sin) of each angle; projected onto the unit circle
        after every step.
    library : LibraryConfig
        Candidate terms.
    ensemble : EnsembleConfig
        Regression settings.
    action_low, action_high : array-like of shape (m,) or None
        Actuator limits, kept with the model so that a surrogate built from it clips
        actions like the plant does.
    saturation : dict of str to (float, float), optional
        Limits the plant itself clips an observation to, e.g. ``{'thdot': (-8, 8)}``
        for gymnasium's Pendulum-v1. A clip is not polynomial: transitions that end
        on such a limit are left out of the regression (they would bend every
        coefficient), and predictions are clipped to the limits like the plant does.

    Attributes
    ----------
    model_version : int
        Incremented by every :meth:`fit` (0 = never fitted).
    coefficients : numpy.ndarray, shape (n, n_terms)
        Aggregated coefficients Ξᵀ (one row per predicted observation).
    member_coefficients : numpy.ndarray, shape (M, n, n_terms)
        Coefficients of each ensemble member.
    terms : list of Term
        Library columns.
    pysindy_model : pysindy.DiscreteSINDy or None
        The fitted pysindy model (None after :meth:`load`).
    validation : dict or None
        Metrics of the last :meth:`validate` call, saved with the model.
    fit_info : dict
        Samples, trajectories and seconds of the last fit.

    Notes
    -----
    Evaluation reuses internal buffers (no allocation per step), so one instance must
    not be used from two threads at once; give each thread its own copy
    (``SindyDynamics.from_dict(model.to_dict())``).
    """

    def __init__(
        self,
        observation_names: Sequence[str],
        action_names: Sequence[str],
        dt: float,
        angle_pairs: Sequence[tuple[int, int]] = ((0, 1),),
        library: LibraryConfig | None = None,
        ensemble: EnsembleConfig | None = None,
        action_low: Sequence[float] | None = None,
        action_high: Sequence[float] | None = None,
        saturation: dict[str, Sequence[float]] | None = None,
    ) -> None:
        self.observation_names = [str(name) for name in observation_names]
        self.action_names = [str(name) for name in action_names]
        if len(set(self.observation_names + self.action_names)) != len(
            self.observation_names + self.action_names
        ):
            raise ValueError('observation and action names must be unique')
        self.dt = float(dt)
        if not self.dt > 0:
            raise ValueError(f'dt must be positive, got {dt}')
        n = len(self.observation_names)
        self.angle_pairs = [(int(c), int(s)) for c, s in angle_pairs]
        for c, s in self.angle_pairs:
            if not (0 <= c < n and 0 <= s < n and c != s):
                raise ValueError(f'angle pair {(c, s)} is not a pair of observation indices')
        self.library = library if library is not None else LibraryConfig()
        self.ensemble = ensemble if ensemble is not None else EnsembleConfig()
        m = len(self.action_names)
        self.action_low = None if action_low is None else _limits(action_low, m, 'action_low')
        self.action_high = None if action_high is None else _limits(action_high, m, 'action_high')
        self.saturation: dict[str, tuple[float, float]] = {}
        for name, limits in (saturation or {}).items():
            if name not in self.observation_names:
                raise ValueError(f'saturation names unknown observation {name!r}')
            low, high = (float(v) for v in limits)
            if not (math.isfinite(low) and math.isfinite(high) and low < high):
                raise ValueError(f'saturation of {name!r} must be finite (low, high), low < high')
            self.saturation[name] = (low, high)
        self._saturation_index = np.array(
            [self.observation_names.index(name) for name in self.saturation], dtype=np.intp
        )
        self._saturation_low = np.array([v[0] for v in self.saturation.values()])
        self._saturation_high = np.array([v[1] for v in self.saturation.values()])
        self.terms: list[Term] = build_terms(
            self.library, self.observation_names, self.action_names, self.angle_pairs
        )
        self.model_version = 0
        self.coefficients = np.zeros((n, len(self.terms)))
        self.member_coefficients = np.zeros((0, n, len(self.terms)))
        self.observation_scale = np.ones(n)
        self.pysindy_model = None
        self.validation: dict[str, Any] | None = None
        self.fit_info: dict[str, Any] = {}
        self._linear_term = [
            self.terms.index(Term(tuple(int(j == i) for j in range(n + m)))) for i in range(n)
        ]
        self._cos_index = np.array([c for c, _ in self.angle_pairs], dtype=np.intp)
        self._sin_index = np.array([s for _, s in self.angle_pairs], dtype=np.intp)
        self._prepare_evaluation()

    # ------------------------------------------------------------------ sizes
    @property
    def n_observations(self) -> int:
        """n."""
        return len(self.observation_names)

    @property
    def n_actions(self) -> int:
        """m."""
        return len(self.action_names)

    @property
    def n_members(self) -> int:
        """Number of ensemble members kept (M)."""
        return int(self.member_coefficients.shape[0])

    @property
    def n_nonzero(self) -> int:
        """Nonzero aggregated coefficients: the size of the readable model."""
        return int(np.count_nonzero(self.coefficients))

    @property
    def is_fitted(self) -> bool:
        """True once coefficients were fitted or loaded."""
        return self.model_version > 0

    # ------------------------------------------------------------------ fitting
    def fit(self, trajectories: Sequence[Trajectory]) -> SindyDynamics:
        """Fit the ensemble on recorded trajectories (replaces the previous fit).

        Parameters
        ----------
        trajectories : sequence of Trajectory
            Each with observations (T+1, n) and actions (T, m); trajectories
            without a transition are skipped.

        Returns
        -------
        SindyDynamics
            ``self``, with ``model_version`` incremented.
        """
        import pysindy as ps
        from threadpoolctl import threadpool_limits

        usable = [t for t in trajectories if t.n_steps >= 1]
        if not usable:
            raise ValueError('no trajectory with at least one transition to fit on')
        config = self.ensemble
        n, m = self.n_observations, self.n_actions
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
        keep = ~self._at_saturation(x_next)
        x, x_next, u = x[keep], x_next[keep], u[keep]
        if x.shape[0] == 0:
            raise ValueError('every transition ends on a saturation limit: nothing to fit')
        if config.target == 'delta':
            x_next = x_next - x
        n_samples = int(x.shape[0])
        started = time.perf_counter()
        library = make_pysindy_library(
            self.library, self.observation_names, self.action_names, self.angle_pairs
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
                t=self.dt,
                x_next=[x_next],
                u=[u],
                feature_names=self.observation_names + self.action_names,
            )
        fit_seconds = time.perf_counter() - started
        names = library.get_feature_names(self.observation_names + self.action_names)
        expected = [
            format_term(t, self.observation_names + self.action_names, '', pysindy_style=True)
            for t in self.terms
        ]
        if names != expected:
            raise RuntimeError(
                f'pysindy library columns {names} differ from the numpy terms {expected}'
            )
        self.pysindy_model = model
        self.coefficients = np.array(model.coefficients(), dtype=np.float64)
        self.member_coefficients = np.array(optimizer.coef_list, dtype=np.float64)
        if config.target == 'delta':
            # Store the next-observation form x[k+1] = x[k] + Θ Ξ_delta: add the identity
            # on each observation's linear term.
            for index in range(n):
                column = self._linear_term[index]
                self.coefficients[index, column] += 1.0
                self.member_coefficients[:, index, column] += 1.0
        all_observations = np.concatenate([t.observations for t in usable])
        scale = np.std(all_observations, axis=0)
        self.observation_scale = np.where(scale > 1e-12, scale, 1.0)
        self.model_version += 1
        self.validation = None
        self.fit_info = {
            'n_samples': int(n_samples),
            'n_saturated_dropped': int(np.sum(~keep)),
            'n_trajectories': len(usable),
            'fit_seconds': float(fit_seconds),
        }
        self._prepare_evaluation()
        return self

    def _at_saturation(self, observations: np.ndarray) -> np.ndarray:
        """(N,) bool: some saturated observation is at (or beyond) its limit."""
        if not self.saturation:
            return np.zeros(observations.shape[0], dtype=bool)
        values = observations[:, self._saturation_index]
        margin = 1e-6 * np.maximum(1.0, np.abs(self._saturation_high - self._saturation_low))
        return np.any(
            (values <= self._saturation_low + margin) | (values >= self._saturation_high - margin),
            axis=1,
        )

    def _prepare_evaluation(self) -> None:
        """Build the numpy evaluation plan for the current coefficients."""
        nonzero = np.any(self.coefficients != 0, axis=0)
        if self.member_coefficients.size:
            nonzero |= np.any(self.member_coefficients != 0, axis=(0, 1))
        self._active = np.flatnonzero(nonzero)
        n_inputs = self.n_observations + self.n_actions
        self._evaluator = FeatureEvaluator(self.terms, self._active, n_inputs)
        self._coefficient_rows = self._evaluator.expand_coefficients(
            self.coefficients, self._active
        )
        self._member_rows = self._evaluator.expand_coefficients(
            self.member_coefficients, self._active
        )
        self._input_batch = -1
        self._inputs = np.empty((0, n_inputs))
        self._output_t = np.empty((self.n_observations, 0))

    # ------------------------------------------------------------------ evaluation
    def features(self, observations: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """Library features of the *active* terms, for inspection and reward fitting.

        Parameters
        ----------
        observations : numpy.ndarray, shape (N, n)
        actions : numpy.ndarray, shape (N, m)

        Returns
        -------
        numpy.ndarray, shape (N, n_active)
            Columns in the order of ``active_terms``.
        """
        rows = self._evaluate_rows(observations, actions)
        return rows[self._evaluator.term_rows].T.copy()

    @property
    def active_terms(self) -> list[int]:
        """Indices of terms with a nonzero coefficient in the aggregate or a member."""
        return [int(i) for i in self._active]

    def feature_rows(self, observations: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """Evaluate the internal feature buffer (used by the surrogate's per-member step).

        Returns
        -------
        numpy.ndarray, shape (n_rows, N)
            Reused buffer; valid until the next evaluation with the same batch size.
        """
        return self._evaluate_rows(observations, actions)

    @property
    def coefficient_rows(self) -> np.ndarray:
        """Aggregated coefficients on the buffer rows, shape (n, n_rows)."""
        return self._coefficient_rows

    @property
    def member_coefficient_rows(self) -> np.ndarray:
        """Member coefficients on the buffer rows, shape (M, n, n_rows)."""
        return self._member_rows

    def _evaluate_rows(self, observations: np.ndarray, actions: np.ndarray) -> np.ndarray:
        n = self.n_observations
        batch = observations.shape[0]
        if batch != self._input_batch:
            self._input_batch = batch
            self._inputs = np.empty((batch, n + self.n_actions))
            self._output_t = np.empty((n, batch))
        self._inputs[:, :n] = observations
        self._inputs[:, n:] = actions
        return self._evaluator.evaluate(self._inputs)

    def predict(
        self, observations: np.ndarray, actions: np.ndarray, out: np.ndarray | None = None
    ) -> np.ndarray:
        """One model step for a batch, with the aggregated coefficients (no projection).

        Parameters
        ----------
        observations : numpy.ndarray, shape (N, n)
        actions : numpy.ndarray, shape (N, m)
        out : numpy.ndarray, shape (N, n), optional
            Destination; may be ``observations`` itself (inputs are copied first).

        Returns
        -------
        numpy.ndarray, shape (N, n)
            Predicted next observations.
        """
        observations = np.asarray(observations, dtype=np.float64)
        actions = np.asarray(actions, dtype=np.float64)
        single = observations.ndim == 1
        if single:
            observations = observations[None, :]
            actions = actions.reshape(1, -1)
        elif actions.ndim == 1:
            actions = actions[:, None]
        rows = self._evaluate_rows(observations, actions)
        np.matmul(self._coefficient_rows, rows, out=self._output_t)
        if out is None:
            out = self._output_t.T.copy()
        else:
            out[...] = self._output_t.T
        return out[0] if single else out

    def pysindy_predict(self, observations: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """One step through pysindy's own ``predict`` (slow; for checking the numpy path).

        Parameters
        ----------
        observations : numpy.ndarray, shape (N, n)
        actions : numpy.ndarray, shape (N, m)

        Returns
        -------
        numpy.ndarray, shape (N, n)
            Next observations (pysindy's increment added back for ``target='delta'``).
        """
        if self.pysindy_model is None:
            raise RuntimeError('no pysindy model: fitted models only (a loaded one has none)')
        observations = np.asarray(observations, dtype=np.float64)
        actions = np.asarray(actions, dtype=np.float64).reshape(observations.shape[0], -1)
        prediction = np.asarray(self.pysindy_model.predict(observations, u=actions))
        if self.ensemble.target == 'delta':
            prediction = prediction + observations
        return prediction

    def predict_members(self, observations: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """One step of every ensemble member.

        Parameters
        ----------
        observations : numpy.ndarray, shape (N, n)
        actions : numpy.ndarray, shape (N, m)

        Returns
        -------
        numpy.ndarray, shape (M, N, n)
        """
        observations = np.atleast_2d(np.asarray(observations, dtype=np.float64))
        actions = np.asarray(actions, dtype=np.float64).reshape(observations.shape[0], -1)
        if self.n_members == 0:
            raise RuntimeError('model has no ensemble members (not fitted?)')
        rows = self._evaluate_rows(observations, actions)
        return np.matmul(self._member_rows, rows).transpose(0, 2, 1)

    def disagreement(self, observations: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """Spread of the ensemble's one-step predictions, in units of observation std.

        Root mean square over observation features of (member standard deviation /
        training standard deviation of that feature). Large where the model
        extrapolates beyond its data.

        Returns
        -------
        numpy.ndarray, shape (N,)
        """
        members = self.predict_members(observations, actions)
        spread = np.std(members, axis=0) / self.observation_scale
        return np.sqrt(np.mean(spread**2, axis=1))

    def project(self, observations: np.ndarray) -> np.ndarray:
        """Map predictions back onto possible observations, in place.

        Each (cos, sin) pair is put back on the unit circle and saturated
        observations are clipped to their limits, as the plant does.

        Parameters
        ----------
        observations : numpy.ndarray, shape (N, n) or (n,)
            Modified in place; a pair at (0, 0) or non-finite is left unchanged
            (the surrogate's divergence check handles it).

        Returns
        -------
        numpy.ndarray
            ``observations``.
        """
        view = observations if observations.ndim == 2 else observations[None, :]
        if self.saturation:
            view[:, self._saturation_index] = np.clip(
                view[:, self._saturation_index], self._saturation_low, self._saturation_high
            )
        if not self.angle_pairs:
            return observations
        cos = view[:, self._cos_index]
        sin = view[:, self._sin_index]
        with np.errstate(invalid='ignore', over='ignore'):
            norm = np.hypot(cos, sin)
            usable = norm > 1e-12
            norm = np.where(usable, norm, 1.0)
        view[:, self._cos_index] = cos / norm
        view[:, self._sin_index] = sin / norm
        return observations

    def rollout(self, observation0: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """Simulate the model from one observation under an action sequence.

        Parameters
        ----------
        observation0 : numpy.ndarray, shape (n,)
        actions : numpy.ndarray, shape (T, m)

        Returns
        -------
        numpy.ndarray, shape (T+1, n)
            Projected after every step; may hold inf/NaN if the model diverges.
        """
        actions = np.asarray(actions, dtype=np.float64).reshape(len(actions), -1)
        trajectory = self._rollout_batch(
            np.asarray(observation0, dtype=np.float64)[None, :], actions[:, None, :]
        )
        return trajectory[:, 0, :]

    def _rollout_batch(self, observations0: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """Batched rollout: observations0 (B, n), actions (T, B, m) -> (T+1, B, n)."""
        steps = actions.shape[0]
        states = np.empty((steps + 1,) + observations0.shape)
        states[0] = observations0
        self.project(states[0])
        with np.errstate(all='ignore'):
            for k in range(steps):
                self.predict(states[k], actions[k], out=states[k + 1])
                self.project(states[k + 1])
        return states

    # ------------------------------------------------------------------ validation
    def validate(
        self,
        trajectories: Sequence[Trajectory],
        horizon: int,
        stride: int | None = None,
        divergence_factor: float = 10.0,
    ) -> dict[str, Any]:
        """Multi-step rollout error on (held-out) trajectories.

        Windows of ``horizon`` steps start every ``stride`` steps; each is simulated
        with the recorded actions from the recorded first observation and compared
        with the recorded observations. One-step error says little about a model
        used for hundreds of steps; this is what the policy will experience.

        Parameters
        ----------
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
        squared = np.zeros(self.n_observations)
        absolute = np.zeros(self.n_observations)
        final_squared = np.zeros(self.n_observations)
        one_step_squared = np.zeros(self.n_observations)
        count = 0
        n_windows = 0
        n_diverged = 0
        max_error = 0.0
        for length, windows in groups.items():
            observations0 = np.stack([t.observations[s] for t, s in windows])
            actions = np.stack([t.actions[s : s + length] for t, s in windows], axis=1)
            truth = np.stack([t.observations[s : s + length + 1] for t, s in windows], axis=1)
            predicted = self._rollout_batch(observations0, actions)
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
        self.validation = metrics
        return metrics

    # ------------------------------------------------------------------ readable form
    def equations(self, precision: int = 3) -> list[str]:
        """The aggregated model as text, one line per observation.

        Example: ``'thdot[k+1] = 1.000 thdot[k] + 0.750 sin[k] + 0.150 u[k]'``.
        """
        names = self.observation_names + self.action_names
        lines = []
        for row, target in zip(self.coefficients, self.observation_names):
            parts = []
            for coefficient, term in zip(row, self.terms):
                if coefficient == 0 or round(abs(coefficient), precision) == 0:
                    continue
                text = format_term(term, names)
                magnitude = f'{abs(coefficient):.{precision}f}'
                body = magnitude if text == '1' else f'{magnitude} {text}'
                if not parts:
                    parts.append(f'-{body}' if coefficient < 0 else body)
                else:
                    parts.append(f'- {body}' if coefficient < 0 else f'+ {body}')
            lines.append(f'{target}[k+1] = ' + (' '.join(parts) if parts else '0'))
        return lines

    def feature_names(self) -> list[str]:
        """Names of all library terms, in coefficient column order."""
        names = self.observation_names + self.action_names
        return [format_term(term, names) for term in self.terms]

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready model card: names, library, coefficients, members, metrics, equations."""
        return {
            'format': MODEL_FORMAT,
            'version': MODEL_VERSION,
            'model_version': int(self.model_version),
            'observation_names': list(self.observation_names),
            'action_names': list(self.action_names),
            'dt': self.dt,
            'angle_pairs': [list(pair) for pair in self.angle_pairs],
            'action_low': None if self.action_low is None else self.action_low.tolist(),
            'action_high': None if self.action_high is None else self.action_high.tolist(),
            'saturation': {name: list(limits) for name, limits in self.saturation.items()},
            'library': self.library.to_dict(),
            'ensemble': self.ensemble.to_dict(),
            'terms': [
                {
                    'powers': list(term.powers),
                    'trig': None if term.trig is None else list(term.trig),
                }
                for term in self.terms
            ],
            'feature_names': self.feature_names(),
            'coefficients': self.coefficients.tolist(),
            'member_coefficients': self.member_coefficients.tolist(),
            'observation_scale': self.observation_scale.tolist(),
            'n_nonzero': self.n_nonzero,
            'equations': self.equations(),
            'validation': self.validation,
            'fit_info': dict(self.fit_info),
        }

    @classmethod
    def from_dict(cls, doc: dict[str, Any], where: str = 'model') -> SindyDynamics:
        """Rebuild a model from :meth:`to_dict` output, validating every field.

        Raises
        ------
        FormatError
            Naming the field that is missing, mistyped, non-finite or of the wrong
            shape.
        """
        check_document(doc, MODEL_FORMAT, {MODEL_VERSION}, where)
        observation_names = _names(
            require(doc, 'observation_names', list, where), where, 'observation_names'
        )
        action_names = _names(require(doc, 'action_names', list, where), where, 'action_names')
        n, m = len(observation_names), len(action_names)
        dt = require(doc, 'dt', float, where)
        angle_pairs_doc = require(doc, 'angle_pairs', list, where)
        try:
            library = LibraryConfig.from_dict(require(doc, 'library', dict, where))
        except (TypeError, ValueError) as error:
            raise FormatError(f'{where}.library: {error}') from None
        try:
            ensemble = EnsembleConfig.from_dict(require(doc, 'ensemble', dict, where))
        except (TypeError, ValueError) as error:
            raise FormatError(f'{where}.ensemble: {error}') from None
        angle_pairs = []
        for index, pair in enumerate(angle_pairs_doc):
            if (
                not isinstance(pair, list)
                or len(pair) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair)
            ):
                raise FormatError(f'{where}.angle_pairs[{index}]: expected [cos index, sin index]')
            angle_pairs.append((pair[0], pair[1]))
        limits = {}
        saturation_doc = doc.get('saturation') or {}
        if not isinstance(saturation_doc, dict):
            raise FormatError(f'{where}.saturation: expected an object')
        saturation = {
            name: tuple(as_float_array(value, (2,), f'{where}.saturation.{name}'))
            for name, value in saturation_doc.items()
        }
        for key in ('action_low', 'action_high'):
            value = doc.get(key)
            limits[key] = None if value is None else as_float_array(value, (m,), f'{where}.{key}')
        try:
            model = cls(
                observation_names,
                action_names,
                dt,
                angle_pairs=angle_pairs,
                library=library,
                ensemble=ensemble,
                action_low=limits['action_low'],
                action_high=limits['action_high'],
                saturation=saturation,
            )
        except ValueError as error:
            raise FormatError(f'{where}: {error}') from None
        terms = _terms_from_doc(require(doc, 'terms', list, where), n + m, where)
        if terms != model.terms:
            raise FormatError(
                f'{where}.terms: stored library terms do not match the library configuration '
                f'({len(terms)} stored, {len(model.terms)} from the configuration)'
            )
        n_terms = len(terms)
        model.coefficients = as_float_array(
            require(doc, 'coefficients', list, where), (n, n_terms), f'{where}.coefficients'
        )
        members = require(doc, 'member_coefficients', list, where)
        if members:
            model.member_coefficients = as_float_array(
                members, (None, n, n_terms), f'{where}.member_coefficients'
            )
        scale = as_float_array(
            require(doc, 'observation_scale', list, where), (n,), f'{where}.observation_scale'
        )
        if np.any(scale <= 0):
            raise FormatError(f'{where}.observation_scale: values must be positive')
        model.observation_scale = scale
        model.model_version = require(doc, 'model_version', int, where)
        validation = doc.get('validation')
        if validation is not None and not isinstance(validation, dict):
            raise FormatError(f'{where}.validation: expected an object or null')
        model.validation = validation
        fit_info = doc.get('fit_info', {})
        model.fit_info = fit_info if isinstance(fit_info, dict) else {}
        model._prepare_evaluation()
        return model

    def save(self, path: str | Path) -> None:
        """Write the model card as JSON (atomic replace)."""
        save_json_document(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> SindyDynamics:
        """Read and validate a model saved by :meth:`save`.

        Raises
        ------
        FormatError
            With the file path and the faulty field.
        """
        doc = load_json_document(path, MODEL_FORMAT, {MODEL_VERSION})
        return cls.from_dict(doc, where=str(path))


def _limits(values: Sequence[float], m: int, what: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if array.size == 1 and m > 1:
        array = np.full(m, array[0])
    if array.shape != (m,) or not np.all(np.isfinite(array)):
        raise ValueError(f'{what} must be {m} finite values, got {values!r}')
    return array


def _names(values: list, where: str, key: str) -> list[str]:
    if not values or not all(isinstance(v, str) and v for v in values):
        raise FormatError(f'{where}.{key}: expected a non-empty list of non-empty strings')
    return values


def _terms_from_doc(values: list, n_inputs: int, where: str) -> list[Term]:
    terms = []
    for index, entry in enumerate(values):
        at = f'{where}.terms[{index}]'
        powers = require(entry, 'powers', list, at)
        if len(powers) != n_inputs or not all(
            isinstance(p, int) and not isinstance(p, bool) and p >= 0 for p in powers
        ):
            raise FormatError(f'{at}.powers: expected {n_inputs} non-negative integers')
        trig = entry.get('trig')
        if trig is not None:
            if (
                not isinstance(trig, list)
                or len(trig) != 3
                or not isinstance(trig[0], int)
                or not 0 <= trig[0] < n_inputs
                or not isinstance(trig[1], int)
                or trig[1] < 1
                or trig[2] not in ('sin', 'cos')
            ):
                raise FormatError(f"{at}.trig: expected [input index, frequency, 'sin'|'cos']")
            trig = (trig[0], trig[1], trig[2])
        terms.append(Term(tuple(powers), trig))
    return terms
