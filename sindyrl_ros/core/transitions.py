"""Pairing recorded observations and actions into transitions, by stamp.

A SINDy model x[k+1] = f(x[k], u[k]) is fitted on (observation k, action answering k,
observation k+1) triples. Messages can arrive out of order and some get lost, so
:class:`TransitionAssembler` pairs them by their stamps (an action carries the stamp of
the observation it answers), never by arrival order, and cuts trajectories at time gaps,
mode changes and plant resets. A reward the plant reports (``/sindyrl/reward``, stamped
like the action: with the observation the step started from) joins the transition of
that stamp, for tasks that learn their reward. :class:`SessionTransitions` keeps the
sessions of a run (one per start of the graph) apart.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence

import numpy as np

from sindyrl_ros.core.mcap_reader import TransitionLog
from sindyrl_ros.core.mcap_writer import _NS
from sindyrl_ros.core.trajectories import Trajectory

__all__ = [
    'EXPLORE',
    'EVALUATE',
    'SessionTransitions',
    'TransitionAssembler',
    'assemble_log',
]

EXPLORE = 'explore'
EVALUATE = 'evaluate'
# Seconds an observation no action answered is kept behind the newest answered one (an
# answer that late never comes on one host), checked once this many are buffered.
UNANSWERED_KEEP_S = 5.0
_UNANSWERED_PRUNE = 2048


class TransitionAssembler:
    """Pairs stamped observations and actions into transitions, by stamp.

    Observation k (stamp t_k), the action answering it (stamped t_k) and observation k+1
    form a transition when the step ``t_{k+1} - t_k`` is at most ``gap_factor *
    control_period`` and no feature jumps by more than ``max_jump`` (a plant reset moves
    the state without a step of the dynamics). Observation k+1 is the next *answered*
    observation (the next one an action answers) when there is one within the gap, else
    the observation nearest one control period later (at least half a period later). So
    transitions stay at the control period when a robot's joint states (and so the
    observations) come faster than the controller answers them (a broadcaster at
    100 Hz–1 kHz, control at 20 Hz), and a state whose answer was lost still ends the step
    before it. Observations nobody answered
    are kept only ``UNANSWERED_KEEP_S`` behind the newest answered one.
    Consecutive transitions of the same mode form a trajectory; a gap, a jump or a
    change of mode (explore/evaluate/safe) ends it. Arrival order never matters: the
    pairing is recomputed around each new message, so a late message completes the
    transitions it belongs to. Rewards (stamped like actions) ride along: they never
    decide whether a transition is complete, but :meth:`trajectories` can keep only the
    rewarded ones (to fit a reward model).

    Parameters
    ----------
    control_period : float
        Seconds between observations.
    gap_factor : float
        A step longer than ``gap_factor * control_period`` is a gap.
    max_jump : array-like of shape (n,) or None
        Largest plausible change of each observation feature in one control period;
        None disables reset detection by jumps.
    """

    def __init__(
        self,
        control_period: float,
        gap_factor: float = 1.5,
        max_jump: np.ndarray | None = None,
    ) -> None:
        if not control_period > 0:
            raise ValueError(f'control_period must be positive, got {control_period}')
        if not gap_factor >= 1.0:
            raise ValueError(f'gap_factor must be >= 1, got {gap_factor}')
        self.control_period = float(control_period)
        self.gap_factor = float(gap_factor)
        self.max_gap_ns = int(round(self.gap_factor * self.control_period * _NS))
        self.max_jump = None if max_jump is None else np.asarray(max_jump, dtype=np.float64)
        self.period_ns = int(round(self.control_period * _NS))
        self.min_step_ns = self.period_ns // 2
        self._stamps: list[int] = []  # sorted observation stamps
        self._answered_stamps: list[int] = []  # sorted stamps with an observation and an action
        self._observations: dict[int, np.ndarray] = {}
        self._unanswered = 0  # observations without an action
        self._pruned_below = -(2**63)  # unanswered observations before this are pruned
        self._actions: dict[int, tuple[np.ndarray, str]] = {}
        self._rewards: dict[int, float] = {}
        self._complete: dict[int, str] = {}  # stamp of observation k -> mode of its transition
        self._counts: dict[str, int] = {}  # complete transitions per mode
        self.duplicates = 0

    # -- input ---------------------------------------------------------------
    def add_observation(self, stamp_ns: int, observation: np.ndarray) -> int:
        """Add observation at ``stamp_ns``; returns how many transitions it completed."""
        stamp_ns = int(stamp_ns)
        if stamp_ns in self._observations:
            self.duplicates += 1
            return 0
        self._observations[stamp_ns] = np.array(observation, dtype=np.float64)
        bisect.insort(self._stamps, stamp_ns)
        if stamp_ns in self._actions:
            return self._answered(stamp_ns)
        self._unanswered += 1
        # It may end the step of the answered observation before it.
        index = bisect.bisect_left(self._answered_stamps, stamp_ns)
        return self._recheck(self._answered_stamps[index - 1]) if index > 0 else 0

    def add_action(self, stamp_ns: int, action: np.ndarray, mode: str) -> int:
        """Add the action answering the observation stamped ``stamp_ns``.

        Returns how many transitions it completed (0 to 2: its own and the previous one).
        """
        stamp_ns = int(stamp_ns)
        if stamp_ns in self._actions:
            self.duplicates += 1
            return 0
        self._actions[stamp_ns] = (np.array(action, dtype=np.float64).reshape(-1), str(mode))
        if stamp_ns not in self._observations:
            return 0
        self._unanswered -= 1
        return self._answered(stamp_ns)

    def _answered(self, stamp_ns: int) -> int:
        """An observation and its action are both here: recheck it and the answer before."""
        index = bisect.bisect_left(self._answered_stamps, stamp_ns)
        self._answered_stamps.insert(index, stamp_ns)
        completed = self._recheck(stamp_ns)
        if index > 0:
            completed += self._recheck(self._answered_stamps[index - 1])
        if self._unanswered > _UNANSWERED_PRUNE:
            self._forget_unanswered()
        return completed

    def _forget_unanswered(self) -> None:
        """Drop observations nobody answered that lie well behind the newest answer.

        An observation that ends a complete transition (a step whose next state went
        unanswered) is kept: its trajectory needs it.
        """
        floor = self._answered_stamps[-1] - int(UNANSWERED_KEEP_S * _NS)
        start = bisect.bisect_left(self._answered_stamps, self._pruned_below)
        end = bisect.bisect_left(self._answered_stamps, floor)
        needed = {
            self._next_stamp(stamp)
            for stamp in self._answered_stamps[start:end]
            if stamp in self._complete
        }
        cut = bisect.bisect_left(self._stamps, floor)
        kept = []
        for stamp in self._stamps[:cut]:
            if stamp in self._actions or stamp in needed or stamp < self._pruned_below:
                kept.append(stamp)
            else:
                del self._observations[stamp]
                self._unanswered -= 1
        self._stamps[:cut] = kept
        self._pruned_below = floor

    def add_reward(self, stamp_ns: int, reward: float) -> bool:
        """Add the reward of the step from the observation stamped ``stamp_ns``.

        Returns False for a repeated stamp (kept: the first) or a non-finite reward
        (refused), True otherwise.
        """
        stamp_ns = int(stamp_ns)
        if stamp_ns in self._rewards:
            self.duplicates += 1
            return False
        reward = float(reward)
        if not np.isfinite(reward):
            return False
        self._rewards[stamp_ns] = reward
        return True

    def _next_stamp(self, stamp_ns: int) -> int | None:
        """The observation that ends the step from ``stamp_ns`` (see the class docstring)."""
        index = bisect.bisect_right(self._answered_stamps, stamp_ns)
        if index < len(self._answered_stamps):
            answered = self._answered_stamps[index]
            if answered - stamp_ns <= self.max_gap_ns:
                return answered
        # No answer within the gap: the observation nearest one control period later.
        target = stamp_ns + self.period_ns
        index = bisect.bisect_left(self._stamps, target)
        candidates = [
            self._stamps[i]
            for i in (index - 1, index)
            if 0 <= i < len(self._stamps)
            and self.min_step_ns <= self._stamps[i] - stamp_ns <= self.max_gap_ns
        ]
        return min(candidates, key=lambda s: abs(s - target)) if candidates else None

    def _recheck(self, stamp_ns: int) -> int:
        """Re-derive whether the transition starting at ``stamp_ns`` is complete.

        Returns 1 if it just became complete, else 0.
        """
        previous = self._complete.pop(stamp_ns, None)
        if previous is not None:
            self._counts[previous] -= 1
        mode = self._transition_mode(stamp_ns)
        if mode is None:
            return 0
        self._complete[stamp_ns] = mode
        self._counts[mode] = self._counts.get(mode, 0) + 1
        return 0 if previous is not None else 1

    def _transition_mode(self, stamp_ns: int) -> str | None:
        observation = self._observations[stamp_ns]
        answer = self._actions[stamp_ns]
        next_stamp = self._next_stamp(stamp_ns)
        if next_stamp is None or next_stamp - stamp_ns > self.max_gap_ns:
            return None
        if self.max_jump is not None:
            change = np.abs(self._observations[next_stamp] - observation)
            if not np.all(change <= self.max_jump):
                return None
        if not (np.all(np.isfinite(observation)) and np.all(np.isfinite(answer[0]))):
            return None
        return answer[1]

    # -- output --------------------------------------------------------------
    @property
    def n_observations(self) -> int:
        """Observations buffered (answered or not)."""
        return len(self._observations)

    @property
    def n_actions(self) -> int:
        """Actions buffered."""
        return len(self._actions)

    @property
    def n_rewards(self) -> int:
        """Rewards buffered."""
        return len(self._rewards)

    def rewarded_counts(self) -> dict[str, int]:
        """Complete transitions with a reported reward, per mode."""
        counts: dict[str, int] = {}
        for stamp, mode in self._complete.items():
            if stamp in self._rewards:
                counts[mode] = counts.get(mode, 0) + 1
        return counts

    def transition_counts(self) -> dict[str, int]:
        """Complete transitions per mode, e.g. ``{'explore': 180, 'evaluate': 400}``."""
        return {mode: count for mode, count in self._counts.items() if count}

    def trajectories(
        self, modes: Iterable[str] | None = (EXPLORE,), min_steps: int = 1, rewards: bool = False
    ) -> list[Trajectory]:
        """Cut the complete transitions into gap-free, single-mode trajectories.

        Parameters
        ----------
        modes : iterable of str or None
            Modes whose transitions are used (None = all). Only 'explore' data trains
            the model; 'evaluate' episodes are for reporting.
        min_steps : int
            Shorter trajectories are left out.
        rewards : bool
            Keep only transitions with a reported reward (a missing one cuts the
            trajectory) and fill ``Trajectory.rewards``.

        Returns
        -------
        list of Trajectory
            In time order, with ``times`` in seconds.
        """
        allowed = None if modes is None else set(modes)
        trajectories: list[Trajectory] = []
        run: list[int] = []
        run_mode = None

        def close_run() -> None:
            if len(run) >= max(min_steps, 1):
                stamps = [*run, self._next_stamp(run[-1])]
                trajectories.append(
                    Trajectory(
                        observations=np.stack([self._observations[s] for s in stamps]),
                        actions=np.stack([self._actions[s][0] for s in run]),
                        rewards=(
                            np.asarray([self._rewards[s] for s in run], dtype=np.float64)
                            if rewards
                            else None
                        ),
                        times=np.asarray(stamps, dtype=np.float64) / _NS,
                    )
                )
            run.clear()

        expected_next = None
        for stamp in self._answered_stamps:
            mode = self._complete.get(stamp)
            usable = mode is not None and (allowed is None or mode in allowed)
            usable = usable and (not rewards or stamp in self._rewards)
            if run and (not usable or stamp != expected_next or mode != run_mode):
                close_run()
            if usable:
                run.append(stamp)
                run_mode = mode
                expected_next = self._next_stamp(stamp)
        if run:
            close_run()
        return trajectories

    def observations(self) -> np.ndarray:
        """All answered observations in stamp order, shape (K, n)."""
        if not self._stamps:
            return np.zeros((0, 0))
        return np.stack([self._observations[s] for s in self._stamps])


def assemble_log(
    log: TransitionLog,
    control_period: float,
    gap_factor: float = 1.5,
    max_jump: np.ndarray | None = None,
) -> TransitionAssembler:
    """Pair a recording's observations and actions into transitions.

    Parameters
    ----------
    log : TransitionLog
        From :func:`read_transition_log`.
    control_period, gap_factor, max_jump
        As for :class:`TransitionAssembler`.

    Returns
    -------
    TransitionAssembler
        Holding every observation and action of the log.
    """
    assembler = TransitionAssembler(control_period, gap_factor, max_jump)
    for observation in log.observations:
        assembler.add_observation(observation.stamp_ns, observation.values)
    for action in log.actions:
        assembler.add_action(action.stamp_ns, action.values, action.frame_id)
    for reward in log.rewards:
        if len(reward.values) == 1:
            assembler.add_reward(reward.stamp_ns, reward.values[0])
    return assembler


class SessionTransitions:
    """The transitions of a run's sessions: earlier ones (loaded) and the live one.

    Each start of a run records its own session, and a restarted simulator's clock starts
    from 0 again, so the stamps of two sessions must never be paired: each session has its
    own :class:`TransitionAssembler`, and this class only adds up their counts and puts
    their trajectories one after the other.

    Parameters
    ----------
    live : TransitionAssembler
        The session being recorded now; the one new messages go to.
    earlier : sequence of TransitionAssembler
        Sessions loaded from recordings (a resumed run's, an ``initial_log``), in order.
    """

    def __init__(
        self, live: TransitionAssembler, earlier: Sequence[TransitionAssembler] = ()
    ) -> None:
        self.live = live
        self.earlier = list(earlier)

    @property
    def sessions(self) -> list[TransitionAssembler]:
        """Every session, the live one last."""
        return [*self.earlier, self.live]

    def transition_counts(self) -> dict[str, int]:
        """Complete transitions per mode, over every session."""
        counts: dict[str, int] = {}
        for session in self.sessions:
            for mode, count in session.transition_counts().items():
                counts[mode] = counts.get(mode, 0) + count
        return counts

    def trajectories(
        self, modes: Iterable[str] | None = (EXPLORE,), min_steps: int = 1, rewards: bool = False
    ) -> list[Trajectory]:
        """:meth:`TransitionAssembler.trajectories` of every session, in session order."""
        modes = None if modes is None else tuple(modes)
        return [
            trajectory
            for session in self.sessions
            for trajectory in session.trajectories(modes, min_steps, rewards)
        ]
