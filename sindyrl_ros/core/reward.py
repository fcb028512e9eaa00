"""Vectorised rewards for surrogate training.

Every reward has the signature ``fn(observations, actions, next_observations) -> (N,)``
with observations (N, n) and actions (N, m), so a surrogate can score a whole batch
of environments in one call.

* :func:`pendulum_reward` and :func:`cartpole_swingup_reward` reproduce the
  benchmark rewards (gymnasium Pendulum-v1, dm_control cartpole swing-up) exactly,
  so policies trained on the surrogate are scored like on the real task.
* :func:`~sindyrl_ros.core.reward_expression.expression_reward` builds a reward from a text
  expression of observation and action names (for a robot configured from a YAML file),
  parsed with ``ast`` against a whitelist: it never evaluates arbitrary code.
* :class:`SparseRewardModel` learns a sparse polynomial reward from recorded rewards,
  for plants whose reward cannot be computed from the observation directly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
import warnings

import numpy as np

from sindyrl_ros.core.library import FeatureEvaluator, LibraryConfig, build_terms, format_term
from sindyrl_ros.core.serialization import (
    FormatError,
    as_float_array,
    check_document,
    load_json_document,
    require,
    save_json_document,
)
from sindyrl_ros.core.trajectories import Trajectory

__all__ = [
    'LEARNED_REWARD',
    'REWARDS',
    'REWARD_FORMAT',
    'RewardFunction',
    'SparseRewardModel',
    'cartpole_swingup_reward',
    'get_reward',
    'pendulum_reward',
    'tolerance',
]

RewardFunction = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
# A task whose reward is this word learns it: the plant reports rewards, the model updater
# fits a SparseRewardModel with every model, the policy trainer trains on it.
LEARNED_REWARD = 'learned'
REWARD_FORMAT = 'sindyrl_ros/reward'
REWARD_VERSION = 1


# ---------------------------------------------------------------------- benchmark rewards
def pendulum_reward(
    observations: np.ndarray, actions: np.ndarray, next_observations: np.ndarray
) -> np.ndarray:
    """Reward of gymnasium Pendulum-v1, from its observation (cos θ, sin θ, θ̇).

    ``-(θ² + 0.1 θ̇² + 0.001 u²)`` with θ in [-π, π] taken from the observation
    *before* the step and u clipped to [-2, 2], exactly as gymnasium computes it.

    Parameters
    ----------
    observations : numpy.ndarray, shape (N, 3)
        (cos θ, sin θ, θ̇) before the step.
    actions : numpy.ndarray, shape (N, 1)
        Torque.
    next_observations : numpy.ndarray, shape (N, 3)
        Unused (the gymnasium cost is on the state before the step).

    Returns
    -------
    numpy.ndarray, shape (N,)
    """
    observations = np.asarray(observations, dtype=np.float64)
    theta = np.arctan2(observations[:, 1], observations[:, 0])
    theta_dot = observations[:, 2]
    torque = np.clip(np.asarray(actions, dtype=np.float64)[:, 0], -2.0, 2.0)
    return -(theta**2 + 0.1 * theta_dot**2 + 0.001 * torque**2)


def tolerance(
    x: np.ndarray,
    margin: float,
    sigmoid: str = 'gaussian',
    value_at_margin: float = 0.1,
) -> np.ndarray:
    """dm_control's soft indicator of ``x == 0`` (``rewards.tolerance`` with bounds (0, 0)).

    1 at zero, falling to ``value_at_margin`` at ``|x| = margin``. Only the
    ``'gaussian'`` and ``'quadratic'`` shapes used by the cartpole reward are
    implemented.
    """
    distance = np.abs(x) / margin
    if sigmoid == 'gaussian':
        scale = np.sqrt(-2.0 * np.log(value_at_margin))
        value = np.exp(-0.5 * (distance * scale) ** 2)
    elif sigmoid == 'quadratic':
        scaled = distance * np.sqrt(1.0 - value_at_margin)
        value = np.where(np.abs(scaled) < 1.0, 1.0 - scaled**2, 0.0)
    else:
        raise ValueError(f'unsupported sigmoid {sigmoid!r}')
    return np.where(x == 0.0, 1.0, value)


def cartpole_swingup_reward(
    observations: np.ndarray, actions: np.ndarray, next_observations: np.ndarray
) -> np.ndarray:
    """Smooth reward of dm_control ``cartpole/swingup``.

    upright · centered · small_control · small_velocity, computed like dm_control
    on the state *after* the step and the applied action:
    upright = (cos + 1)/2, centered = (1 + tol(x, 2))/2,
    small_control = (4 + tol_quadratic(u, 1, 0))/5, small_velocity = (1 + tol(θ̇, 5))/2.

    Parameters
    ----------
    observations : numpy.ndarray, shape (N, 5)
        Unused.
    actions : numpy.ndarray, shape (N, 1)
        Force command in [-1, 1].
    next_observations : numpy.ndarray, shape (N, 5)
        (x, cos θ, sin θ, ẋ, θ̇) after the step.

    Returns
    -------
    numpy.ndarray, shape (N,)
    """
    next_observations = np.asarray(next_observations, dtype=np.float64)
    cart = next_observations[:, 0]
    cosine = next_observations[:, 1]
    angular_velocity = next_observations[:, 4]
    control = np.asarray(actions, dtype=np.float64)[:, 0]
    upright = (cosine + 1.0) / 2.0
    centered = (1.0 + tolerance(cart, margin=2.0)) / 2.0
    small_control = (
        4.0 + tolerance(control, margin=1.0, sigmoid='quadratic', value_at_margin=0.0)
    ) / 5.0
    small_velocity = (1.0 + tolerance(angular_velocity, margin=5.0)) / 2.0
    return upright * small_control * small_velocity * centered


REWARDS: dict[str, RewardFunction] = {
    'pendulum': pendulum_reward,
    'cartpole_swingup': cartpole_swingup_reward,
}


def get_reward(name: str) -> RewardFunction:
    """Look up a named reward, with a helpful error for unknown names."""
    try:
        return REWARDS[name]
    except KeyError:
        raise ValueError(f'unknown reward {name!r}; known: {sorted(REWARDS)}') from None


# ---------------------------------------------------------------------- learned reward
class SparseRewardModel:
    """Sparse polynomial reward r ≈ Θ(x, u) ξ learned from recorded rewards.

    Fitted with pysindy's STLSQ (sequentially thresholded ridge least squares, then
    unbiased) on columns scaled to unit RMS, so ``threshold`` is relative: a term is
    dropped when its contribution is below ``threshold`` × the standard deviation of
    the reward.

    Parameters
    ----------
    observation_names, action_names : sequence of str
    library : LibraryConfig, optional
        Candidate terms (default: degree 2, all (x, u) products).
    angle_pairs : sequence of (int, int)
        (cos, sin) observation indices, for the library's circle reduction.
    threshold : float
        Relative STLSQ threshold.
    alpha : float
        Ridge regularisation (relative to the scaled columns).
    observation : {'current', 'next'}
        Whether the features use the observation before the step or after it.
    """

    def __init__(
        self,
        observation_names: Sequence[str],
        action_names: Sequence[str],
        library: LibraryConfig | None = None,
        angle_pairs: Sequence[tuple[int, int]] = (),
        threshold: float = 0.01,
        alpha: float = 1e-6,
        observation: str = 'current',
        max_iter: int = 20,
    ) -> None:
        if observation not in ('next', 'current'):
            raise ValueError(f"observation must be 'next' or 'current', got {observation!r}")
        if int(max_iter) < 1:
            raise ValueError(f'max_iter must be at least 1, got {max_iter}')
        self.observation_names = [str(n) for n in observation_names]
        self.action_names = [str(n) for n in action_names]
        self.library = library if library is not None else LibraryConfig(degree=2, control='full')
        self.angle_pairs = [(int(c), int(s)) for c, s in angle_pairs]
        self.threshold = float(threshold)
        self.alpha = float(alpha)
        self.observation = observation
        self.max_iter = int(max_iter)
        self.terms = build_terms(
            self.library, self.observation_names, self.action_names, self.angle_pairs
        )
        self.coefficients = np.zeros(len(self.terms))
        self.fit_info: dict[str, Any] = {}
        self._prepare()

    def _prepare(self) -> None:
        active = np.flatnonzero(self.coefficients)
        n_inputs = len(self.observation_names) + len(self.action_names)
        self._active = active
        self._evaluator = FeatureEvaluator(self.terms, active, n_inputs)
        self._rows = self._evaluator.expand_coefficients(self.coefficients[None, :], active)[0]

    def _inputs(
        self, observations: np.ndarray, actions: np.ndarray, next_observations: np.ndarray
    ) -> np.ndarray:
        source = next_observations if self.observation == 'next' else observations
        return np.hstack(
            [np.asarray(source, dtype=np.float64), np.asarray(actions, dtype=np.float64)]
        )

    def fit(self, trajectories: Sequence[Trajectory]) -> SparseRewardModel:
        """Fit on trajectories that carry rewards.

        Parameters
        ----------
        trajectories : sequence of Trajectory
            With ``rewards`` (T,) set.
        """
        import pysindy as ps  # here: the nodes that only read LEARNED_REWARD stay light
        from sklearn.exceptions import ConvergenceWarning
        from threadpoolctl import threadpool_limits

        usable = [t for t in trajectories if t.rewards is not None and t.n_steps > 0]
        if not usable:
            raise ValueError('no trajectory with rewards to fit on')
        inputs = np.vstack(
            [self._inputs(t.observations[:-1], t.actions, t.observations[1:]) for t in usable]
        )
        rewards = np.concatenate([t.rewards for t in usable])
        finite = np.all(np.isfinite(inputs), axis=1) & np.isfinite(rewards)
        inputs, rewards = inputs[finite], rewards[finite]
        everything = FeatureEvaluator(self.terms, range(len(self.terms)), inputs.shape[1])
        rows = everything.evaluate(inputs)
        theta = rows[everything.term_rows].T.copy()  # (N, n_terms)
        scale = np.sqrt(np.mean(theta**2, axis=0))
        scale = np.where(scale > 1e-12, scale, 1.0)
        reward_scale = max(float(np.std(rewards)), 1e-12)
        # pysindy's ridge term is alpha |ξ|² next to a sum (not a mean) of squared errors, so
        # alpha * N keeps ``alpha`` relative to the unit-RMS columns.  unbias refits the kept
        # terms by plain least squares: the ridge only steers the selection.
        optimizer = ps.STLSQ(
            threshold=self.threshold * reward_scale,
            alpha=self.alpha * len(rewards),
            max_iter=self.max_iter,
            unbias=True,
        )
        # Single-threaded BLAS: the regressions are small and OpenBLAS threads spin against
        # other processes on a loaded machine.  A threshold that drops every term and a
        # selection still changing after max_iter both leave a usable fit: no warning.
        with warnings.catch_warnings(), threadpool_limits(limits=1, user_api='blas'):
            warnings.filterwarnings('ignore', 'Sparsity parameter is too big', UserWarning)
            warnings.filterwarnings('ignore', category=ConvergenceWarning)
            optimizer.fit(theta / scale, rewards)
        self.coefficients = optimizer.coef_[0] / scale
        residual = theta @ self.coefficients - rewards
        self.fit_info = {
            'n_samples': int(len(rewards)),
            'rmse': float(np.sqrt(np.mean(residual**2))),
            'reward_std': float(np.std(rewards)),
        }
        self._prepare()
        return self

    def __call__(
        self, observations: np.ndarray, actions: np.ndarray, next_observations: np.ndarray
    ) -> np.ndarray:
        """Predicted reward, shape (N,)."""
        rows = self._evaluator.evaluate(self._inputs(observations, actions, next_observations))
        return self._rows @ rows

    @property
    def n_nonzero(self) -> int:
        """Number of terms in the learned reward."""
        return int(np.count_nonzero(self.coefficients))

    def equation(self, precision: int = 4) -> str:
        """The learned reward as text, e.g. ``'r = -1.0 + 0.95 cos - 0.1 thdot^2'``."""
        names = self.observation_names + self.action_names
        parts = []
        for coefficient, term in zip(self.coefficients, self.terms):
            if coefficient == 0:
                continue
            text = format_term(term, names, '')
            body = f'{abs(coefficient):.{precision}g}' + ('' if text == '1' else f' {text}')
            sign = '-' if coefficient < 0 else '+'
            parts.append(f'{sign} {body}' if parts else (f'-{body}' if coefficient < 0 else body))
        return 'r = ' + (' '.join(parts) if parts else '0')

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready document (format ``'sindyrl_ros/reward'``, version 1)."""
        return {
            'format': REWARD_FORMAT,
            'version': REWARD_VERSION,
            'observation_names': list(self.observation_names),
            'action_names': list(self.action_names),
            'library': self.library.to_dict(),
            'angle_pairs': [list(p) for p in self.angle_pairs],
            'threshold': self.threshold,
            'alpha': self.alpha,
            'observation': self.observation,
            'feature_names': [
                format_term(t, self.observation_names + self.action_names, '') for t in self.terms
            ],
            'coefficients': self.coefficients.tolist(),
            'equation': self.equation(),
            'fit_info': dict(self.fit_info),
        }

    @classmethod
    def from_dict(cls, doc: dict[str, Any], where: str = 'reward') -> SparseRewardModel:
        """Rebuild from :meth:`to_dict` output; raises :class:`FormatError` on bad fields."""
        check_document(doc, REWARD_FORMAT, {REWARD_VERSION}, where)
        observation_names = require(doc, 'observation_names', list, where)
        action_names = require(doc, 'action_names', list, where)
        for key, names in (
            ('observation_names', observation_names),
            ('action_names', action_names),
        ):
            if not all(isinstance(n, str) and n for n in names):
                raise FormatError(f'{where}.{key}: expected a list of non-empty strings')
        angle_pairs = require(doc, 'angle_pairs', list, where)
        try:
            library = LibraryConfig.from_dict(require(doc, 'library', dict, where))
            model = cls(
                observation_names,
                action_names,
                library=library,
                angle_pairs=[tuple(p) for p in angle_pairs],
                threshold=require(doc, 'threshold', float, where),
                alpha=require(doc, 'alpha', float, where),
                observation=require(doc, 'observation', str, where),
            )
        except (TypeError, ValueError) as error:
            if isinstance(error, FormatError):
                raise
            raise FormatError(f'{where}: {error}') from None
        model.coefficients = as_float_array(
            require(doc, 'coefficients', list, where), (len(model.terms),), f'{where}.coefficients'
        )
        fit_info = doc.get('fit_info', {})
        model.fit_info = fit_info if isinstance(fit_info, dict) else {}
        model._prepare()
        return model

    def save(self, path: str | Path) -> None:
        """Write as JSON (atomic replace)."""
        save_json_document(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> SparseRewardModel:
        """Read and validate a saved reward model."""
        return cls.from_dict(
            load_json_document(path, REWARD_FORMAT, {REWARD_VERSION}), where=str(path)
        )
