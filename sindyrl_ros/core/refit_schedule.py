"""When the model updater starts its next fit, and what its fits came to (its fit state).

A fit starts every ``refit_every`` new exploration transitions (the first one waits for as
many), one at a time: transitions that arrive during a fit count towards the next, which
starts as soon as the running one ends if enough came. A run that starts with recorded
data (``resume``, an ``initial_log``) fits on it at once.

The counts are what the model updater publishes on ``/sindyrl/fit_state`` as a
:class:`~sindyrl_ros.core.protocol.FitState`: the run supervisor decides its holds from
them (see :mod:`sindyrl_ros.core.protocol`).
"""

from __future__ import annotations

from sindyrl_ros.core.protocol import FitState

__all__ = ['ACCEPTED', 'FAILED', 'REJECTED', 'RefitSchedule']

# How a fit ended.
ACCEPTED = 'accepted'  # the model passed validation: it is published
REJECTED = 'rejected'  # it diverged or erred too much on validation: never published
FAILED = 'failed'  # the fit raised (or its worker died)


class RefitSchedule:
    """Decides when a fit starts and counts how fits end.

    Parameters
    ----------
    models_accepted : int
        Models accepted before this start (a resumed run goes on from its newest saved
        model): the next model's version is one more.

    Attributes
    ----------
    refits, models_accepted, models_rejected, fit_failures : int
        Fits started by this start, and how those that ended ended (accepted ones on top
        of ``models_accepted`` given).
    transitions_explore : int
        Complete exploration transitions of the run (every session): set it as they come.
    explore_at_last_fit : int
        ``transitions_explore`` when the last fit started.
    initial_fit_pending : bool
        A fit is due at once, whatever the count (recorded data at start-up).
    """

    def __init__(self, models_accepted: int = 0) -> None:
        self.refits = 0
        self.models_accepted = int(models_accepted)
        self.models_rejected = 0
        self.fit_failures = 0
        self.transitions_explore = 0
        self.explore_at_last_fit = 0
        self.initial_fit_pending = False

    @property
    def next_model_version(self) -> int:
        """The version the model of the next fit gets if it is accepted."""
        return self.models_accepted + 1

    def transitions_to_refit(self, refit_every: int) -> int:
        """Exploration transitions still needed before the next fit (0: it is due)."""
        if self.initial_fit_pending:
            return 0
        return max(0, int(refit_every) - (self.transitions_explore - self.explore_at_last_fit))

    def start_fit(self, refit_every: int, running: bool) -> bool:
        """Whether a fit starts now; if so, it is counted as started.

        Parameters
        ----------
        refit_every : int
            New exploration transitions between two fits (a parameter that may change
            while the node runs: read it at each call).
        running : bool
            A fit is running (then none starts).

        Returns
        -------
        bool
            True when the caller is to start a fit on the transitions there are now. An
            initial fit that finds no exploration transition is dropped (the next waits
            for ``refit_every``).
        """
        if running:
            return False
        if self.transitions_to_refit(refit_every) > 0:
            return False
        if self.transitions_explore == 0:
            self.initial_fit_pending = False
            return False
        self.initial_fit_pending = False
        self.explore_at_last_fit = self.transitions_explore
        self.refits += 1
        return True

    def fit_ended(self, result: dict) -> str:
        """Count how a fit ended.

        Parameters
        ----------
        result : dict
            From :func:`~sindyrl_ros.core.model_fitting.fit_model`, or a worker's
            ``{'error': ...}``.

        Returns
        -------
        str
            :data:`FAILED` (``error`` in the result), :data:`REJECTED` or :data:`ACCEPTED`.
        """
        if 'error' in result:
            self.fit_failures += 1
            return FAILED
        if not result['accepted']:
            self.models_rejected += 1
            return REJECTED
        self.models_accepted += 1
        return ACCEPTED

    def fit_state(self, refit_every: int, running: bool) -> FitState:
        """The fit state to publish on ``/sindyrl/fit_state``.

        Parameters
        ----------
        refit_every : int
        running : bool
            A fit is running now.
        """
        return FitState(
            refits=self.refits,
            models_accepted=self.models_accepted,
            models_rejected=self.models_rejected,
            fit_failures=self.fit_failures,
            fit_running=bool(running),
            model_version=self.models_accepted,
            transitions_explore=self.transitions_explore,
            transitions_to_refit=self.transitions_to_refit(refit_every),
        )
