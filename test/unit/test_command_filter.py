"""The controller's decisions (core.command_filter), without ROS: one rule per test.

Limits, rate limit, soft start, finiteness, the watchdog, the e-stop latch, the stamp
trigger's grid, the policy check and the tick statistics; then the whole loop as the
controller node drives it. Times are plain numbers: stamps in integer nanoseconds, the
watchdog's clock in seconds.
"""

import math

import numpy as np
import pytest

from sindyrl_ros.core.command_filter import (
    OUTPUT_TOLERANCE,
    SAFE,
    CommandFilter,
    CommandLimits,
    Exploration,
    PolicyCheck,
    SafetyState,
    StampGrid,
    command_limits,
)
from sindyrl_ros.core.control_loop import ControlLoop, TickTiming
from sindyrl_ros.core.policies import NumpyPolicy, SparsePolynomialPolicy
from sindyrl_ros.core.protocol import exploration_scale
from sindyrl_ros.params import ParameterError

MS = 1_000_000  # nanoseconds
OBSERVATIONS = ['cos_theta', 'sin_theta', 'theta_dot']
ACTIONS = ['torque']


class FixedPolicy(NumpyPolicy):
    """A policy whose action is a settable value, whatever the observation."""

    kind = 'fixed'

    def __init__(
        self, value, observation_names=OBSERVATIONS, action_names=ACTIONS, low=-2, high=2
    ):
        m = len(action_names)
        super().__init__(observation_names, action_names, [low] * m, [high] * m)
        self.value = np.full(m, value, dtype=np.float64)

    @property
    def n_parameters(self):
        return len(self.value)

    def __call__(self, observation, out=None):
        out = self._output if out is None else out
        out[:] = self.value
        return out

    def act_batch(self, observations):
        return np.tile(self.value, (len(self._check_batch(observations)), 1))


class FirstObservationPolicy(FixedPolicy):
    """Action = the first observation, unclipped (to feed NaN, Inf and wild values through)."""

    def __call__(self, observation, out=None):
        out = self._output if out is None else out
        out[:] = observation[0]
        return out

    def act_batch(self, observations):
        return np.repeat(self._check_batch(observations)[:, :1], len(self.action_names), axis=1)


def limits(low=(-2.0,), high=(2.0,), safe=(0.0,), period=0.05):
    names = [f'a{i}' for i in range(len(low))] if len(low) > 1 else ACTIONS
    return CommandLimits(
        OBSERVATIONS, names, np.array(low), np.array(high), np.array(safe), period
    )


def parameters(**changes):
    values = {
        'observation_names': OBSERVATIONS,
        'action_names': ACTIONS,
        'action_low': [-2.0],
        'action_high': [2.0],
        'control_rate': 0.0,
        'control_period': 0.05,
        'safe_command': [],
    }
    values.update(changes)
    return values


# ----------------------------------------------------------------------- configuration


def test_limits_from_parameters_default_to_a_zero_safe_command_and_prefer_the_rate():
    result = command_limits(parameters())
    assert result.observation_names == OBSERVATIONS and result.action_names == ACTIONS
    assert result.action_low.tolist() == [-2.0] and result.action_high.tolist() == [2.0]
    assert result.safe_command.tolist() == [0.0]
    assert result.control_period == 0.05
    assert command_limits(parameters(control_rate=200.0)).control_period == 1 / 200.0
    safe = command_limits(parameters(safe_command=[-0.5])).safe_command
    assert safe.tolist() == [-0.5]


@pytest.mark.parametrize(
    'changes, parameter, text',
    [
        ({'observation_names': []}, 'observation_names', 'must not be empty'),
        ({'action_names': ['a', 'a']}, 'action_names', 'unique'),
        ({'action_low': [-2.0, -1.0]}, 'action_low', 'expected 1 values (one per action), got 2'),
        ({'action_high': []}, 'action_high', 'expected 1 values'),
        ({'action_low': [2.0]}, 'action_low', 'must be below action_high'),
        ({'control_period': 0.0}, 'control_rate', 'set control_rate or control_period'),
        ({'safe_command': [0.0, 0.0]}, 'safe_command', 'expected 1 values'),
        ({'safe_command': [2.5]}, 'safe_command', 'outside the action limits'),
    ],
)
def test_a_bad_configuration_names_the_parameter(changes, parameter, text):
    with pytest.raises(ParameterError) as error:
        command_limits(parameters(**changes))
    assert error.value.parameter == parameter
    assert text in error.value.problem


def test_task_limits_replace_the_parameters_but_only_after_the_lengths_are_checked():
    calls = []

    def task_limits():
        calls.append(1)
        return [-1.0], [1.0]

    result = command_limits(parameters(), task_limits)
    assert result.action_low.tolist() == [-1.0] and result.action_high.tolist() == [1.0]
    # A safe command inside the parameters' limits but outside the task's is refused.
    with pytest.raises(ParameterError, match='safe_command'):
        command_limits(parameters(safe_command=[1.5]), task_limits)
    calls.clear()
    with pytest.raises(ParameterError, match='action_low'):
        command_limits(parameters(action_low=[-2.0, -2.0]), task_limits)
    assert calls == []  # the length problem is reported first


# ----------------------------------------------------------------------- limits


def test_every_action_is_clipped_to_the_limits_channel_by_channel():
    command = CommandFilter([-1.0, -2.0, 0.0], [1.0, 2.0, 5.0], [0.0, 0.0, 0.0], 0.01)
    action = np.array([3.0, -7.0, 2.5])
    assert command.limit(action)
    assert action.tolist() == [1.0, -2.0, 2.5]


def test_the_rate_limit_allows_rate_times_period_per_tick_from_the_last_command_sent():
    command = CommandFilter([-10.0], [10.0], [0.0], control_period=0.1, rate_limit=5.0)
    sent = []
    for _ in range(5):
        action = np.array([10.0])
        assert command.limit(action)
        command.sent(action)
        sent.append(round(float(action[0]), 12))
    assert sent == [0.5, 1.0, 1.5, 2.0, 2.5]  # 5 units/s at 10 Hz: 0.5 per tick
    action = np.array([-10.0])
    command.limit(action)
    assert action[0] == pytest.approx(2.0)  # down as fast as up
    command.rate_limit = 0.0  # a parameter set at run time: no limit
    action = np.array([-10.0])
    command.limit(action)
    assert action[0] == -10.0


def test_the_safe_command_is_exempt_from_the_rate_limit():
    loop = ControlLoop(limits(safe=(-0.5,), period=0.1), rate_limit=1.0)
    loop.filter.sent(np.array([2.0]))  # far from the safe command
    assert loop.safe().tolist() == [-0.5]  # at once: stopping beats smoothness
    assert loop.filter.admissible(loop.safe())


def test_a_nan_action_is_not_finite_an_infinite_one_is_clipped_to_the_limit():
    command = CommandFilter([-2.0], [2.0], [0.0], 0.05, rate_limit=100.0)
    assert not command.limit(np.array([np.nan]))
    for value, expected in ((np.inf, 2.0), (-np.inf, -2.0)):
        action = np.array([value])
        assert command.limit(action)
        assert action[0] == expected


def test_the_last_check_refuses_non_finite_and_out_of_limit_commands():
    command = CommandFilter([-2.0, -1.0], [2.0, 1.0], [0.0, 0.0], 0.05)
    assert command.admissible(np.array([2.0, -1.0]))
    for bad in ([np.nan, 0.0], [0.0, np.inf], [-np.inf, 0.0], [2.0 + 1e-12, 0.0], [0.0, -1.5]):
        assert not command.admissible(np.array(bad)), bad


# ----------------------------------------------------------------------- soft start


def blend_once(command, policy_value, now_ns):
    action = np.array([policy_value])
    started = command.soft_start(action, now_ns)
    assert command.limit(action)
    command.sent(action)
    return float(action[0]), started


def test_soft_start_weights_rise_linearly_from_the_last_command_to_the_policy():
    command = CommandFilter([-2.0], [2.0], [0.0], 0.01, soft_start_time=1.0)
    command.sent(np.array([-1.0]))  # what the actuators got before the swap
    command.policy_swapped()
    assert command.blending
    values = []
    for t_ms in (0, 250, 500, 750, 1000, 1100):
        value, started = blend_once(command, 1.0, 5000 * MS + t_ms * MS)
        values.append(round(value, 12))
        assert started == (t_ms == 0)
    # (1 - w) * previous + w * policy with w = t / soft_start_time, from previous = -1.
    assert values == [-1.0, -0.5, 0.0, 0.5, 1.0, 1.0]
    assert not command.blending  # done: the policy drives alone


def test_soft_start_interrupted_by_the_safe_command_starts_again_from_it():
    command = CommandFilter([-2.0], [2.0], [0.5], 0.01, soft_start_time=1.0)
    command.sent(np.array([-2.0]))
    command.policy_swapped()
    blend_once(command, 2.0, 0)
    value, _ = blend_once(command, 2.0, 500 * MS)
    assert value == pytest.approx(0.0)  # halfway from -2 to 2
    command.sent(command.safe())  # e-stop, watchdog, deactivate ...
    assert command.blending
    value, started = blend_once(command, 2.0, 900 * MS)
    assert started and value == pytest.approx(0.5)  # from the safe command, weight 0
    value, _ = blend_once(command, 2.0, 1400 * MS)
    assert value == pytest.approx(0.5 + 0.5 * (2.0 - 0.5))


def test_soft_start_restarts_when_the_clock_goes_back_and_zero_time_jumps():
    command = CommandFilter([-2.0], [2.0], [0.0], 0.01, soft_start_time=1.0)
    command.policy_swapped()
    blend_once(command, 1.0, 10_000 * MS)
    value, started = blend_once(command, 1.0, 200 * MS)  # a simulation reset
    assert not started and value == pytest.approx(0.0)
    value, _ = blend_once(command, 1.0, 700 * MS)
    assert value == pytest.approx(0.5)
    jump = CommandFilter([-2.0], [2.0], [0.0], 0.01, soft_start_time=0.0)
    jump.policy_swapped()
    assert not jump.blending


# ----------------------------------------------------------------------- watchdog, e-stop


def test_the_watchdog_trips_after_the_timeout_once_and_clears_on_an_observation():
    safety = SafetyState(observation_timeout=0.5)
    assert not safety.armed
    safety.observed(100.0)
    assert safety.armed
    assert not safety.check_watchdog(100.5) and not safety.watchdog_tripped  # 0.5 s: fresh
    assert safety.check_watchdog(100.51) and safety.watchdog_tripped  # tripped: a change
    assert not safety.check_watchdog(101.0) and safety.watchdog_tripped  # still: no change
    safety.observed(101.2)
    assert safety.check_watchdog(101.2) and not safety.watchdog_tripped
    safety.observation_timeout = 2.0  # set at run time
    assert not safety.check_watchdog(103.0)


def test_the_estop_latches_until_an_explicit_false():
    safety = SafetyState(observation_timeout=0.5)
    assert not safety.on_estop(False) and not safety.holding  # nothing to release
    assert safety.on_estop(True) and safety.estop and safety.holding
    assert not safety.on_estop(True) and safety.estop  # a repeated true: still latched
    safety.observed(1.0)  # more observations do not release it
    assert not safety.check_watchdog(1.0) and safety.holding
    assert safety.on_estop(False) and not safety.estop and not safety.holding


def test_deactivation_holds_the_safe_command_until_activated():
    safety = SafetyState(observation_timeout=0.5, active=False)
    assert safety.holding
    assert not safety.on_activate(False)
    assert safety.on_activate(True) and not safety.holding
    safety.on_estop(True)
    assert safety.active and safety.holding  # active, but the e-stop still holds


# ----------------------------------------------------------------------- stamp trigger


def test_the_stamp_grid_answers_one_observation_per_period_with_ten_percent_early_tolerance():
    grid = StampGrid(control_period=0.01)  # 100 Hz control, 1 kHz joint states
    answered = [t for t in range(0, 50) if grid.due(1_000 * MS + t * MS)]
    # The state 1 ms (exactly 10 %) before each grid point counts for it; the grid itself
    # stays at 1000 + 10 k ms, so one state per period is answered and none drifts.
    assert answered == [0, 9, 19, 29, 39, 49]
    assert grid.next_ns == 1_060 * MS
    grid = StampGrid(control_period=0.01)
    assert grid.due(0)
    assert not grid.due(8_900_000)  # 1.1 ms early: before the tolerance
    assert grid.due(9_000_000)  # exactly 10 % early: counts for the grid point at 10 ms
    assert not grid.due(10_000_000)  # that grid point is taken
    assert grid.due(19_500_000)  # the next, 0.5 ms early: no drift, the grid stays put
    assert grid.next_ns == 30_000_000


def test_the_stamp_grid_reanchors_after_a_gap_of_more_than_a_period():
    grid = StampGrid(control_period=0.01)
    assert grid.due(0)
    assert grid.due(10 * MS)
    assert grid.due(20 * MS + 10 * MS + 1)  # more than a period past the next point
    assert grid.next_ns == 40 * MS + 1
    assert not grid.due(35 * MS)


# ----------------------------------------------------------------------- policy check


def check(capacity=100):
    return PolicyCheck(OBSERVATIONS, ACTIONS, [-2.0], [2.0], capacity)


def test_a_good_policy_passes_the_check():
    gate = check()
    assert gate.problem(FixedPolicy(1.5)) is None
    assert gate.problem(FixedPolicy(2.0 + 0.5 * OUTPUT_TOLERANCE)) is None  # rounding only


def test_the_check_refuses_other_names():
    gate = check()
    other = FixedPolicy(0.0, observation_names=['cos_theta', 'theta_dot', 'sin_theta'])
    assert 'observation names' in gate.problem(other)
    assert 'action names' in gate.problem(FixedPolicy(0.0, action_names=['force']))
    assert 'action names' in gate.problem(FixedPolicy(0.0, action_names=['torque', 'b']))


def test_the_check_refuses_non_finite_or_out_of_limit_outputs_on_recent_observations():
    gate = check(capacity=3)
    policy = FirstObservationPolicy(0.0, low=-10, high=10)
    assert gate.problem(policy) is None  # the zero observation, until one arrives
    gate.observe(np.array([1.9, 0.0, 0.0]))
    assert gate.problem(policy) is None
    gate.observe(np.array([np.nan, 0.0, 0.0]))
    assert 'non-finite' in gate.problem(policy)
    for _ in range(3):  # pushed out of the ring of 3 recent observations
        gate.observe(np.array([0.5, 0.0, 0.0]))
    assert gate.problem(policy) is None
    gate.observe(np.array([2.5, 0.0, 0.0]))
    assert 'leave the limits' in gate.problem(policy)


def test_the_check_is_total():
    gate = check()

    class Broken(FixedPolicy):
        def act_batch(self, observations):
            raise RuntimeError('boom')

    class WrongShape(FixedPolicy):
        def act_batch(self, observations):
            return np.zeros((1, 2))

    class NoNames(FixedPolicy):
        @property
        def observation_names(self):
            raise KeyError('names')

        @observation_names.setter
        def observation_names(self, value):
            pass

    assert gate.problem(Broken(0.0)).startswith('evaluation failed')
    assert gate.problem(WrongShape(0.0)).startswith('act_batch gave shape')
    assert gate.problem(NoNames(0.0)).startswith('check failed')


# ----------------------------------------------------------------------- exploration


def test_exploration_is_uniform_within_the_limits_without_a_policy_and_scaled_noise_with():
    explore = Exploration([-2.0, 0.0], [2.0, 10.0], seed=3)
    samples = np.array([explore.uniform(out=np.zeros(2)).copy() for _ in range(2000)])
    assert np.all(samples >= [-2.0, 0.0]) and np.all(samples < [2.0, 10.0])
    assert samples.mean(axis=0) == pytest.approx([0.0, 5.0], abs=0.3)
    noise = np.array([explore.perturb(np.zeros(2), 0.1).copy() for _ in range(4000)])
    scale = exploration_scale(0.1, [-2.0, 0.0], [2.0, 10.0])  # the one definition
    assert noise.std(axis=0) == pytest.approx(scale, rel=0.1)
    untouched = np.array([0.25, 0.5])
    assert explore.perturb(untouched, 0.0).tolist() == [0.25, 0.5]


def test_exploration_is_reproducible_by_seed():
    draws = []
    for _ in range(2):
        explore = Exploration([-2.0], [2.0], seed=7)
        draws.append([float(explore.uniform(out=np.zeros(1))[0]) for _ in range(5)])
    assert draws[0] == draws[1]


# ----------------------------------------------------------------------- tick timing


def test_tick_timing_reports_once_a_second_of_ticks_with_periods_and_overruns():
    timing = TickTiming(control_period=0.01, window=1000)
    due = []
    start = 0
    for tick in range(200):
        start += 10 * MS if tick != 150 else 30 * MS  # one late tick
        due.append(timing.record(start, start + 50_000))
    assert [i for i, d in enumerate(due) if d] == [99, 199]  # every 100 ticks at 100 Hz
    stats = timing.statistics()
    assert stats['tick_period_p50_ms'] == pytest.approx(10.0)
    assert stats['tick_period_max_ms'] == pytest.approx(30.0)
    assert stats['tick_compute_p99_us'] == pytest.approx(50.0)
    assert stats['tick_overruns'] == 1


# ----------------------------------------------------------------------- the whole loop


def test_the_loop_answers_by_trigger_and_refuses_out_of_order_observations():
    counters = {}
    loop = ControlLoop(limits(), trigger='observation', counters=counters)
    observation = np.array([1.0, 0.0, 0.0])
    assert loop.observe(observation, 100, now=1.0) and loop.due(100)
    assert loop.observe(observation, 100, now=1.1)  # re-sent: answered again
    assert not loop.observe(observation, 99, now=1.2)
    assert loop.stamp_ns == 100
    assert counters['observations'] == 2 and counters['repeated_observations'] == 1
    timer = ControlLoop(limits(), trigger='timer')
    timer.observe(observation, 100, now=1.0)
    assert not timer.due(100)  # the timer answers, not the observation
    stamp = ControlLoop(limits(period=0.01), trigger='stamp')
    assert [t for t in range(0, 25, 2) if stamp.due(t * MS)] == [0, 10, 20]


def test_the_loop_sends_the_safe_command_without_a_policy_in_evaluate_mode_random_in_explore():
    counters = {}
    loop = ControlLoop(limits(safe=(-0.5,)), mode='evaluate', counters=counters)
    loop.observe(np.zeros(3), 0, now=0.0)
    assert loop.command(0).tolist() == [-0.5] and loop.label == SAFE
    assert counters['safe_commands'] == 1
    loop.update('mode', 'explore')
    values = {float(loop.command(t)[0]) for t in range(20)}
    assert loop.label == 'explore' and len(values) == 20
    assert all(-2.0 <= v <= 2.0 for v in values)


def test_the_loop_holds_the_safe_command_on_estop_and_deactivation_and_counts_nan_actions():
    counters = {}
    loop = ControlLoop(limits(safe=(0.25,)), mode='evaluate', counters=counters)
    policy = FirstObservationPolicy(0.0)
    assert loop.swap_in(policy) is None and counters['policy_swaps'] == 1
    loop.observe(np.array([1.0, 0.0, 0.0]), 0, now=0.0)
    assert loop.command(0).tolist() == [1.0] and loop.label == 'evaluate'
    loop.safety.on_estop(True)
    assert loop.command(0).tolist() == [0.25] and loop.label == SAFE
    loop.safety.on_estop(True)
    assert loop.command(0).tolist() == [0.25]
    loop.safety.on_estop(False)
    loop.safety.on_activate(False)
    assert loop.command(0).tolist() == [0.25]
    loop.safety.on_activate(True)
    loop.observe(np.array([np.nan, 0.0, 0.0]), 1, now=0.1)
    assert loop.command(1).tolist() == [0.25] and loop.label == SAFE
    assert counters['nonfinite_actions'] == 1


def test_the_loop_refuses_a_bad_policy_and_keeps_the_current_one():
    loop = ControlLoop(limits(), mode='evaluate')
    good = FixedPolicy(1.0)
    assert loop.swap_in(good) is None
    loop.observe(np.array([5.0, 0.0, 0.0]), 0, now=0.0)
    assert 'leave the limits' in loop.swap_in(FirstObservationPolicy(0.0, low=-10, high=10))
    assert loop.policy is good and loop.counters['policy_swaps'] == 1


def test_the_loop_blends_a_new_policy_in_on_the_stamps_and_restarts_after_a_safe_command():
    loop = ControlLoop(limits(safe=(0.0,)), mode='evaluate', soft_start_time=1.0)
    loop.observe(np.zeros(3), 0, now=0.0)
    loop.filter.sent(loop.command(0))  # no policy: the safe command
    assert loop.swap_in(FixedPolicy(2.0)) is None
    sent = []
    for t_ms in (0, 500, 1000):
        loop.filter.sent(loop.command(t_ms * MS))
        sent.append(float(loop.filter.previous[0]))
    assert sent == pytest.approx([0.0, 1.0, 2.0])
    assert loop.counters['soft_starts'] == 1


def test_the_loop_uses_its_clock_for_the_soft_start_under_the_timer_trigger():
    now = [0]
    loop = ControlLoop(
        limits(), trigger='timer', mode='evaluate', soft_start_time=1.0, clock=lambda: now[0]
    )
    loop.observe(np.zeros(3), 0, now=0.0)
    loop.swap_in(FixedPolicy(2.0))
    loop.filter.sent(loop.command(0))
    now[0] = 250 * MS
    assert loop.command(0)[0] == pytest.approx(0.5)  # the stamp stayed 0: the clock counts


def test_the_loop_counts_watchdog_trips_and_takes_run_time_settings():
    loop = ControlLoop(limits(), observation_timeout=0.5)
    loop.observe(np.zeros(3), 0, now=10.0)
    assert loop.check_watchdog(11.0) and loop.counters['watchdog_trips'] == 1
    assert not loop.check_watchdog(12.0) and loop.counters['watchdog_trips'] == 1
    for name, value in (
        ('observation_timeout', 5.0),
        ('rate_limit', 3.0),
        ('soft_start_time', 0.2),
        ('exploration_noise', 0.3),
        ('mode', 'evaluate'),
    ):
        assert loop.update(name, value)
    assert loop.safety.observation_timeout == 5.0 and loop.filter.rate_limit == 3.0
    assert loop.filter.soft_start_time == 0.2 and loop.exploration_noise == 0.3
    assert loop.mode == 'evaluate'
    assert not loop.update('seed', 3)  # fixed at start


def test_a_sparse_polynomial_policy_drives_the_loop_without_allocating_arrays():
    policy = SparsePolynomialPolicy(
        [[0, 0, 0], [1, 0, 0]], [[0.0], [1.5]], OBSERVATIONS, ACTIONS, [-2.0], [2.0]
    )
    loop = ControlLoop(limits(period=0.01), mode='evaluate', rate_limit=10.0)
    assert loop.swap_in(policy) is None
    observation = np.array([1.0, 0.0, 0.0])
    loop.observe(observation, 0, now=0.0)
    first = loop.command(0)
    assert first.tolist() == [pytest.approx(0.1)]  # rate-limited from 0 by 10 * 0.01
    loop.filter.sent(first)
    assert loop.command(10 * MS) is first  # the same preallocated buffer every tick
    assert math.isclose(float(first[0]), 0.2)
