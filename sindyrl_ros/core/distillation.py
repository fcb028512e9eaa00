"""Distillation: a sparse polynomial policy fitted to a teacher's actions.

The teacher (usually the SAC network) is queried on states: recorded ones, surrogate ones and,
with DAgger, those the student's own rollouts visit.  The student is a
:class:`~sindyrl_ros.core.policies.SparsePolynomialPolicy`, ``clip(Θ(observation) ξ)``, which
the controller evaluates with numpy alone.

This module searches and selects: it runs the DAgger rounds and keeps one candidate, by
imitation error or by return on the environment.  The censored ensemble STLSQ that fits the
candidates is :mod:`sindyrl_ros.core.distillation_fit`; the rollouts are
:mod:`sindyrl_ros.core.policy_rollouts`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
import math
from typing import Any

import numpy as np

from sindyrl_ros.core.distillation_fit import Candidate, fit_candidates
from sindyrl_ros.core.policies import MAX_POLYNOMIAL_POWER, NumpyPolicy, SparsePolynomialPolicy
from sindyrl_ros.core.policy_rollouts import episode_returns, episode_states, visited_states

__all__ = ['DistillationSettings', 'distill_sparse_policy']

# Weight of the states of the episodes where the student does worst (see _distill_by_return).
_FOCUS_WEIGHT = 4.0

# DAgger rollouts of a large batched environment are thinned to this many states per round:
# the fit's cost grows with the number of states, and consecutive states add little.
_MAX_DAGGER_STATES_PER_ROUND = 16384


@dataclass(frozen=True)
class DistillationSettings:
    """How the student is fitted and which of its candidates is kept.

    Sequences are stored as tuples (``degrees`` sorted, without repeats).

    Attributes
    ----------
    degrees : sequence of int
        Maximum total degrees of the monomials (bias included) to try, one library each.
    thresholds : sequence of float
        STLSQ thresholds to search, in normalised-action units.
    n_models : int
        Bootstrap models of the ensemble (1 = plain STLSQ on all samples).
    seed : int
        Seed of the bootstrap, of the validation split and of the environment episodes.
    error_tolerance : float
        Accepted increase of validation RMS error over the best candidate, for sparsity
        (selection by imitation error).
    ridge : float
        Ridge regularisation (relative to unit-RMS features); keeps collinear libraries
        (cos² + sin² = 1) solvable.
    censor_iterations : int
        Maximum active-set rounds (saturated samples counted where the polynomial falls
        inside the limit).
    validation_fraction : float
        Fraction of the states held out to score the thresholds (none when N < 50).
    max_iterations : int
        STLSQ iterations per fit.
    angle_pairs : sequence of (int, int)
        (cos θ, sin θ) observation index pairs; monomials with cos θ squared or higher are
        left out of the library, since on the unit circle they repeat other monomials.
    saturation : float
        A teacher action whose normalised magnitude is at least this is treated as at its
        limit (a tanh-squashed teacher only approaches its limits).
    dagger_rounds : int
        Rounds of student rollouts (used only with an environment).
    dagger_steps : int
        Batched steps per rollout, and the length of the evaluation episodes.
    return_tolerance : float, optional
        Select by return on the environment (see :func:`distill_sparse_policy`), e.g. 0.01
        for 1 %; None selects by imitation error.
    evaluation_episodes : int
        Episodes (rounded up to whole batches of the environment's ``n_envs``) over which
        each candidate and the teacher are scored, from the same start states.
    max_coefficients : int, optional
        Candidates with more nonzero coefficients are not chosen (unless none has fewer).
    """

    degrees: Sequence[int] = (3,)
    thresholds: Sequence[float] = (0.0, 0.005, 0.01, 0.02, 0.05, 0.1)
    n_models: int = 20
    seed: int = 0
    error_tolerance: float = 0.02
    ridge: float = 1e-8
    censor_iterations: int = 10
    validation_fraction: float = 0.2
    max_iterations: int = 20
    angle_pairs: Sequence[tuple[int, int]] = ()
    saturation: float = 0.95
    dagger_rounds: int = 3
    dagger_steps: int = 200
    return_tolerance: float | None = None
    evaluation_episodes: int = 512
    max_coefficients: int | None = None

    def __post_init__(self) -> None:
        degrees = tuple(sorted({int(d) for d in self.degrees}))
        object.__setattr__(self, 'degrees', degrees)
        object.__setattr__(self, 'thresholds', tuple(self.thresholds))
        object.__setattr__(self, 'angle_pairs', tuple(tuple(p) for p in self.angle_pairs))
        if not degrees or min(degrees) < 0:
            raise ValueError(f'degrees must be non-negative integers, got {degrees}')
        if max(degrees) > MAX_POLYNOMIAL_POWER:
            raise ValueError(f'degrees above {MAX_POLYNOMIAL_POWER} are not supported')
        if not self.thresholds:
            raise ValueError('thresholds must not be empty')
        if not 0.0 < self.saturation <= 1.0:
            raise ValueError(f'saturation must be in (0, 1], got {self.saturation}')
        if self.return_tolerance is not None and not self.return_tolerance >= 0.0:
            raise ValueError(f'return_tolerance must be >= 0, got {self.return_tolerance}')


def distill_sparse_policy(
    teacher: Callable[[np.ndarray], np.ndarray] | NumpyPolicy,
    observations: np.ndarray,
    settings: DistillationSettings | None = None,
    dagger_env: Any = None,
    metadata: dict | None = None,
) -> SparsePolynomialPolicy:
    """Fit a sparse polynomial policy to a teacher's actions (ensemble STLSQ, bagged, median).

    The teacher is queried on the given states (e.g. surrogate or recorded states).  Each
    action channel is normalised to [-1, 1] by the limits and fitted separately.  Because the
    student's output is ``clip(polynomial)``, samples where the teacher sits at a limit only
    require the polynomial to lie beyond that limit (censored regression, a squared hinge
    on those samples): the first fit uses the unsaturated samples; then, for a few
    active-set rounds, saturated samples where the polynomial falls inside the limit count
    with the limit as target.  Saturated regions thus don't bend the polynomial where the
    teacher is in its linear range.

    Sparsity: bagged STLSQ (``n_models`` bootstrap resamples, median coefficients) on features
    scaled to unit RMS, so a threshold is a contribution to the normalised action.  Every
    degree in ``degrees`` and threshold in ``thresholds`` is fitted; one of these candidates
    is kept:

    * by imitation error (default): the sparsest whose validation RMS error (normalised
      action units, after clipping) is within ``error_tolerance`` of the best one;
    * by return (``return_tolerance`` set, needs ``dagger_env``): over the candidates of
      every DAgger round, the sparsest whose *shortfall* to the teacher is at most
      ``return_tolerance`` times the teacher's mean return (the one with the smallest
      shortfall if none is).  The shortfall is the mean, over ``evaluation_episodes``
      episodes of ``dagger_env``, of how much less the student returns than the teacher
      from the same start state; doing better from some starts does not make up for
      doing worse from others (on a surrogate that is often a model error or a start
      the real plant never sees, and it would let a trivial policy through).  A small
      imitation error does not make a good controller: a swing-up policy is mostly
      saturated and its switching curves decide whether the pendulum comes up on this
      swing or the next, so the return on the surrogate is the criterion that matters.
      Each DAgger round then rolls out that round's choice and also adds, with a larger
      weight, the student's and the teacher's states of the 5 % of episodes where the
      student falls furthest behind: those few states decide the lost episodes, and a
      uniform share of the data leaves them to chance.

    Parameters
    ----------
    teacher : NumpyPolicy or callable
        Policy to imitate; ``act_batch`` is used when present.  It must have
        ``observation_names``, ``action_names``, ``action_low`` and ``action_high``.
    observations : ndarray, shape (N, n)
        States where the student must agree with the teacher.
    settings : DistillationSettings, optional
        Library, thresholds, ensemble, DAgger and selection (defaults when None).
    dagger_env : SurrogateVecEnv-like, optional
        Batched environment (``reset``/``step``/``reset_done``, e.g. the surrogate;
        ``n_envs`` too, and ``reset(seed)`` drawing the same start states for the same
        seed, to select by return).  With it, each of ``settings.dagger_rounds`` rounds rolls
        the current student out for ``settings.dagger_steps`` steps, labels the states it
        visits with the teacher and refits (DAgger): the student is then also right on the
        states its own errors lead to, not only on the teacher's.
    metadata : dict, optional
        Added to the policy's metadata (distillation metrics are added too).

    Returns
    -------
    SparsePolynomialPolicy
        With ``metadata['distillation']`` holding the chosen degree and threshold, the number
        of nonzero coefficients, the validation RMS error, the candidates tried and, when
        selecting by return, the teacher's and the student's returns.
    """
    settings = DistillationSettings() if settings is None else settings
    if settings.return_tolerance is not None and dagger_env is None:
        raise ValueError('selecting by return (return_tolerance) needs dagger_env')
    observations = _check_observations(teacher, observations)
    if settings.return_tolerance is not None:
        return _distill_by_return(teacher, observations, dagger_env, settings, metadata)
    student = _distill_by_error(teacher, observations, settings, metadata)
    if dagger_env is None or settings.dagger_rounds <= 0:
        return student
    errors = [student.metadata['distillation']['validation_rms_error']]
    for round_index in range(settings.dagger_rounds):
        seed = settings.seed + 7919 * round_index
        visited = visited_states(
            student, dagger_env, settings.dagger_steps, seed, _MAX_DAGGER_STATES_PER_ROUND
        )
        observations = np.concatenate([observations, visited])
        student = _distill_by_error(teacher, observations, settings, metadata)
        errors.append(student.metadata['distillation']['validation_rms_error'])
    student.metadata['distillation']['dagger_rounds'] = int(settings.dagger_rounds)
    student.metadata['distillation']['dagger_validation_rms_errors'] = errors
    return student


def _check_observations(teacher: Any, observations: Any) -> np.ndarray:
    observations = np.asarray(observations, dtype=np.float64)
    if observations.ndim != 2 or len(observations) < 2:
        raise ValueError(f'observations must have shape (N >= 2, n), got {observations.shape}')
    if not np.all(np.isfinite(observations)):
        raise ValueError('observations contain non-finite values')
    names = getattr(teacher, 'observation_names', None)
    if names is None:
        raise ValueError('teacher must have observation_names, action_names and action limits')
    if len(names) != observations.shape[1]:
        raise ValueError(f'teacher expects {len(names)} observation features')
    return observations


def _student(
    teacher: Any, candidate: Candidate, summary: dict, metadata: dict | None
) -> SparsePolynomialPolicy:
    """The policy of a candidate, with the teacher's metadata and the distillation summary."""
    merged = dict(getattr(teacher, 'metadata', {}) or {})
    merged.update(metadata or {})
    merged['distillation'] = summary
    merged['teacher_kind'] = getattr(teacher, 'kind', type(teacher).__name__)
    return SparsePolynomialPolicy(
        candidate.powers,
        candidate.coefficients,
        teacher.observation_names,
        teacher.action_names,
        teacher.action_low,
        teacher.action_high,
        merged,
    )


def _summary(chosen: Candidate, settings: DistillationSettings) -> dict:
    if not math.isfinite(chosen.error):
        raise ValueError('distillation produced a non-finite error')
    return {
        'threshold': chosen.threshold,
        'n_nonzero': chosen.n_nonzero,
        'validation_rms_error': chosen.error,
        'degree': chosen.degree,
        'angle_pairs': [[int(i), int(j)] for i, j in settings.angle_pairs],
        'saturation': float(settings.saturation),
        'n_models': int(settings.n_models),
        'n_observations': chosen.n_observations,
    }


def _eligible(candidates: list[Candidate], max_coefficients: int | None) -> list[Candidate]:
    """Candidates within the coefficient budget (the sparsest ones if none is)."""
    if max_coefficients is None:
        return candidates
    within = [c for c in candidates if c.n_nonzero <= max_coefficients]
    if within:
        return within
    fewest = min(c.n_nonzero for c in candidates)
    return [c for c in candidates if c.n_nonzero == fewest]


def _distill_by_error(
    teacher: Any,
    observations: np.ndarray,
    settings: DistillationSettings,
    metadata: dict | None,
) -> SparsePolynomialPolicy:
    """One distillation on fixed states, the candidate chosen by validation error."""
    candidates = fit_candidates(teacher, observations, settings)
    eligible = _eligible(candidates, settings.max_coefficients)
    best_error = min(c.error for c in eligible)
    acceptable = [c for c in eligible if c.error <= best_error + settings.error_tolerance]
    chosen = min(acceptable, key=lambda c: (c.n_nonzero, c.error))
    summary = _summary(chosen, settings)
    summary['selection'] = 'imitation_error'
    summary['candidates'] = [c.summary() for c in candidates]
    return _student(teacher, chosen, summary, metadata)


def _pick_by_return(
    candidates: list[Candidate], allowed: float, max_coefficients: int | None
) -> Candidate:
    """The sparsest candidate whose shortfall is within ``allowed``, else the closest."""
    eligible = _eligible(candidates, max_coefficients)
    acceptable = [c for c in eligible if c.shortfall <= allowed]
    if acceptable:
        return min(acceptable, key=lambda c: (c.n_nonzero, c.shortfall))
    return min(eligible, key=lambda c: (c.shortfall, c.n_nonzero))


def _distill_by_return(
    teacher: Any,
    observations: np.ndarray,
    env: Any,
    settings: DistillationSettings,
    metadata: dict | None,
) -> SparsePolynomialPolicy:
    """DAgger rounds; every candidate of every round is scored against the teacher on ``env``.

    A candidate's score is its *shortfall*: the mean over the episodes of how much less
    it returns than the teacher from the same start state (never negative).  Doing
    better than the teacher from some starts does not make up for doing worse from
    others: on the surrogate that is often a model error or a start state the real plant
    never sees, and it would let a trivial policy through.  The rollouts of each round
    use the candidate that round would choose, so the next fit also covers the states
    where that candidate's mistakes lead.
    """
    rounds, steps = max(0, int(settings.dagger_rounds)), int(settings.dagger_steps)
    tolerance, seed = float(settings.return_tolerance), settings.seed
    max_coefficients = settings.max_coefficients
    batches = max(1, math.ceil(max(1, int(settings.evaluation_episodes)) / int(env.n_envs)))
    evaluation_seeds = [seed + 104_729 * (batch + 1) for batch in range(batches)]
    teacher_returns = episode_returns(teacher, env, steps, evaluation_seeds)
    teacher_return = float(np.mean(teacher_returns))
    allowed = tolerance * abs(teacher_return)

    def score(candidate: Candidate, same_as: Candidate | None = None) -> None:
        if same_as is not None:
            candidate.returns = same_as.returns
        else:
            policy = _student(teacher, candidate, {}, None)
            candidate.returns = episode_returns(policy, env, steps, evaluation_seeds)
        candidate.surrogate_return = float(np.mean(candidate.returns))
        candidate.shortfall = float(np.mean(np.maximum(teacher_returns - candidate.returns, 0)))

    evaluated: list[Candidate] = []
    rounds_summary = []
    weights = np.ones(len(observations))
    fewest_acceptable: int | None = None
    for round_index in range(rounds + 1):
        fits = fit_candidates(teacher, observations, settings, sample_weights=weights)
        # Sparsest first: once a candidate is good enough, denser ones can't be chosen
        # any more (in this round or a later one) and need no episodes.
        fits.sort(key=lambda c: (c.n_nonzero, c.degree, c.threshold))
        scored: list[Candidate] = []
        for candidate in fits:
            candidate.round = round_index
            if fewest_acceptable is not None and candidate.n_nonzero > fewest_acceptable:
                break
            same = next(
                (
                    c
                    for c in scored
                    if c.degree == candidate.degree
                    and np.array_equal(c.coefficients, candidate.coefficients)
                ),
                None,
            )  # e.g. thresholds below every coefficient give the same fit
            score(candidate, same)
            scored.append(candidate)
            within_budget = max_coefficients is None or candidate.n_nonzero <= max_coefficients
            if candidate.shortfall <= allowed and within_budget:
                fewest_acceptable = candidate.n_nonzero
        if not scored:  # nothing sparser than an earlier choice: score the sparsest
            score(fits[0])
            scored.append(fits[0])
        chosen = _pick_by_return(scored, allowed, max_coefficients)
        evaluated.extend(scored)
        rounds_summary.append(
            {
                'n_observations': int(len(observations)),
                'n_nonzero': chosen.n_nonzero,
                'degree': chosen.degree,
                'surrogate_return': chosen.surrogate_return,
                'shortfall': chosen.shortfall,
            }
        )
        if round_index < rounds:
            student = _student(teacher, chosen, {}, None)
            visited = visited_states(
                student, env, steps, seed + 7919 * round_index, _MAX_DAGGER_STATES_PER_ROUND
            )
            observations = np.concatenate([observations, visited])
            weights = np.concatenate([weights, np.ones(len(visited))])
            # The episodes where the student falls furthest behind the teacher (e.g. one
            # swing more before coming up) hinge on a few states near a switching curve;
            # a uniform share of the data leaves them to chance.  The student's and the
            # teacher's states of those episodes get a larger weight.
            shortfall = teacher_returns - chosen.returns
            worst = np.argsort(-shortfall)[: max(1, len(shortfall) // 20)]
            worst = worst[shortfall[worst] > 0]
            if worst.size:
                focus = np.concatenate(
                    [
                        episode_states(who, env, steps, evaluation_seeds, worst)
                        for who in (student, teacher)
                    ]
                )
                observations = np.concatenate([observations, focus])
                weights = np.concatenate([weights, np.full(len(focus), _FOCUS_WEIGHT)])
    chosen = _pick_by_return(evaluated, allowed, max_coefficients)
    summary = _summary(chosen, settings)
    summary.update(
        {
            'selection': 'shortfall_to_teacher',
            'surrogate_return': chosen.surrogate_return,
            'shortfall': chosen.shortfall,
            'teacher_surrogate_return': teacher_return,
            'allowed_shortfall': allowed,
            'return_tolerance': tolerance,
            'evaluation_episodes': int(batches * env.n_envs),
            'dagger_rounds': int(rounds),
            'chosen_round': chosen.round,
            'rounds': rounds_summary,
            'candidates': [c.summary() for c in evaluated if c.round == chosen.round],
        }
    )
    return _student(teacher, chosen, summary, metadata)
