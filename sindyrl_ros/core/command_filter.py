"""The controller's decisions: what command to send, and when only the safe command may go.

The controller node (:mod:`sindyrl_ros.nodes.controller`) is the last line of defence for
the actuators. Everything it decides without ROS lives here, so that each rule is tested
directly:

* :func:`command_limits`: names, action limits, safe command and control period from the
  parameters (a problem is a :class:`ParameterError` naming the parameter).
* :class:`Exploration`: without a policy, uniform random actions within the limits (in
  ``explore`` mode); with one, Gaussian noise of standard deviation
  ``exploration_noise * (action_high - action_low) / 2``
  (:func:`sindyrl_ros.core.protocol.exploration_scale`, as in ``core.dyna.run_dyna``).
* :class:`CommandFilter`: every action is clipped to ``[action_low, action_high]``, changes
  by at most ``rate_limit * control_period`` per tick (the safe command excepted: stopping
  beats smoothness) and is checked finite; a non-finite or out-of-limit command is never
  sent (the safe command goes instead). Soft start: a policy swapped in is blended in from
  the last command sent, ``(1 - w) * previous + w * policy`` with ``w`` rising linearly
  from 0 at its first tick to 1 after ``soft_start_time`` seconds of the loop's clock
  (observation stamps under the observation and stamp triggers), then clipped and
  rate-limited as usual. A blend interrupted by the safe command starts again from the
  safe command; a clock that goes back (a simulation reset) restarts it.
* :class:`SafetyState`: the e-stop latch (``true`` latches the safe command; only an
  explicit ``false`` releases it: a repeated ``true``, a publisher that goes away or
  restarts, or more observations do not), activation (``~/activate``, ros2_control's
  deactivate) and the watchdog (the safe command when no observation arrived for
  ``observation_timeout`` seconds, armed by the first observation). A silent sensor and a
  silent serial link are the same case: the serial bridge publishes /joint_states only
  from frames the rig sent, so a lost link means no observations, and the watchdog.
* :class:`StampGrid`: the stamp trigger, for a robot whose joint states come faster than
  the control rate (a ros2_control broadcaster at 100 Hz–1 kHz). The first observation of
  each control period is answered, the periods counted on the observations' own stamps (a
  grid of ``1 / control_rate`` that starts at the first answered stamp; an observation
  within 10 % of a period before the next grid point counts for it). The answered states
  are then one period apart by measurement time, whatever the scheduling of the process,
  so the recorded steps are the plant's control period, not the period of a timer that a
  loaded computer delays.
* :class:`PolicyCheck`: a policy replaces the current one only if its names fit and its
  outputs on the recent observations are finite and within the limits.

:class:`sindyrl_ros.core.control_loop.ControlLoop` puts these together for one controller.
The control path (:meth:`ControlLoop.observe`, :meth:`ControlLoop.command`) is numpy only
(no torch) and allocates no arrays per tick: every buffer is preallocated and every array
operation writes through ``out=``. Keep it so: a tick that allocates feeds the garbage
collector, whose pauses are the control loop's jitter. The rest (configuration, the policy
check, the timing statistics) runs at start-up, on a policy message or once a second.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
import math
from typing import Any, NamedTuple

import numpy as np

from sindyrl_ros.core.policies import NumpyPolicy
from sindyrl_ros.core.protocol import exploration_scale
from sindyrl_ros.params import ParameterError

__all__ = [
    'OUTPUT_TOLERANCE',
    'SAFE',
    'CommandFilter',
    'CommandLimits',
    'Exploration',
    'PolicyCheck',
    'SafetyState',
    'StampGrid',
    'command_limits',
]

OUTPUT_TOLERANCE = 1e-9  # policy outputs may exceed the limits by rounding only
SAFE = 'safe'  # the label of the safe command (frame_id on /sindyrl/action)


class CommandLimits(NamedTuple):
    """What a controller commands and within which limits (from :func:`command_limits`)."""

    observation_names: list[str]
    action_names: list[str]
    action_low: np.ndarray
    action_high: np.ndarray
    safe_command: np.ndarray
    control_period: float


def command_limits(
    values: Mapping[str, Any],
    task_limits: Callable[[], tuple[Any, Any]] | None = None,
) -> CommandLimits:
    """Names, limits, safe command and control period from the controller's parameters.

    Parameters
    ----------
    values : mapping
        ``observation_names``, ``action_names``, ``action_low``, ``action_high``,
        ``control_rate``, ``control_period`` and ``safe_command`` (empty = zeros).
    task_limits : callable, optional
        Gives the task's ``(action_low, action_high)``, which replace the parameters'
        (a registered task's limits, narrowed by the file). Called once the names and
        the lengths of the limits are checked, so that their problems are reported first.

    Raises
    ------
    ParameterError
        Naming the parameter that is wrong.
    """
    names = {}
    for key in ('observation_names', 'action_names'):
        names[key] = list(values[key])
        if not names[key]:
            raise ParameterError(key, 'must not be empty')
        if len(set(names[key])) != len(names[key]):
            raise ParameterError(key, 'names must be unique')
    m = len(names['action_names'])
    for key in ('action_low', 'action_high'):
        if len(values[key]) != m:
            raise ParameterError(
                key, f'expected {m} values (one per action), got {len(values[key])}'
            )
    low = np.array(values['action_low'], dtype=np.float64)
    high = np.array(values['action_high'], dtype=np.float64)
    if task_limits is not None:
        task_low, task_high = task_limits()
        low = np.array(task_low, dtype=np.float64)
        high = np.array(task_high, dtype=np.float64)
    if np.any(low >= high):
        raise ParameterError('action_low', 'must be below action_high')
    if values['control_rate'] > 0.0:
        control_period = 1.0 / values['control_rate']
    elif values['control_period'] > 0.0:
        control_period = float(values['control_period'])
    else:
        raise ParameterError('control_rate', 'set control_rate or control_period')
    safe = values['safe_command']
    if len(safe):
        if len(safe) != m:
            raise ParameterError('safe_command', f'expected {m} values')
        safe = np.array(safe, dtype=np.float64)
    else:
        safe = np.zeros(m)
    if np.any(safe < low) or np.any(safe > high):
        raise ParameterError(
            'safe_command',
            f'{safe.tolist()} is outside the action limits [{low.tolist()}, {high.tolist()}]',
        )
    return CommandLimits(
        names['observation_names'], names['action_names'], low, high, safe, control_period
    )


class Exploration:
    """The random part of an explore-mode action, from one seeded generator.

    Parameters
    ----------
    action_low, action_high : array_like, shape (m,)
    seed : int
    """

    def __init__(self, action_low: Any, action_high: Any, seed: int = 0) -> None:
        self._low = np.array(action_low, dtype=np.float64)
        self._range = np.array(action_high, dtype=np.float64) - self._low
        # The noise of exploration_noise 1.0 (the one definition: core.protocol).
        self._unit_scale = exploration_scale(1.0, action_low, action_high)
        self._noise = np.zeros(len(self._low))
        self._rng = np.random.default_rng(seed)

    def uniform(self, out: np.ndarray) -> np.ndarray:
        """An action drawn uniformly within the limits (no policy yet), written to ``out``."""
        self._rng.random(out=out)  # uniform in [0, 1)
        np.multiply(out, self._range, out=out)
        np.add(out, self._low, out=out)
        return out

    def perturb(self, action: np.ndarray, exploration_noise: float) -> np.ndarray:
        """Add Gaussian exploration noise to ``action`` in place (none draws nothing)."""
        if exploration_noise > 0.0:
            noise = self._noise
            self._rng.standard_normal(out=noise)
            np.multiply(noise, self._unit_scale, out=noise)
            np.multiply(noise, exploration_noise, out=noise)
            np.add(action, noise, out=action)
        return action


class CommandFilter:
    """Limits, rate limit, soft start and finiteness of the commands one controller sends.

    Parameters
    ----------
    action_low, action_high, safe_command : array_like, shape (m,)
        The safe command lies within the limits (:func:`command_limits` checks it).
    control_period : float
        Seconds per tick: the rate limit allows ``rate_limit * control_period`` per tick.
    rate_limit : float
        Maximum change per second (action units / s); 0 = no limit.
    soft_start_time : float
        Seconds over which a swapped-in policy is blended in; 0 = jump.

    ``rate_limit`` and ``soft_start_time`` may be changed between ticks (parameters set at
    run time).

    Attributes
    ----------
    previous : ndarray, shape (m,)
        The last command sent (the safe command before the first).
    """

    def __init__(
        self,
        action_low: Any,
        action_high: Any,
        safe_command: Any,
        control_period: float,
        rate_limit: float = 0.0,
        soft_start_time: float = 0.0,
    ) -> None:
        self.action_low = np.array(action_low, dtype=np.float64)
        self.action_high = np.array(action_high, dtype=np.float64)
        self.safe_command = np.array(safe_command, dtype=np.float64)
        self.control_period = float(control_period)
        self.rate_limit = rate_limit
        self.soft_start_time = soft_start_time
        m = len(self.action_low)
        self.previous = self.safe_command.copy()
        self._lower_step = np.zeros(m)
        self._upper_step = np.zeros(m)
        self._flags = np.zeros(m, dtype=bool)
        # Soft start: the command the current blend starts from, and when it started.
        self._blend_from = np.zeros(m)
        self._blend_start_ns = 0
        self._blend_pending = False  # a swapped-in policy has not driven a tick yet
        self._blending = False

    @property
    def blending(self) -> bool:
        """Whether the next policy action goes through :meth:`soft_start`."""
        return self._blend_pending or self._blending

    def policy_swapped(self) -> None:
        """A new policy drives from the next tick: blend it in from whatever was sent."""
        self._blend_pending = self.soft_start_time > 0.0
        self._blending = False

    def soft_start(self, action: np.ndarray, now_ns: int) -> bool:
        """Blend ``action`` (in place) from the command the blend started from.

        Parameters
        ----------
        action : ndarray, shape (m,)
            The policy's action (with its exploration noise).
        now_ns : int
            Now on the loop's clock, integer nanoseconds.

        Returns
        -------
        bool
            True when this tick started a blend (from :attr:`previous`).
        """
        started = False
        if self._blend_pending:
            np.copyto(self._blend_from, self.previous)
            self._blend_start_ns = now_ns
            self._blend_pending = False
            self._blending = True
            started = True
        elif now_ns < self._blend_start_ns:  # the clock went back (sim reset): start over
            self._blend_start_ns = now_ns
        duration = self.soft_start_time
        weight = (now_ns - self._blend_start_ns) * 1e-9 / duration if duration > 0.0 else 1.0
        if weight >= 1.0:
            self._blending = False
            return started
        # action = blend_from + weight * (action - blend_from)
        np.subtract(action, self._blend_from, out=action)
        np.multiply(action, weight, out=action)
        np.add(action, self._blend_from, out=action)
        return started

    def limit(self, action: np.ndarray) -> bool:
        """Clip ``action`` (in place) to the limits and the rate limit; whether it is finite.

        A non-finite action (NaN stays NaN through clipping) must not be sent: the caller
        sends :meth:`safe` instead.
        """
        np.clip(action, self.action_low, self.action_high, out=action)
        if self.rate_limit > 0.0:
            max_step = self.rate_limit * self.control_period
            np.subtract(self.previous, max_step, out=self._lower_step)
            np.add(self.previous, max_step, out=self._upper_step)
            np.clip(action, self._lower_step, self._upper_step, out=action)
        return bool(np.isfinite(action, out=self._flags).all())

    def safe(self) -> np.ndarray:
        """The safe command; a blend it interrupts starts again from it."""
        if self._blending:  # the policy will take over from the safe command again
            self._blending = False
            self._blend_pending = True
        return self.safe_command

    def admissible(self, action: np.ndarray) -> bool:
        """The last check before sending: finite and within the limits."""
        flags = self._flags
        if not np.isfinite(action, out=flags).all():
            return False
        if np.less(action, self.action_low, out=flags).any():
            return False
        return not np.greater(action, self.action_high, out=flags).any()

    def sent(self, action: np.ndarray) -> None:
        """``action`` went to the actuators: the rate limit and soft start start from it."""
        np.copyto(self.previous, action)


class SafetyState:
    """Whether the controller must send the safe command: e-stop, activation, watchdog.

    Parameters
    ----------
    observation_timeout : float
        Seconds without an observation before the watchdog trips (may be changed).
    active : bool
        False: start deactivated (the safe command until activated).

    Attributes
    ----------
    estop : bool
        The e-stop latch.
    active : bool
    watchdog_tripped : bool
        No fresh observation at the last :meth:`check_watchdog`.
    """

    def __init__(self, observation_timeout: float, active: bool = True) -> None:
        self.observation_timeout = observation_timeout
        self.estop = False
        self.active = bool(active)
        self.watchdog_tripped = False
        self._received = -math.inf

    @property
    def holding(self) -> bool:
        """E-stop latched or deactivated: the safe command, whatever the observations."""
        return self.estop or not self.active

    @property
    def armed(self) -> bool:
        """Whether an observation arrived yet (the watchdog is armed by the first)."""
        return self._received > -math.inf

    def on_estop(self, value: bool) -> bool:
        """An e-stop message: ``true`` latches, only ``false`` releases; whether it changed.

        A repeated ``true`` keeps the latch; silence (a publisher that stopped, or
        restarted without publishing) never releases: only a ``false`` message can.
        """
        changed = bool(value) != self.estop
        self.estop = bool(value)
        return changed

    def on_activate(self, value: bool) -> bool:
        """``false`` deactivates, ``true`` activates; whether it changed."""
        changed = bool(value) != self.active
        self.active = bool(value)
        return changed

    def observed(self, now: float) -> None:
        """An observation arrived at ``now`` (steady seconds)."""
        self._received = now

    def check_watchdog(self, now: float) -> bool:
        """Trip or clear the watchdog at ``now`` (steady seconds); whether it changed."""
        fresh = now - self._received <= self.observation_timeout
        if fresh == self.watchdog_tripped:
            self.watchdog_tripped = not fresh
            return True
        return False


class StampGrid:
    """Stamp trigger: which observations start a control period, by their own stamps.

    Parameters
    ----------
    control_period : float
        Seconds between two grid points.
    """

    def __init__(self, control_period: float) -> None:
        self.period_ns = int(round(control_period * 1e9))
        self.next_ns: int | None = None  # the next grid point

    def due(self, stamp_ns: int) -> bool:
        """Whether the observation stamped ``stamp_ns`` starts the next control period.

        The first observation anchors the grid, and so does one after a gap of more than a
        period; an observation within 10 % of a period before the next grid point counts
        for it.
        """
        period_ns = self.period_ns
        if self.next_ns is None or stamp_ns - self.next_ns > period_ns:
            self.next_ns = stamp_ns + period_ns  # first, or after a gap: anchor here
            return True
        if stamp_ns < self.next_ns - period_ns // 10:
            return False
        self.next_ns += period_ns
        return True


class PolicyCheck:
    """Whether a policy may drive this robot, checked on the recent observations.

    Parameters
    ----------
    observation_names, action_names : sequence of str
    action_low, action_high : array_like, shape (m,)
    capacity : int
        Recent observations kept (a ring buffer, filled without allocating).
    """

    def __init__(
        self,
        observation_names: Sequence[str],
        action_names: Sequence[str],
        action_low: Any,
        action_high: Any,
        capacity: int,
    ) -> None:
        self.observation_names = list(observation_names)
        self.action_names = list(action_names)
        self.action_low = np.array(action_low, dtype=np.float64)
        self.action_high = np.array(action_high, dtype=np.float64)
        self._recent = np.zeros((capacity, len(self.observation_names)))
        self._count = 0
        self._next = 0

    def observe(self, observation: np.ndarray) -> None:
        """Keep ``observation`` (shape (n,)) among the recent ones."""
        self._recent[self._next] = observation
        self._next = (self._next + 1) % len(self._recent)
        self._count = min(self._count + 1, len(self._recent))

    def problem(self, policy: NumpyPolicy) -> str | None:
        """Why ``policy`` must not drive this robot, or None.

        Refused: other observation or action names (in order), an evaluation that fails,
        ``act_batch`` of the wrong shape, non-finite outputs, outputs beyond the limits by
        more than :data:`OUTPUT_TOLERANCE`. Total: a check that fails in any way is a reason
        to refuse, never an exception. Without observations yet it is checked on the zero
        observation.
        """
        try:
            return self._problem(policy)
        except Exception as error:  # a refusal, like a bad output
            return f'check failed: {repr(error)[:1000]}'

    def _problem(self, policy: NumpyPolicy) -> str | None:
        for what, names, expected in (
            ('observation', policy.observation_names, self.observation_names),
            ('action', policy.action_names, self.action_names),
        ):
            if list(names) != expected:
                return f'policy {what} names {list(names)} differ from {expected}'
        if self._count:
            observations = self._recent[: self._count]
        else:
            observations = np.zeros((1, len(self.observation_names)))
        try:
            with np.errstate(all='ignore'):  # overflow shows as non-finite output, refused below
                actions = np.asarray(policy.act_batch(observations), dtype=np.float64)
                single = np.array(policy(np.ascontiguousarray(observations[-1])), dtype=np.float64)
        except Exception as error:
            return f'evaluation failed: {repr(error)[:1000]}'
        if actions.shape != (len(observations), len(self.action_names)):
            return f'act_batch gave shape {actions.shape}'
        if not (np.all(np.isfinite(actions)) and np.all(np.isfinite(single))):
            return f'non-finite actions on {len(observations)} recent observations'
        low = self.action_low - OUTPUT_TOLERANCE
        high = self.action_high + OUTPUT_TOLERANCE
        if np.any(actions < low) or np.any(actions > high):
            return (
                f'actions in [{actions.min(axis=0).tolist()}, {actions.max(axis=0).tolist()}] '
                f'leave the limits [{self.action_low.tolist()}, {self.action_high.tolist()}]'
            )
        return None
