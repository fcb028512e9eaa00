"""E-SINDy dynamics model with control: x[k+1] = Θ(x[k], u[k]) Ξ.

Fitted with pysindy 2.1 (``DiscreteSINDy`` + ``EnsembleOptimizer`` around
``STLSQ``, bagging and library ensembling, median or mean coefficients: see
:mod:`sindyrl_ros.core.dynamics_fit`), then run with its own batched numpy
evaluation (:class:`~sindyrl_ros.core.library.FeatureEvaluator`)
because pysindy's ``predict`` costs milliseconds per call and the surrogate
environment needs hundreds of thousands of steps per second.

The ensemble members are kept: the surrogate can draw one member per episode
(model uncertainty as domain randomisation), and their spread
(:meth:`SindyDynamics.disagreement`) says where the model is extrapolating.

Angles observed as (cos θ, sin θ) are projected back onto the unit circle after
every predicted step; without it, multi-step rollouts of polynomial models drift
off the circle and blow up.

Multi-step validation is :mod:`sindyrl_ros.core.dynamics_validation`; the JSON model card
a model is saved and sent as is :mod:`sindyrl_ros.core.model_card`.
"""

from __future__ import annotations

from collections.abc import Sequence
import math
from pathlib import Path
from typing import Any

import numpy as np

from sindyrl_ros.core.dynamics_fit import EnsembleConfig, fit_ensemble
from sindyrl_ros.core.dynamics_validation import rollout_error
from sindyrl_ros.core.library import (
    FeatureEvaluator,
    LibraryConfig,
    Term,
    build_terms,
    format_term,
)
from sindyrl_ros.core.model_card import (
    MODEL_FORMAT,
    MODEL_VERSION,
    model_from_dict,
    model_to_dict,
)
from sindyrl_ros.core.serialization import load_json_document, save_json_document
from sindyrl_ros.core.trajectories import Trajectory

__all__ = ['SindyDynamics']


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
        fitted = fit_ensemble(self, trajectories)
        self.pysindy_model = fitted.pysindy_model
        self.coefficients = fitted.coefficients
        self.member_coefficients = fitted.member_coefficients
        self.observation_scale = fitted.observation_scale
        self.model_version += 1
        self.validation = None
        self.fit_info = fitted.fit_info
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
        """Multi-step rollout error on (held-out) trajectories, kept as ``validation``.

        Windows of ``horizon`` steps are simulated with the recorded actions and compared
        with the recorded observations; the arguments and the metrics (``nrmse``,
        ``final_nrmse``, ``diverged``...) are those of
        :func:`~sindyrl_ros.core.dynamics_validation.rollout_error`. They are saved with
        the model.
        """
        self.validation = rollout_error(self, trajectories, horizon, stride, divergence_factor)
        return self.validation

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
        return model_to_dict(self)

    @classmethod
    def from_dict(cls, doc: dict[str, Any], where: str = 'model') -> SindyDynamics:
        """Rebuild a model from :meth:`to_dict` output, validating every field.

        Raises
        ------
        FormatError
            Naming the field that is missing, mistyped, non-finite or of the wrong
            shape.
        """
        return model_from_dict(cls, doc, where)

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
