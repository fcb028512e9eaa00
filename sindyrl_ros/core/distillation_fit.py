"""The censored ensemble STLSQ fit of distillation: candidate sparse polynomial students.

:func:`fit_candidates` fits, on fixed states, one candidate per degree and threshold of a
:class:`~sindyrl_ros.core.distillation.DistillationSettings`; choosing among them (by
imitation error or by return, with DAgger rounds) is :mod:`sindyrl_ros.core.distillation`.

The fit is hand-written because pysindy fits its targets by least squares and has no
censored (clipped-output) fit: a teacher action at its limit must only bound the
polynomial, not pull it onto the limit.
"""

from __future__ import annotations

from collections.abc import Sequence
import contextlib
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from sindyrl_ros.core.policies import monomials, polynomial_powers

if TYPE_CHECKING:
    from sindyrl_ros.core.distillation import DistillationSettings

__all__ = ['Candidate', 'fit_candidates']


def _single_threaded_blas() -> contextlib.AbstractContextManager:
    """Limit BLAS to one thread: the many small (K, K) products of the ensemble fit run
    ~10x slower with a multithreaded BLAS on a busy few-core robot computer."""
    try:
        from threadpoolctl import threadpool_limits  # installed with scikit-learn/pysindy
    except ImportError:  # pragma: no cover - optional
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api='blas')


def _stlsq_normal_equations(
    gram: np.ndarray, moment: np.ndarray, threshold: float, ridge: float, max_iterations: int
) -> np.ndarray:
    """Sequentially thresholded ridge least squares from the normal equations.

    ``gram`` (K, K) and ``moment`` (K,) are sample means of ``Θᵀ Θ`` and ``Θᵀ y`` with
    normalised features, so one Gram matrix per bootstrap sample serves every threshold.
    """
    n_features = gram.shape[0]
    active = np.ones(n_features, dtype=bool)
    coefficients = np.zeros(n_features)
    for _ in range(max_iterations):
        indices = np.flatnonzero(active)
        coefficients[:] = 0.0
        if indices.size == 0:
            break
        sub_gram = gram[np.ix_(indices, indices)] + ridge * np.eye(indices.size)
        coefficients[indices] = np.linalg.solve(sub_gram, moment[indices])
        keep = np.abs(coefficients) >= threshold
        if np.array_equal(keep, active):
            break
        active = keep
    coefficients[~active] = 0.0
    return coefficients


class Candidate:
    """One fitted sparse polynomial (a degree and a threshold) and how well it does."""

    def __init__(
        self,
        degree: int,
        threshold: float,
        powers: np.ndarray,
        coefficients: np.ndarray,
        error: float,
        n_observations: int,
    ) -> None:
        self.degree = int(degree)
        self.threshold = float(threshold)
        self.powers = powers  # (K, n) int
        self.coefficients = coefficients  # (K, m) in action units
        self.n_nonzero = int(np.count_nonzero(coefficients))
        self.error = float(error)  # validation RMS error, normalised action units
        self.n_observations = int(n_observations)
        self.surrogate_return = math.nan  # mean return once scored
        self.shortfall = math.nan  # mean of max(teacher's return - own return, 0)
        self.returns: np.ndarray | None = None  # (episodes,) returns once scored
        self.round = 0  # DAgger round whose states it was fitted on

    def summary(self) -> dict:
        entry = {
            'degree': self.degree,
            'threshold': self.threshold,
            'n_nonzero': self.n_nonzero,
            'validation_rms_error': self.error,
        }
        if math.isfinite(self.surrogate_return):
            entry['surrogate_return'] = self.surrogate_return
            entry['shortfall'] = self.shortfall
        return entry


def _teacher_actions(teacher: Any, observations: np.ndarray) -> np.ndarray:
    """Teacher actions (N, m) for states (N, n)."""
    if hasattr(teacher, 'act_batch'):
        actions = np.asarray(teacher.act_batch(observations), dtype=np.float64)
    else:
        actions = np.array([np.array(teacher(x), dtype=np.float64) for x in observations])
    return actions.reshape(len(observations), -1)


def _library(n: int, degree: int, angle_pairs: Sequence[tuple[int, int]]) -> np.ndarray:
    """Monomials (K, n) of the student: all up to ``degree`` but those with cos θ squared."""
    powers = polynomial_powers(n, degree)
    for cos_index, _ in angle_pairs:
        # cos² = 1 - sin² on the unit circle: monomials with cos² duplicate others there,
        # which would spread one term over several collinear ones.
        powers = powers[powers[:, cos_index] < 2]
    return powers


def fit_candidates(
    teacher: Any,
    observations: np.ndarray,
    settings: DistillationSettings,
    sample_weights: np.ndarray | None = None,
) -> list[Candidate]:
    """Censored ensemble-STLSQ fits for every degree and threshold, on fixed states.

    ``sample_weights`` (N,) multiply each state's weight in the least-squares fits.
    """
    low = np.asarray(teacher.action_low, dtype=np.float64)
    high = np.asarray(teacher.action_high, dtype=np.float64)
    center, half_range = 0.5 * (high + low), 0.5 * (high - low)
    actions = _teacher_actions(teacher, observations)
    normalised = np.clip((actions - center) / half_range, -1.0, 1.0)

    rng = np.random.default_rng(settings.seed)
    N = len(observations)
    order = rng.permutation(N)
    n_validation = int(round(settings.validation_fraction * N)) if N >= 50 else 0
    validation, training = order[:n_validation], order[n_validation:]
    if n_validation == 0:
        validation = training
    n_train = len(training)
    # Bagging as multinomial sample weights, so each bootstrap model is a weighted
    # least-squares problem solved from its (K, K) normal equations.
    if settings.n_models <= 1:
        weights = np.ones((1, n_train))
    else:
        draws = [rng.integers(0, n_train, n_train) for _ in range(settings.n_models)]
        weights = np.stack([np.bincount(d, minlength=n_train) for d in draws]).astype(float)
    if sample_weights is not None:
        weights = weights * np.asarray(sample_weights, dtype=np.float64)[training]

    # The library of the highest degree holds every lower one as its first columns
    # (monomials are ordered by degree), so its features serve every degree.
    all_powers = _library(observations.shape[1], max(settings.degrees), settings.angle_pairs)
    all_features = monomials(observations, all_powers)
    all_scale = np.sqrt(np.mean(all_features[training] ** 2, axis=0))
    all_scale[all_scale < 1e-12] = 1.0  # a feature that is zero on the data stays unused
    all_features /= all_scale
    total_degree = all_powers.sum(axis=1)

    candidates = []
    with _single_threaded_blas():
        for degree in settings.degrees:
            n_features = int(np.count_nonzero(total_degree <= degree))
            features = all_features[:, :n_features]
            scale = all_scale[:n_features]
            fits = _censored_fits(features[training], normalised[training], weights, settings)
            for threshold, coefficients in zip(settings.thresholds, fits, strict=True):
                prediction = np.clip(features[validation] @ coefficients, -1.0, 1.0)
                error = float(np.sqrt(np.mean((prediction - normalised[validation]) ** 2)))
                # Back to raw monomials and action units: a = center + half_range * (Θ/scale) ξ;
                # powers[0] is the constant monomial, which absorbs the centre of the limits.
                action_coefficients = coefficients / scale[:, None] * half_range[None, :]
                action_coefficients[0] += center
                candidates.append(
                    Candidate(
                        degree, threshold, all_powers[:n_features], action_coefficients, error, N
                    )
                )
    return candidates


def _censored_fits(
    features: np.ndarray,
    normalised: np.ndarray,
    weights: np.ndarray,
    settings: DistillationSettings,
) -> list[np.ndarray]:
    """Censored fit per action and threshold: saturated samples only bound the polynomial.

    Parameters
    ----------
    features : ndarray, shape (N, K)
        Unit-RMS monomials of the training states.
    normalised : ndarray, shape (N, m)
        Teacher actions scaled to [-1, 1].
    weights : ndarray, shape (B, N)
        Bootstrap sample weights, one row per ensemble member.

    Returns
    -------
    list of ndarray, shape (K, m)
        Normalised coefficients, one per threshold.
    """
    n_train, n_features = features.shape
    m = normalised.shape[1]
    thresholds, saturation = settings.thresholds, settings.saturation
    results = [np.zeros((n_features, m)) for _ in thresholds]
    for j in range(m):
        target = normalised[:, j].copy()
        at_high = target >= saturation
        at_low = target <= -saturation
        target[at_high], target[at_low] = 1.0, -1.0
        unsaturated = ~(at_high | at_low)
        if unsaturated.sum() < n_features:
            unsaturated[:] = True  # too few unsaturated samples: plain clipped fit
        # Normal equations of the unsaturated samples, once per member; the saturated
        # samples that an active-set round adds are few and added on top.
        rows = np.flatnonzero(unsaturated)
        base_features = features[rows]
        base = []
        for w in weights[:, rows]:
            weighted = base_features * w[:, None]
            base.append(
                (weighted.T @ base_features / n_train, weighted.T @ target[rows] / n_train)
            )
        for index, threshold in enumerate(thresholds):
            extra = np.zeros(0, dtype=np.intp)
            best_error = math.inf
            for _ in range(max(1, settings.censor_iterations)):
                extra_features = features[extra]
                members = []
                for (gram, moment), w in zip(base, weights[:, extra], strict=True):
                    if extra.size:
                        weighted = extra_features * w[:, None]
                        gram = gram + weighted.T @ extra_features / n_train
                        moment = moment + weighted.T @ target[extra] / n_train
                    members.append(
                        _stlsq_normal_equations(
                            gram, moment, float(threshold), settings.ridge, settings.max_iterations
                        )
                    )
                candidate = np.median(np.stack(members), axis=0)
                prediction = features @ candidate
                # Keep the round whose clipped output is closest to the teacher (the
                # active set can cycle instead of converging).
                error = np.mean((np.clip(prediction, -1.0, 1.0) - normalised[:, j]) ** 2)
                if error < best_error:
                    best_error = error
                    results[index][:, j] = candidate
                # Active set of the squared-hinge problem: a saturated sample counts
                # (target = its limit) exactly where the polynomial is inside the limit.
                violated = (at_high & (prediction < 1.0)) | (at_low & (prediction > -1.0))
                new_extra = np.flatnonzero(violated & ~unsaturated)
                if np.array_equal(new_extra, extra):
                    break
                extra = new_extra
    return results
