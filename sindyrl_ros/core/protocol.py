"""The Dyna protocol, written once: explore, hold, evaluate, finish, as decisions without ROS.

Both the run supervisor (which turns each decision into service calls on the graph) and
``core.dyna.run_dyna`` (which benchmarks the loop on a gymnasium plant) drive
:class:`DynaProtocol`, so what the benchmarks measure is what the graph does:

- **Episodes stay whole.** Decisions are taken at the end of an exploration episode: the
  plant is held, or an evaluation starts, only between episodes.
- **Chunks.** Random actions (no policy yet) for ``initial_steps`` real training steps,
  counted from the run's first step; then ``steps_per_iteration`` steps with each released
  policy (plus exploration noise, :func:`exploration_scale`), each chunk ending at the
  first episode end at or past its length.
- **Hold.** After a chunk the plant is held until a policy trained on a model newer than
  the released policy's comes (``policy``), the model updater says none will
  (``model_rejected``, ``no_refit``: see :func:`hold_outcome`), or ``hold_timeout``
  passes. A rejected model is never trained on: exploring goes on with the policy there
  is (random actions before the first).
- **Evaluate** every new policy (``eval_every_policy``) before it explores; the run ends at
  the threshold (``stop_at_threshold``) or when the real-step budget is spent, the last
  policy evaluated first.

The model updater's part in it: whether a policy is coming for a held plant is the model
updater's to say, and it says it on a typed channel (``/sindyrl/fit_state``, a
:class:`FitState` as a named vector), never in ``/diagnostics`` strings, which are for
people and monitors:

- a fit of the chunk's data is running, or a model newer than the released policy's is
  accepted: its policy is coming, keep holding;
- a fit started since the chunk began and was rejected or failed, and the updater is idle:
  no policy is coming (``model_rejected``), explore another chunk;
- no fit started since the chunk began, the updater has settled, and it still needs more
  exploration transitions before its next refit (``transitions_to_refit`` > 0): no policy
  is coming (``no_refit``), explore on at once instead of waiting out a timeout.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import astuple, dataclass, fields
import math
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    'chunk_counted',
    'CONTINUE',
    'EVALUATE',
    'EXPLORE',
    'FINISH',
    'FIT_STATE_NAMES',
    'HOLD',
    'Decision',
    'DynaProtocol',
    'FitState',
    'ProtocolSettings',
    'exploration_scale',
    'hold_outcome',
]

# What to do next.
CONTINUE = 'continue'  # go on exploring
HOLD = 'hold'  # pause the plant and wait (reason: why the chunk ended)
EVALUATE = 'evaluate'  # evaluate the newest policy
EXPLORE = 'explore'  # (after a hold or an evaluation) explore a new chunk
FINISH = 'finish'  # the run is over (reason: threshold, budget)


@dataclass(frozen=True)
class FitState:
    """The model updater's fitting state, as counts since it started.

    Attributes
    ----------
    refits : int
        Fits started.
    models_accepted, models_rejected, fit_failures : int
        Fits that ended in an accepted model, a rejected candidate, an error.
    fit_running : bool
        A fit is running now.
    model_version : int
        Version of the newest accepted model (0: none).
    transitions_explore : int
        Complete exploration transitions recorded (all sessions of the run).
    transitions_to_refit : int
        Exploration transitions still needed before the next fit starts (0: it starts as
        soon as the running one ends, or now).
    """

    refits: int = 0
    models_accepted: int = 0
    models_rejected: int = 0
    fit_failures: int = 0
    fit_running: bool = False
    model_version: int = 0
    transitions_explore: int = 0
    transitions_to_refit: int = 0

    def to_vector(self) -> list[float]:
        """Values in the order of :data:`FIT_STATE_NAMES` (``fit_running`` as 0/1)."""
        return [float(value) for value in astuple(self)]

    @classmethod
    def from_vector(cls, names: Sequence[str], values: Sequence[float]) -> FitState:
        """Read a named vector; every field must be there as a finite whole number >= 0.

        Raises
        ------
        ValueError
            Naming the first missing, repeated or unusable field.
        """
        if len(names) != len(values):
            raise ValueError(f'{len(names)} names for {len(values)} values')
        by_name: dict[str, float] = {}
        for name, value in zip(names, values):
            if name in by_name:
                raise ValueError(f'{name!r} given twice')
            by_name[str(name)] = value
        read = {}
        for item in fields(cls):
            if item.name not in by_name:
                raise ValueError(f'no {item.name!r}')
            value = by_name[item.name]
            if not (
                isinstance(value, (int, float))
                and math.isfinite(value)
                and value >= 0
                and value == int(value)
                and value < 2**53
            ):
                raise ValueError(f'{item.name} = {value!r} is not a count')
            read[item.name] = bool(value) if item.type in (bool, 'bool') else int(value)
        return cls(**read)

    @property
    def unsuccessful(self) -> int:
        """Fits that gave no model: rejected candidates and failures."""
        return self.models_rejected + self.fit_failures


FIT_STATE_NAMES = tuple(item.name for item in fields(FitState))


def hold_outcome(
    state: FitState | None,
    chunk_start: FitState | None,
    released_model_version: int,
    settled: bool,
) -> str | None:
    """Why no policy will come for the data explored since the chunk began, or None.

    Parameters
    ----------
    state : FitState or None
        The model updater's latest state (None: nothing heard from it yet: keep holding).
    chunk_start : FitState or None
        Its state when the chunk of exploration began (None: before its first report).
    released_model_version : int
        The model the policy last evaluated or released was trained on.
    settled : bool
        Long enough into the hold that the chunk's last transitions are counted in
        ``state`` (they travel to the updater and its report travels back).

    Returns
    -------
    str or None
        ``'model_rejected'``, ``'no_refit'``, or None when a policy may still come.
    """
    if state is None or state.fit_running or state.model_version > released_model_version:
        return None
    start = chunk_start or FitState()
    if state.refits > start.refits and state.unsuccessful > start.unsuccessful:
        return 'model_rejected'
    if state.refits == start.refits and settled and state.transitions_to_refit > 0:
        return 'no_refit'
    return None


def chunk_counted(state: FitState | None, chunk_start: FitState | None, chunk_steps: int) -> bool:
    """Whether the model updater's fit state counts every exploration step of the chunk.

    The chunk's last transitions travel to the updater and its state travels back; on a
    loaded machine that can take seconds, and until then "no refit started, more
    transitions needed" says nothing about the chunk. ``chunk_steps``: the real steps the
    run supervisor counted since the chunk began.
    """
    if state is None:
        return False
    counted = state.transitions_explore - (chunk_start.transitions_explore if chunk_start else 0)
    return counted >= chunk_steps


def exploration_scale(noise: float, low: Sequence[float], high: Sequence[float]) -> np.ndarray:
    """Standard deviation of the exploration noise per action: ``noise`` times half the range.

    The one meaning of ``exploration_noise``, for the controller and ``run_dyna`` alike:
    0.1 on a torque limited to ±2 N·m is a 0.2 N·m standard deviation.

    Returns
    -------
    numpy.ndarray, shape (m,)
    """
    low, high = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
    return float(noise) * 0.5 * (high - low)


class Decision(NamedTuple):
    """What to do next (:data:`CONTINUE`, :data:`HOLD`, :data:`EVALUATE`, :data:`EXPLORE`,
    :data:`FINISH`) and why; ``release`` asks the owner to release the policy unevaluated."""

    action: str
    reason: str = ''
    release: bool = False


@dataclass(frozen=True)
class ProtocolSettings:
    """The protocol's settings (the run supervisor's parameters of the same names)."""

    budget: int
    threshold: float
    initial_steps: int = 200
    steps_per_iteration: int = 200
    eval_every_policy: bool = True
    hold_for_policy: bool = True
    stop_at_threshold: bool = True


class DynaProtocol:
    """The explore / hold / evaluate decisions of a Dyna run, and the little state they need.

    The owner counts real training steps (its plant knows them) and passes them in; the
    protocol keeps the chunk, the holds, the newest policy and the one last released.

    Parameters
    ----------
    settings : ProtocolSettings
    real_steps : int
        Real training steps already spent (a resumed run's).
    holds : int
        Holds already made (a resumed run's: past the initial chunk).
    released_policy, released_model : optional
        The policy last evaluated or released, and the model it was trained on.
    evaluated_policy : optional
        The policy evaluated last.
    """

    def __init__(
        self,
        settings: ProtocolSettings,
        real_steps: int = 0,
        holds: int = 0,
        released_policy: Any = None,
        released_model: int = 0,
        evaluated_policy: Any = None,
    ) -> None:
        self.settings = settings
        self.holds = int(holds)
        self.chunk_start = int(real_steps)
        self.released_policy = released_policy
        self.released_model = int(released_model)
        self.evaluated_policy = evaluated_policy
        self.policy: Any = None  # newest policy version known
        self.policy_model: int | None = None  # the model it was trained on
        self.steps_to_threshold: int | None = None
        self.reached = False
        self.fit_state: FitState | None = None  # the model updater's latest, set by the owner
        self.chunk_fit_state: FitState | None = None  # ... when the chunk began

    # -- facts -----------------------------------------------------------------------
    def policy_arrived(self, version: Any, source_model: Any) -> None:
        """A policy was published (version, and the model version it was trained on)."""
        self.policy = version
        self.policy_model = source_model if isinstance(source_model, int) else None

    def new_policy(self) -> bool:
        """Whether the newest policy is newer than the one last evaluated or released.

        Newer means another version trained on a newer model: a policy retrained on the
        same model has not seen the data explored since.
        """
        if self.policy is None or self.policy == self.released_policy:
            return False
        if self.policy_model is not None and self.released_policy is not None:
            return self.policy_model > self.released_model
        return True

    def unevaluated(self) -> bool:
        """Whether a policy exists that was never evaluated."""
        return self.policy is not None and self.policy != self.evaluated_policy

    def release_policy(self, real_steps: int, fallback_model: int = 0) -> None:
        """The newest policy explores (evaluated or not): later holds wait for a newer one."""
        self.released_policy = self.policy
        self.released_model = (
            self.policy_model if self.policy_model is not None else fallback_model
        )
        self.start_chunk(real_steps)

    def start_chunk(self, real_steps: int) -> None:
        """A chunk of exploration starts: its steps and the updater's fits count from here."""
        self.chunk_start = int(real_steps)
        self.chunk_fit_state = self.fit_state

    def held(self) -> None:
        """The plant is held (the pause took effect)."""
        self.holds += 1

    # -- decisions -------------------------------------------------------------------
    def explore_started(self) -> bool:
        """Exploring (again): whether to evaluate the newest policy at the episode's end."""
        s = self.settings
        if not s.eval_every_policy:
            return False
        return self.new_policy() if s.hold_for_policy else self.unevaluated()

    def after_exploration_episode(self, real_steps: int, awaiting_evaluation: bool) -> Decision:
        """An exploration episode ended whole: hold, evaluate, finish or go on.

        ``awaiting_evaluation``: a new policy came while the episode ran (free running).
        """
        s = self.settings
        if not s.hold_for_policy:
            if real_steps >= s.budget:
                # The final policy still gets its evaluation.
                return Decision(EVALUATE) if self.unevaluated() else Decision(FINISH, 'budget')
            if awaiting_evaluation and self.unevaluated():
                return Decision(EVALUATE)
            return Decision(CONTINUE)
        if real_steps >= s.budget:
            # Evaluated, then the run ends; else the policy trained on the last chunk next.
            return Decision(EVALUATE) if self.new_policy() else Decision(HOLD, 'budget')
        if self.new_policy() and s.eval_every_policy:
            return Decision(EVALUATE)
        if self.holds == 0:
            # Counted from the run's first step: a resumed run finishes its initial chunk.
            if real_steps >= s.initial_steps:
                return Decision(HOLD, 'initial_steps')
        elif real_steps - self.chunk_start >= s.steps_per_iteration:
            return Decision(HOLD, 'steps_per_iteration')
        return Decision(CONTINUE)

    def release_reason(self, settled: bool, timed_out: bool) -> str | None:
        """While holding: why the hold ends now, or None to go on holding.

        ``policy`` (a new one came), what the model updater's fit state says
        (:func:`hold_outcome`; ``settled``: long enough into the hold for it to count the
        chunk's last transitions), or ``hold_timeout`` (``timed_out``).
        """
        if self.new_policy():
            return 'policy'
        outcome = hold_outcome(self.fit_state, self.chunk_fit_state, self.released_model, settled)
        if outcome is not None:
            return outcome
        return 'hold_timeout' if timed_out else None

    def after_release(self, reason: str, real_steps: int) -> Decision:
        """The hold ended for ``reason``: evaluate, explore another chunk, or finish."""
        s = self.settings
        if reason == 'policy':
            if s.eval_every_policy or real_steps >= s.budget:
                return Decision(EVALUATE)
            return Decision(EXPLORE, release=True)  # explores unevaluated
        if real_steps >= s.budget:
            # The latest policy still gets its evaluation.
            return Decision(EVALUATE) if self.unevaluated() else Decision(FINISH, 'budget')
        self.start_chunk(real_steps)  # another chunk with the policy there is (or random)
        return Decision(EXPLORE)

    def evaluation_started(self, real_steps: int, fallback_model: int = 0) -> bool:
        """The newest policy is being evaluated; True when that released it (held runs:
        the next chunk explores with it, and the next hold waits for a newer one)."""
        if not self.settings.hold_for_policy:
            return False
        self.release_policy(real_steps, fallback_model)
        return True

    def evaluation_done(self, policy: Any, mean_return: float, real_steps: int) -> Decision:
        """An evaluation of ``policy`` ended with ``mean_return``: finish or explore on."""
        s = self.settings
        self.evaluated_policy = policy
        if mean_return >= s.threshold and not self.reached:
            self.reached = True
            self.steps_to_threshold = int(real_steps)
        if mean_return >= s.threshold and s.stop_at_threshold:
            return Decision(FINISH, 'threshold')
        if real_steps >= s.budget:
            return Decision(FINISH, 'budget')
        return Decision(EXPLORE)
