"""Decisions of the Dyna protocol that need no ROS: what the model updater's fit state means
for a held plant.

The run supervisor holds the plant after a chunk of exploration and waits for a policy
trained on the new data. Whether one is coming is the model updater's to say, and it says it
on a typed channel (``/sindyrl/fit_state``, a :class:`FitState` as a named vector), never in
``/diagnostics`` strings, which are for people and monitors:

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

__all__ = ['FIT_STATE_NAMES', 'FitState', 'hold_outcome']


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
