"""Episodes of a plant: one component for every kind of plant, and the hold/reset protocol.

:class:`EpisodeLedger` is the episode bookkeeping and scoring of every plant in the
graph: the embedded simulated plant, a rig behind the serial bridge and a robot the
package does not own (ros2_control, Gazebo), whose episodes node feeds it. It turns a
stream of steps into what a training run needs from a plant:

* steps: consecutive states of the plant, each with the command applied during it; every
  step counts towards ``real_steps`` at once, in stream order, and steps the plant took
  but the host never saw (lost frames) count too (:meth:`EpisodeLedger.add_missed`);
* episodes: ``episode_length`` steps, or fewer when the simulator ends one, the task's
  ``termination`` expression holds on the state after a step, or a reset cuts one short;
* rewards: known with the step (a simulator), reported by the plant on
  ``/sindyrl/reward`` (a learned reward), or the task's reward of (observation before,
  applied action, observation after), computed once the sensor node's observations of
  both states have arrived (they come later, from another node), or counted as missing
  after ``observation_wait`` seconds;
* episode records, in order, once every step of an episode has its reward:
  ``{episode, return, length, real_steps, mode, end, task, missing_rewards}``.

For a plant on its own clock that the package does not drive (a ros2_control robot),
:class:`AnsweredSteps` builds those steps from the controller's answers: a step runs from
one observation the controller answered to the next one it answered (a robot's joint
states may come much faster than the control period), with the answer to the first as
its action. The hold/reset protocol of such a plant is :mod:`sindyrl_ros.core.episode_control`.

Nothing here knows about ROS; the nodes feed these and publish what they return.
"""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
import math

import numpy as np

__all__ = [
    'AnsweredSteps',
    'EpisodeLedger',
    'LedgerStep',
    'SAFE',
    'UNKNOWN',
]

# Mode of a step whose applied command no controller action answers (the rig's or the
# bridge's own zero command) and of a step whose action message never arrived.
SAFE = 'safe'
UNKNOWN = 'unknown'

RewardFunction = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
TerminationFunction = Callable[[np.ndarray], np.ndarray]


@dataclass
class LedgerStep:
    """One step of the rig: from the state stamped ``start_ns`` to the one at ``end_ns``.

    ``action`` (shape (m,)) is the command the rig applied during the step;
    ``answered_ns`` the stamp of the observation that command answered (None for the rig's
    or the bridge's own safe command); ``reward`` the step's reward when the plant knew it
    (a simulator), else None.
    """

    start_ns: int
    end_ns: int
    action: np.ndarray
    answered_ns: int | None
    created: float
    episode: _Episode
    reward: float | None = None


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
    """Cuts a plant's steps into episodes and scores them (module docstring).

    The plant's side (:meth:`add_step`, :meth:`end_episode`, :meth:`add_missed`) must be
    called in stream order; the graph's side (:meth:`add_observation`, :meth:`add_action`,
    :meth:`poll`) in any order. Not thread-safe: the caller holds one lock around both.

    Parameters
    ----------
    reward_function : callable or None
        ``fn(observations (N, n), actions (N, m), next_observations (N, n)) -> (N,)``, the
        task's reward; None when the reward cannot be computed from observations (a
        learned reward): steps are then scored with the rewards the plant reports
        (:meth:`add_reward`), and NaN when none is reported within ``observation_wait``.
    episode_length : int
        Steps per episode.
    task : str
        Task name written into the records.
    observation_wait : float
        Seconds a step waits for its two observations before its reward counts as missing.
    history : int
        Observations and action modes kept for steps still to come.
    termination : callable or None
        ``fn(observations (N, n)) -> bool (N,)``, the task's termination condition
        (``TaskSpec.termination_function``), judged on the state after a step when the
        caller passes it to :meth:`add_step`.
    """

    def __init__(
        self,
        reward_function: RewardFunction | None,
        episode_length: int,
        task: str,
        observation_wait: float = 1.0,
        history: int = 4096,
        termination: TerminationFunction | None = None,
    ) -> None:
        if int(episode_length) < 1:
            raise ValueError(f'episode_length must be at least 1, got {episode_length}')
        if not observation_wait > 0:
            raise ValueError(f'observation_wait must be positive, got {observation_wait}')
        self.reward_function = reward_function
        self.termination = termination
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
        self._reported: OrderedDict[int, float] = OrderedDict()  # rewards from the plant
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
        reward: float | None = None,
        end: str | None = None,
        observation_after: np.ndarray | None = None,
    ) -> str | None:
        """Count one step of the plant; returns why it ends the episode, or None.

        The episode is then closed and the next step starts the next episode. An episode
        ends with the plant's own ``end`` (a simulator's ``'terminated'``), with
        ``'termination'`` when the task's termination holds on ``observation_after``, or
        with ``'episode_length'``.

        Parameters
        ----------
        start_ns, end_ns : int
            Stamps of the states before and after the step.
        action : array_like, shape (m,)
            The command the plant applied during the step.
        answered_ns : int or None
            Stamp of the observation that command answered; None for a safe command
            nobody computed from an observation.
        now : float
            Monotonic seconds (starts the ``observation_wait`` clock).
        reward : float, optional
            The step's reward when the plant knows it.
        end : str, optional
            The plant's own reason to end the episode here.
        observation_after : array_like, shape (n,), optional
            The observation of the state after the step, for the termination condition.
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
                None if reward is None else float(reward),
            )
        )
        self._last_end_ns = int(end_ns)
        episode.steps += 1
        self.real_steps += 1
        if end is None and self.termination is not None and observation_after is not None:
            if bool(np.asarray(self.termination(observation_after)).reshape(-1)[0]):
                end = 'termination'
        if end is None and episode.steps >= self.episode_length:
            end = 'episode_length'
        if end is not None:
            self.end_episode(end)
        return end

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

    def add_reward(self, stamp_ns: int, reward: float) -> None:
        """The reward the plant reported for the step from the state stamped ``stamp_ns``."""
        stamp_ns = int(stamp_ns)
        if stamp_ns in self._reported:
            return
        self._reported[stamp_ns] = float(reward)
        while len(self._reported) > self.history:
            self._reported.popitem(last=False)

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

    def _reward(self, step: LedgerStep, now: float) -> float | None:
        """The step's reward, NaN when it cannot be known, None while it may still come."""
        if step.reward is not None:
            return step.reward
        if step.start_ns in self._reported:
            return self._reported[step.start_ns]
        if self.reward_function is None:
            return math.nan if now - step.created > self.observation_wait else None
        before = self._observations.get(step.start_ns)
        after = self._observations.get(step.end_ns)
        if before is None or after is None:
            return None
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
            episode = step.episode
            reward = self._reward(step, now)
            if reward is not None:
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
        self._forget_rewards()
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

    def _forget_rewards(self) -> None:
        """Drop reported rewards of steps already scored."""
        floor = self._pending[0].start_ns if self._pending else self._last_end_ns
        while self._reported and floor is not None:
            stamp = next(iter(self._reported))
            if stamp >= floor:
                break
            del self._reported[stamp]

    def _record(self, episode: _Episode) -> dict:
        known = {mode: n for mode, n in episode.modes.items() if mode != UNKNOWN}
        if known:
            most = max(known.values())
            tied = sorted(mode for mode, n in known.items() if n == most)
            mode = episode.last_mode if episode.last_mode in tied else tied[-1]
        else:
            mode = UNKNOWN
        return {
            'episode': episode.number,
            'return': episode.total,
            'length': episode.steps,
            'real_steps': episode.real_steps,
            'mode': mode,
            'end': episode.end,
            'task': self.task,
            'missing_rewards': episode.missing,
        }


# ---------------------------------------------------------------------- a plant on its own


@dataclass
class AnsweredStep:
    """One step of a plant on its own clock, from the controller's answers.

    From the observation stamped ``start_ns`` (answered with ``action`` in ``mode``) to
    the next answered one, stamped ``end_ns``; ``observation_after`` is the observation
    at ``end_ns``, None when it never arrived (the sensor refused it).
    """

    start_ns: int
    end_ns: int
    action: np.ndarray
    mode: str
    observation_after: np.ndarray | None


class AnsweredSteps:
    """Steps of a plant the package does not drive, built from the controller's answers.

    A robot's joint states (and so the observations) may come at 1 kHz while the
    controller answers one observation per control period with the latest it has: a step
    runs from one answered observation to the next, and the first one's answer is the
    command applied during it. A step longer than ``gap_factor * control_period`` is no
    step (the chain broke: a hold, a reset, a silent sensor); :meth:`restart` breaks it on
    purpose. Answers to an observation already answered (a timer loop that saw nothing
    new) are repeats and ignored.

    Parameters
    ----------
    control_period : float
        Seconds between the controller's answers.
    gap_factor : float
        Longest step, in control periods.
    history : int
        Observations kept for steps still waiting for the state they end at.
    """

    def __init__(self, control_period: float, gap_factor: float = 1.5, history: int = 4096):
        if not control_period > 0:
            raise ValueError(f'control_period must be positive, got {control_period}')
        self.max_step_ns = int(round(gap_factor * control_period * 1e9))
        self.history = int(history)
        self.repeats = 0  # answers to an observation answered before
        self.gaps = 0  # answers too long after the previous one to make a step
        self._observations: OrderedDict[int, np.ndarray] = OrderedDict()
        self._newest_observation_ns: int | None = None
        self._last: tuple[int, np.ndarray, str] | None = None  # last answer in the chain
        self._last_answered_ns: int | None = None
        self._restart_floor_ns: int | None = None
        self.late_answers = 0  # answers from before the last restart
        self._waiting: deque[AnsweredStep] = deque()  # steps without their end observation

    def restart(self) -> None:
        """The next answer starts a new chain (no step spans a hold or a reset).

        Answers to observations this node had already seen are from before: they arrive
        late and start nothing.
        """
        self._last = None
        self._restart_floor_ns = self._newest_observation_ns

    def add_observation(self, stamp_ns: int, observation: np.ndarray) -> list[AnsweredStep]:
        """An observation of the plant, shape (n,); returns the steps it completes."""
        stamp_ns = int(stamp_ns)
        if stamp_ns not in self._observations:
            self._observations[stamp_ns] = np.array(observation, dtype=np.float64).reshape(-1)
            while len(self._observations) > self.history:
                self._observations.popitem(last=False)
        if self._newest_observation_ns is None or stamp_ns > self._newest_observation_ns:
            self._newest_observation_ns = stamp_ns
        return self._complete()

    def add_action(self, stamp_ns: int, action: np.ndarray, mode: str) -> list[AnsweredStep]:
        """The controller's answer to the observation stamped ``stamp_ns``; returns the
        steps that are complete now."""
        stamp_ns = int(stamp_ns)
        if self._last_answered_ns is not None and stamp_ns <= self._last_answered_ns:
            self.repeats += 1
            return []
        if self._restart_floor_ns is not None and stamp_ns <= self._restart_floor_ns:
            self.late_answers += 1
            return []
        self._last_answered_ns = stamp_ns
        action = np.array(action, dtype=np.float64).reshape(-1)
        if self._last is not None:
            start_ns, start_action, start_mode = self._last
            if stamp_ns - start_ns <= self.max_step_ns:
                self._waiting.append(
                    AnsweredStep(start_ns, stamp_ns, start_action, start_mode, None)
                )
            else:
                self.gaps += 1
        self._last = (stamp_ns, action, str(mode))
        return self._complete()

    def _complete(self) -> list[AnsweredStep]:
        steps = []
        while self._waiting:
            step = self._waiting[0]
            observation = self._observations.get(step.end_ns)
            if observation is None and (
                self._newest_observation_ns is None or self._newest_observation_ns <= step.end_ns
            ):
                break  # it may still come (observations arrive in stamp order)
            step.observation_after = observation
            steps.append(self._waiting.popleft())
        return steps
