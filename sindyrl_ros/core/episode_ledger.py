"""Episodes and rewards of a plant that runs on its own clock (a rig behind the serial bridge).

A simulated plant steps when the controller answers and knows its reward; a real rig moves
on its own timer, and the host only sees its states go by and which command each step
applied (the rig echoes the command's sequence number). :class:`EpisodeLedger` turns that
stream into what a training run needs from a plant:

* steps: consecutive states of the rig's stream, each with the command the rig applied
  during it; every step counts towards ``real_steps`` at once, in stream order, and steps
  the rig took but the host never saw (lost frames) count too (:meth:`add_missed`);
* episodes: ``episode_length`` steps, or fewer when a reset cuts them short;
* rewards: the task's reward of (observation before, applied action, observation after),
  computed once the sensor node's observations of both states have arrived (they come
  after the state, from another node), or counted as missing after ``observation_wait``
  seconds;
* episode records, in order, once every step of an episode has its reward: the same
  ``{episode, return, length, real_steps, mode, end, task}`` the simulated plant reports.

Nothing here knows about ROS; the serial bridge node feeds it and publishes what it returns.
"""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
import math

import numpy as np

__all__ = ['EpisodeLedger', 'LedgerStep', 'SAFE', 'UNKNOWN']

# Mode of a step whose applied command no controller action answers (the rig's or the
# bridge's own zero command) and of a step whose action message never arrived.
SAFE = 'safe'
UNKNOWN = 'unknown'

RewardFunction = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


@dataclass
class LedgerStep:
    """One step of the rig: from the state stamped ``start_ns`` to the one at ``end_ns``.

    ``action`` (shape (m,)) is the command the rig applied during the step;
    ``answered_ns`` the stamp of the observation that command answered (None for the rig's
    or the bridge's own safe command).
    """

    start_ns: int
    end_ns: int
    action: np.ndarray
    answered_ns: int | None
    created: float
    episode: _Episode


@dataclass
class _Episode:
    number: int
    steps: int = 0
    resolved: int = 0
    total: float = 0.0
    missing: int = 0
    modes: Counter = field(default_factory=Counter)
    last_mode: str = UNKNOWN
    end: str | None = None
    real_steps: int = 0


class EpisodeLedger:
    """Cuts a real-time plant's steps into episodes and scores them (module docstring).

    The plant's side (:meth:`add_step`, :meth:`end_episode`, :meth:`add_missed`) must be
    called in stream order; the graph's side (:meth:`add_observation`, :meth:`add_action`,
    :meth:`poll`) in any order. Not thread-safe: the caller holds one lock around both.

    Parameters
    ----------
    reward_function : callable or None
        ``fn(observations (N, n), actions (N, m), next_observations (N, n)) -> (N,)``, the
        task's reward; None when the reward cannot be computed from observations (a
        learned reward): returns are then NaN.
    episode_length : int
        Steps per episode.
    task : str
        Task name written into the records.
    observation_wait : float
        Seconds a step waits for its two observations before its reward counts as missing.
    history : int
        Observations and action modes kept for steps still to come.
    """

    def __init__(
        self,
        reward_function: RewardFunction | None,
        episode_length: int,
        task: str,
        observation_wait: float = 1.0,
        history: int = 4096,
    ) -> None:
        if int(episode_length) < 1:
            raise ValueError(f'episode_length must be at least 1, got {episode_length}')
        if not observation_wait > 0:
            raise ValueError(f'observation_wait must be positive, got {observation_wait}')
        self.reward_function = reward_function
        self.episode_length = int(episode_length)
        self.task = task
        self.observation_wait = float(observation_wait)
        self.history = int(history)
        self.real_steps = 0
        self.missed_steps = 0
        self.missing_rewards = 0
        self.episodes_closed = 0
        self._current = _Episode(1)
        self._episodes: deque[_Episode] = deque([self._current])  # not yet reported
        self._pending: deque[LedgerStep] = deque()  # steps without a reward yet
        self._observations: OrderedDict[int, np.ndarray] = OrderedDict()
        self._modes: OrderedDict[int, str] = OrderedDict()
        self._last_end_ns: int | None = None

    # ------------------------------------------------------------------ the plant's side

    @property
    def episode_steps(self) -> int:
        """Steps of the episode in progress."""
        return self._current.steps

    @property
    def episode_number(self) -> int:
        """Number of the episode in progress (1 for the first)."""
        return self._current.number

    def add_step(
        self,
        start_ns: int,
        end_ns: int,
        action: np.ndarray,
        answered_ns: int | None,
        now: float,
    ) -> bool:
        """Count one step of the rig; returns True when it completes the episode.

        The episode is then closed (end ``'episode_length'``) and the next step starts
        the next episode.

        Parameters
        ----------
        start_ns, end_ns : int
            Stamps of the states before and after the step.
        action : array_like, shape (m,)
            The command the rig applied during the step.
        answered_ns : int or None
            Stamp of the observation that command answered; None for a safe command
            nobody computed from an observation.
        now : float
            Monotonic seconds (starts the ``observation_wait`` clock).
        """
        episode = self._current
        self._pending.append(
            LedgerStep(
                int(start_ns),
                int(end_ns),
                np.array(action, dtype=np.float64).reshape(-1),
                None if answered_ns is None else int(answered_ns),
                float(now),
                episode,
            )
        )
        self._last_end_ns = int(end_ns)
        episode.steps += 1
        self.real_steps += 1
        if episode.steps >= self.episode_length:
            self.end_episode('episode_length')
            return True
        return False

    def add_missed(self, steps: int) -> None:
        """Count rig steps the host never saw (lost STATE frames): real steps all the same."""
        steps = int(steps)
        if steps > 0:
            self.real_steps += steps
            self.missed_steps += steps

    def end_episode(self, end: str) -> bool:
        """Close the episode in progress (``end``: why); False when it had no step yet.

        An episode without steps is not reported (a reset right after another).
        """
        episode = self._current
        if episode.steps == 0:
            return False
        episode.end = str(end)
        episode.real_steps = self.real_steps
        self.episodes_closed += 1
        self._current = _Episode(episode.number + 1)
        self._episodes.append(self._current)
        return True

    # ------------------------------------------------------------------ the graph's side

    def add_observation(self, stamp_ns: int, observation: np.ndarray) -> None:
        """The sensor node's observation of the state stamped ``stamp_ns``, shape (n,)."""
        stamp_ns = int(stamp_ns)
        if stamp_ns in self._observations:
            return  # a re-sent state: the first is kept
        self._observations[stamp_ns] = np.array(observation, dtype=np.float64).reshape(-1)
        while len(self._observations) > self.history:
            self._observations.popitem(last=False)

    def add_action(self, stamp_ns: int, mode: str) -> None:
        """The controller's mode (explore, evaluate, safe) when it answered ``stamp_ns``.

        The first answer counts: a watchdog repeating the last stamp with its safe command
        does not change what the answer was.
        """
        stamp_ns = int(stamp_ns)
        if stamp_ns in self._modes:
            return
        self._modes[stamp_ns] = str(mode) or UNKNOWN
        while len(self._modes) > self.history:
            self._modes.popitem(last=False)

    def extend_wait(self, seconds: float) -> None:
        """Give the steps waiting for observations ``seconds`` more (the caller was busy)."""
        for step in self._pending:
            step.created += float(seconds)

    def _mode(self, step: LedgerStep) -> str:
        if step.answered_ns is None:
            return SAFE
        mode = self._modes.get(step.answered_ns)
        if mode is None:
            mode = self._modes.get(step.start_ns, UNKNOWN)
        return mode

    def _reward(self, step: LedgerStep, before: np.ndarray, after: np.ndarray) -> float:
        if self.reward_function is None:
            return math.nan
        reward = self.reward_function(before[None, :], step.action[None, :], after[None, :])
        return float(np.asarray(reward, dtype=np.float64).reshape(-1)[0])

    def poll(self, now: float) -> tuple[list[tuple[int, float]], list[dict]]:
        """Score the steps whose observations arrived; hand out finished episodes.

        Parameters
        ----------
        now : float
            Monotonic seconds: a step waiting longer than ``observation_wait`` for its
            observations is closed with a missing reward.

        Returns
        -------
        rewards : list of (int, float)
            ``(start_ns, reward)`` of each newly scored step, in stream order.
        records : list of dict
            Finished episodes, in order: ``episode``, ``return`` (NaN when a reward
            cannot be computed), ``length``, ``real_steps`` (all steps so far when the
            episode ended), ``mode`` (the controller mode most of its steps ran in),
            ``end``, ``task``, ``missing_rewards``.
        """
        rewards: list[tuple[int, float]] = []
        while self._pending:
            step = self._pending[0]
            before = self._observations.get(step.start_ns)
            after = self._observations.get(step.end_ns)
            episode = step.episode
            if before is not None and after is not None:
                reward = self._reward(step, before, after)
                episode.total += reward
                rewards.append((step.start_ns, reward))
            elif now - step.created > self.observation_wait:
                episode.missing += 1
                self.missing_rewards += 1
            else:
                break
            mode = self._mode(step)
            episode.modes[mode] += 1
            episode.last_mode = mode
            episode.resolved += 1
            self._pending.popleft()
        self._forget_observations()
        records = []
        while self._episodes and self._episodes[0].end is not None:
            episode = self._episodes[0]
            if episode.resolved < episode.steps:
                break
            self._episodes.popleft()
            records.append(self._record(episode))
        return rewards, records

    def _forget_observations(self) -> None:
        """Drop observations no pending or future step starts or ends at."""
        if self._pending:
            floor = self._pending[0].start_ns
        elif self._last_end_ns is not None:
            floor = self._last_end_ns  # the next step may start there
        else:
            return
        while self._observations:
            stamp = next(iter(self._observations))
            if stamp >= floor:
                break
            del self._observations[stamp]

    def _record(self, episode: _Episode) -> dict:
        known = {mode: n for mode, n in episode.modes.items() if mode != UNKNOWN}
        if known:
            most = max(known.values())
            tied = sorted(mode for mode, n in known.items() if n == most)
            mode = episode.last_mode if episode.last_mode in tied else tied[-1]
        else:
            mode = UNKNOWN
        total = episode.total if self.reward_function is not None else math.nan
        return {
            'episode': episode.number,
            'return': total,
            'length': episode.steps,
            'real_steps': episode.real_steps,
            'mode': mode,
            'end': episode.end,
            'task': self.task,
            'missing_rewards': episode.missing,
        }
