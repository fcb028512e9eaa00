"""One controller's loop without ROS: the rules of :mod:`sindyrl_ros.core.command_filter`
put together observation by observation and tick by tick, and the loop's timing statistics.

The control path (:meth:`ControlLoop.observe`, :meth:`ControlLoop.command`) is numpy only
(no torch) and allocates no arrays per tick: every buffer is preallocated and every array
operation writes through ``out=``. Keep it so: a tick that allocates feeds the garbage
collector, whose pauses are the control loop's jitter.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from sindyrl_ros.core.command_filter import (
    SAFE,
    CommandFilter,
    CommandLimits,
    Exploration,
    PolicyCheck,
    SafetyState,
    StampGrid,
)
from sindyrl_ros.core.policies import NumpyPolicy

__all__ = ['COUNTERS', 'ControlLoop', 'TickTiming']

COUNTERS = (
    'observations',
    'repeated_observations',
    'safe_commands',
    'nonfinite_actions',
    'soft_starts',
    'policy_swaps',
    'watchdog_trips',
)


class ControlLoop:
    """One controller's decisions, observation by observation and tick by tick, without ROS.

    The node hands over each observation (:meth:`observe`), asks whether it is answered
    (:meth:`due`), and sends what :meth:`command` or :meth:`safe` gives, labelled with
    :attr:`label`. Counts go into ``counters`` (the node passes its /diagnostics counters):
    ``observations``, ``repeated_observations``, ``safe_commands``, ``nonfinite_actions``,
    ``soft_starts``, ``policy_swaps``, ``watchdog_trips``.

    Parameters
    ----------
    limits : CommandLimits
    trigger : {'observation', 'timer', 'stamp'}
    mode : {'explore', 'evaluate'}
    exploration_noise, rate_limit, soft_start_time, observation_timeout : float
        As the node's parameters of these names; :meth:`update` changes them (and
        ``mode``) while running.
    active : bool
        False: start deactivated.
    seed : int
        Of the exploration noise.
    recent : int
        Recent observations a new policy is checked on.
    clock : callable () -> int, optional
        Now on the loop's clock in nanoseconds, for the soft start under the timer trigger;
        None: the answered observation's stamp (observation and stamp triggers).
    counters : dict, optional

    Attributes
    ----------
    policy : NumpyPolicy or None
    stamp_ns : int or None
        Stamp of the latest accepted observation.
    label : str
        What the last command was: ``'explore'``, ``'evaluate'`` or :data:`SAFE`.
    """

    SETTINGS = (
        'mode',
        'exploration_noise',
        'rate_limit',
        'soft_start_time',
        'observation_timeout',
    )

    def __init__(
        self,
        limits: CommandLimits,
        *,
        trigger: str = 'observation',
        mode: str = 'explore',
        exploration_noise: float = 0.0,
        rate_limit: float = 0.0,
        soft_start_time: float = 0.0,
        observation_timeout: float = 0.5,
        active: bool = True,
        seed: int = 0,
        recent: int = 100,
        clock: Callable[[], int] | None = None,
        counters: dict[str, int] | None = None,
    ) -> None:
        low, high = limits.action_low, limits.action_high
        self.limits = limits
        self.trigger = trigger
        self.mode = mode
        self.exploration_noise = exploration_noise
        self.filter = CommandFilter(
            low, high, limits.safe_command, limits.control_period, rate_limit, soft_start_time
        )
        self.exploration = Exploration(low, high, seed)
        self.safety = SafetyState(observation_timeout, active)
        self.check = PolicyCheck(limits.observation_names, limits.action_names, low, high, recent)
        self.grid = StampGrid(limits.control_period)
        self.clock = clock
        self.counters = {} if counters is None else counters
        for key in COUNTERS:
            self.counters.setdefault(key, 0)
        self.policy: NumpyPolicy | None = None
        self.stamp_ns: int | None = None
        self.label = SAFE
        # Preallocated: a tick writes into these, nothing else.
        self.observation = np.zeros(len(limits.observation_names))
        self._action = np.zeros(len(limits.action_names))

    def update(self, name: str, value: Any) -> bool:
        """Change a run-time setting (one of :attr:`SETTINGS`); whether ``name`` is one."""
        if name not in self.SETTINGS:
            return False
        if name in ('rate_limit', 'soft_start_time'):
            setattr(self.filter, name, value)
        elif name == 'observation_timeout':
            self.safety.observation_timeout = value
        else:
            setattr(self, name, value)
        return True

    def observe(self, observation: np.ndarray, stamp_ns: int, now: float) -> bool:
        """Take an observation stamped ``stamp_ns`` that arrived at ``now`` (steady seconds).

        Returns False, and keeps nothing, for one older than the latest accepted. The same
        stamp again is a re-sent state (its command was lost): accepted and answered again.
        """
        last = self.stamp_ns
        if last is not None and stamp_ns < last:
            return False
        if stamp_ns == last:
            self.counters['repeated_observations'] += 1
        self.counters['observations'] += 1
        np.copyto(self.observation, observation)
        self.stamp_ns = stamp_ns
        self.safety.observed(now)
        self.check.observe(observation)
        return True

    def due(self, stamp_ns: int) -> bool:
        """Whether the observation just taken is answered now (by the trigger)."""
        if self.trigger == 'observation':
            return True
        return self.trigger == 'stamp' and self.grid.due(stamp_ns)

    def check_watchdog(self, now: float) -> bool:
        """:meth:`SafetyState.check_watchdog`, counting trips."""
        changed = self.safety.check_watchdog(now)
        if changed and self.safety.watchdog_tripped:
            self.counters['watchdog_trips'] += 1
        return changed

    def swap_in(self, policy: NumpyPolicy) -> str | None:
        """Make ``policy`` the current one if it passes the check; else why not."""
        problem = self.check.problem(policy)
        if problem:
            return problem
        self.policy = policy  # one reference assignment: the next tick uses the new policy
        self.filter.policy_swapped()  # soft start from what the actuators get then
        self.counters['policy_swaps'] += 1
        return None

    def safe(self) -> np.ndarray:
        """The safe command (counted); labels it and interrupts a soft start."""
        self.counters['safe_commands'] += 1
        self.label = SAFE
        return self.filter.safe()

    def command(self, stamp_ns: int) -> np.ndarray:
        """The command answering the observation stamped ``stamp_ns`` (see :attr:`label`).

        The safe command while the e-stop is latched or the controller deactivated, and in
        evaluate mode without a policy; else a uniform random action (explore mode without
        a policy) or the policy's action with exploration noise (explore mode) and soft
        start; then limited, and the safe command if that is not finite. The watchdog is
        the caller's (it logs its trips).
        """
        if self.safety.holding:
            return self.safe()
        action, explore = self._action, self.mode == 'explore'
        if self.policy is None:
            if not explore:
                return self.safe()
            self.exploration.uniform(out=action)
        else:
            self.policy(self.observation, out=action)
            if explore:
                self.exploration.perturb(action, self.exploration_noise)
            if self.filter.blending:
                now_ns = stamp_ns if self.clock is None else self.clock()
                if self.filter.soft_start(action, now_ns):
                    self.counters['soft_starts'] += 1
        if not self.filter.limit(action):
            self.counters['nonfinite_actions'] += 1
            return self.safe()
        self.label = self.mode
        return action


class TickTiming:
    """Wall-clock period and compute time of the control loop, for /diagnostics.

    Fixed-size ring buffers filled every tick (no allocation). :meth:`record` says when a
    report is due (once per second of ticks); :meth:`statistics` then computes the
    percentiles, after that tick's command went out.

    Parameters
    ----------
    control_period : float
        Seconds; a period over 1.5 control periods counts as an overrun.
    window : int
        Ticks the statistics cover.
    """

    def __init__(self, control_period: float, window: int = 1000) -> None:
        self._periods_us = np.zeros(window)
        self._compute_us = np.zeros(window)
        self._control_period_us = control_period * 1e6
        self._report_every = max(1, int(round(1.0 / control_period)))
        self._last_start_ns = 0
        self.ticks = 0
        self.overruns = 0

    def record(self, started_ns: int, finished_ns: int) -> bool:
        """One tick that started and finished at these times; whether a report is due."""
        index = self.ticks % len(self._periods_us)
        self._compute_us[index] = (finished_ns - started_ns) * 1e-3
        if self._last_start_ns:
            period = (started_ns - self._last_start_ns) * 1e-3
            self._periods_us[index] = period
            if period > 1.5 * self._control_period_us:
                self.overruns += 1
        else:
            self._periods_us[index] = self._control_period_us
        self._last_start_ns = started_ns
        self.ticks += 1
        return self.ticks % self._report_every == 0

    def statistics(self) -> dict[str, float | int]:
        """Tick period percentiles and maximum (ms), compute time p99 (µs), overruns."""
        count = min(self.ticks, len(self._periods_us))
        periods, compute = self._periods_us[:count], self._compute_us[:count]
        return {
            'tick_period_p50_ms': round(float(np.percentile(periods, 50)) * 1e-3, 4),
            'tick_period_p99_ms': round(float(np.percentile(periods, 99)) * 1e-3, 4),
            'tick_period_max_ms': round(float(periods.max()) * 1e-3, 4),
            'tick_compute_p99_us': round(float(np.percentile(compute, 99)), 1),
            'tick_overruns': self.overruns,
        }
