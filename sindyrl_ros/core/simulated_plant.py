"""The simulated plant's rules, without ROS: joints from observations, commands, stepping.

:class:`SimulatedPlant` is what ``nodes/plant.py`` does with a gymnasium environment,
free of rclpy so that each rule has a unit test (``test/unit/test_simulated_plant.py``):

* lockstep: state k is out (``waiting``); the first valid command answering state k
  (its stamp, see :meth:`SimulatedPlant.answer`) is applied, the environment steps and state
  k+1 is ready; an answer to an older state is late and never applied, an answer to a
  newer one than was published is refused;
* pause: the answer to the state already out is still applied, then the next state is held
  (``held``) until resume; on resume a held state is published, and a state whose answer
  never came is published again so that the loop restarts;
* episodes: the environment's terminated/truncated, the task's termination expression and
  ``episode_length`` end an episode (scored by :class:`~sindyrl_ros.core.episodes.EpisodeLedger`);
  the answer to a terminal state is consumed, not applied, and the environment resets;
  simulated time jumps by ``gap_ns`` at every reset so that pairing by stamp sees a gap;
* realtime: one step per tick with the latest command, or the zero command (clipped into the
  limits) once commands are older than the command timeout.

:class:`JointMapping` turns the task's observation into joint positions and velocities
(an angle observed as a (cos, sin) pair becomes ``atan2(sin, cos)``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
import math
import re
from typing import Any

import numpy as np

from sindyrl_ros.core.episodes import EpisodeLedger
from sindyrl_ros.params import ParameterError

__all__ = [
    'Answer',
    'JointMapping',
    'SimulatedPlant',
    'checked_command',
]

_ATAN2 = re.compile(r'^\s*atan2\(\s*([^,()\s]+)\s*,\s*([^,()\s]+)\s*\)\s*$')


class JointMapping:
    """Joint positions and velocities from an observation vector.

    Parameters
    ----------
    joint_names : sequence of str
        Unique, at least one.
    positions : sequence of str
        One per joint: an observation name, or ``atan2(sin_name, cos_name)``.
    velocities : sequence of str
        Empty, or one observation name per joint.
    observation_names : sequence of str
        The task's observation names, in order.

    Raises
    ------
    ParameterError
        Naming the parameter (``joint_names``, ``joint_positions``, ``joint_velocities``).
    """

    def __init__(
        self,
        joint_names: Sequence[str],
        positions: Sequence[str],
        velocities: Sequence[str],
        observation_names: Sequence[str],
    ) -> None:
        if not joint_names:
            raise ParameterError('joint_names', 'name at least one joint')
        if len(set(joint_names)) != len(joint_names):
            raise ParameterError('joint_names', 'joint names must be unique')
        for key, specs in (('joint_positions', positions), ('joint_velocities', velocities)):
            if specs and len(specs) != len(joint_names):
                raise ParameterError(
                    key, f'expected one entry per joint ({len(joint_names)}), got {len(specs)}'
                )
        if not positions:
            raise ParameterError('joint_positions', 'give one entry per joint')
        index = {name: i for i, name in enumerate(observation_names)}

        def compile_spec(key: str, spec: str, allow_angle: bool) -> tuple[int, ...]:
            match = _ATAN2.match(spec)
            names = match.groups() if (match and allow_angle) else (spec.strip(),)
            for name in names:
                if name not in index:
                    raise ParameterError(
                        key,
                        f'{spec!r}: {name!r} is not an observation of the task '
                        f'{list(observation_names)}',
                    )
            return tuple(index[name] for name in names)

        self.joint_names = list(joint_names)
        self._positions = [compile_spec('joint_positions', s, True) for s in positions]
        self._velocities = [compile_spec('joint_velocities', s, False) for s in velocities]

    def positions(self, observation: np.ndarray) -> list[float]:
        return [
            float(math.atan2(observation[s[0]], observation[s[1]]))
            if len(s) == 2
            else float(observation[s[0]])
            for s in self._positions
        ]

    def velocities(self, observation: np.ndarray) -> list[float]:
        return [float(observation[s[0]]) for s in self._velocities]


def checked_command(
    values: Any, low: np.ndarray, high: np.ndarray
) -> tuple[np.ndarray | None, str, str]:
    """A command clipped into ``[low, high]``, or None with a reject reason and detail.

    Returns ``(command, reason, detail)``: ``(None, 'command_length' | 'command_nonfinite',
    detail)`` for a command of the wrong length or with a non-finite value (never applied),
    else the clipped command with ``reason`` ``'clipped'`` where clipping changed it, or ``''``.
    """
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if array.shape != low.shape:
        return None, 'command_length', f'{array.size} values, expected {low.size}'
    if not np.all(np.isfinite(array)):
        return None, 'command_nonfinite', f'{array.tolist()}'
    clipped = np.clip(array, low, high)
    return clipped, ('' if np.array_equal(clipped, array) else 'clipped'), ''


@dataclass(frozen=True)
class Answer:
    """What a lockstep command did: ``outcome`` and whether to publish (or hold) next.

    ``outcome``: ``'stepped'`` (applied), ``'episode_started'`` (the answer to a terminal
    state, consumed), ``'late'`` (answers an older state, or none is out),
    ``'while_paused'`` (as late, while paused: the controller's watchdog, expected) or
    ``'future'`` (answers a state newer than the one out: refused).
    """

    outcome: str
    reward: float | None = None
    records: tuple = ()

    @property
    def applied(self) -> bool:
        return self.outcome in ('stepped', 'episode_started')


class SimulatedPlant:
    """A gymnasium environment stepped by the lockstep or realtime rule (module docstring).

    Parameters
    ----------
    env : gymnasium.Env
        Already reset (``observation`` is its first observation).
    observation : array
        The first observation.
    ledger : EpisodeLedger
        Episode bookkeeping and scoring.
    action_low, action_high : array
        The (narrowed) limits; commands are clipped into them.
    dt : float
        Simulated seconds per step.
    gap_ns : int
        Simulated time added at every reset (the first state is at ``gap_ns``, never 0).
    paused : bool
        Start paused (the first state is held until resume).
    """

    def __init__(
        self,
        env,
        observation: np.ndarray,
        ledger: EpisodeLedger,
        action_low: np.ndarray,
        action_high: np.ndarray,
        dt: float,
        gap_ns: int,
        paused: bool = False,
    ) -> None:
        self.env = env
        self.ledger = ledger
        self.action_low = np.asarray(action_low, dtype=np.float64)
        self.action_high = np.asarray(action_high, dtype=np.float64)
        zero = np.zeros_like(self.action_low)
        self.zero_command = np.clip(zero, self.action_low, self.action_high)
        self.dt_ns = int(round(dt * 1e9))
        self.gap_ns = int(gap_ns)
        self.time_ns = 0
        self.state_stamp_ns = 0  # the stamp of the state published last
        self.waiting = False  # lockstep: a state is out and its answer not yet applied
        self.paused = bool(paused)
        self.held = False  # paused: the current state is ready but not published
        self.episode_end = ''  # why the episode ends at the current state
        self.observation = np.zeros(0)
        self._begin_episode(observation)

    @property
    def real_steps(self) -> int:
        """Every env.step call since start-up."""
        return self.ledger.real_steps

    def _begin_episode(self, observation) -> None:
        self.observation = np.asarray(observation, dtype=np.float64).reshape(-1)
        self.episode_end = ''
        self.time_ns += self.gap_ns

    # ------------------------------------------------------------------ publication

    def published(self) -> None:
        """The current state went out (stamp ``time_ns``); its answer is awaited."""
        self.state_stamp_ns = self.time_ns
        self.waiting = True

    def publish_or_hold(self) -> bool:
        """Whether to publish the current state now (False: held until resume)."""
        if self.paused:
            self.held = True
            self.waiting = False
            return False
        return True

    # ------------------------------------------------------------------ stepping

    def step(self, action: np.ndarray, now: float) -> float:
        """One env.step with an action inside the limits; returns its reward."""
        observation, reward, terminated, truncated, _ = self.env.step(action.copy())
        self.observation = np.asarray(observation, dtype=np.float64).reshape(-1)
        start_ns = self.state_stamp_ns
        self.time_ns += self.dt_ns
        end = 'terminated' if terminated else ('truncated' if truncated else None)
        self.episode_end = (
            self.ledger.add_step(
                start_ns,
                self.time_ns,
                action,
                start_ns,
                now,
                reward=float(reward),
                end=end,
                observation_after=self.observation,
            )
            or ''
        )
        return float(reward)

    def finish_episode(self, reason: str, now: float) -> list[dict]:
        """End the episode (if a step has not already), reset; the finished records."""
        self.ledger.end_episode(reason)  # nothing when a step already ended it
        _, records = self.ledger.poll(now)
        observation, _ = self.env.reset()
        self._begin_episode(observation)
        return records

    def answer(self, command: np.ndarray, stamp_ns: int | None, now: float) -> Answer:
        """Lockstep: a valid command that may answer the state out (see :class:`Answer`)."""
        if not self.waiting or (stamp_ns is not None and stamp_ns < self.state_stamp_ns):
            return Answer('while_paused' if self.paused else 'late')
        if stamp_ns is not None and stamp_ns > self.state_stamp_ns:
            return Answer('future')
        self.waiting = False
        if self.episode_end:
            records = self.finish_episode(self.episode_end, now)
            return Answer('episode_started', records=tuple(records))
        return Answer('stepped', reward=self.step(command, now))

    def reset(self, now: float) -> list[dict]:
        """A reset request: the episode ends, the next starts; the old answer is late now."""
        records = self.finish_episode('reset', now)
        self.waiting = False
        return records

    def pause(self, hold: bool, lockstep: bool) -> bool:
        """Hold or resume; returns whether a state must be published now (on resume)."""
        if hold == self.paused:
            return False
        self.paused = hold
        if hold:
            return False
        if self.held:
            self.held = False
            return True
        # The answer to the waiting state never came: send it again to restart the loop.
        return self.waiting and lockstep

    def timed_out(self, published_at: float, now: float, timeout: float) -> bool:
        """Lockstep: republish the waiting state (never while paused)."""
        return not self.paused and self.waiting and now - published_at > timeout

    def realtime_command(self, latest: np.ndarray, latest_at: float, now: float, timeout: float):
        """The command of a realtime tick, and whether it is the zero command (missing)."""
        if now - latest_at > timeout:
            return self.zero_command, True
        return latest, False
