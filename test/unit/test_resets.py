"""Resets of a plant the package does not own (core.resets): each provider, to its end."""

import math

import numpy as np
import pytest

from sindyrl_ros.core.episode_control import Settle
from sindyrl_ros.core.resets import RESET_PROVIDERS, ResetProvider, ResetRun
from sindyrl_ros.params.episodes import PROVIDERS

NAMES = ['cos_theta', 'sin_theta', 'theta_dot']
STILL, MOVING = np.array([1.0, 0.0, 0.01]), np.array([1.0, 0.0, 0.5])


def test_the_node_parameter_offers_exactly_the_providers_there_are():
    assert PROVIDERS == RESET_PROVIDERS


def test_a_plant_that_resets_itself_is_only_held_for_the_hold_time():
    at_once = ResetProvider('none', hold=0.0)
    assert not at_once.reset_after_episode  # episode ends need no reset at all
    assert at_once.start(10.0).advance(10.0) == (True, 'none reset done in 0.0 s')
    held = ResetProvider('none', hold=2.0)
    assert held.reset_after_episode
    reset = held.start(10.0)
    assert reset.advance(10.0) is None and reset.advance(11.9) is None
    assert reset.advance(12.0) == (True, 'none reset done in 2.0 s')
    assert not reset.needs_call and not reset.operator_ready()  # nobody to call or wait for


def test_an_operator_reset_waits_for_the_operator_however_long_it_takes():
    provider = ResetProvider('operator', timeout=0.0, hold=0.5)
    assert provider.answer_within == math.inf
    assert provider.waiting_for.startswith('the operator (Enter')
    reset = provider.start(0.0)
    assert reset.advance(3600.0) is None  # no timeout: a person may take long
    assert reset.operator_ready()
    assert reset.advance(3600.1) is None  # the hold after it
    assert reset.advance(3600.6) == (True, 'operator reset done in 3600.6 s')
    # The operator's word counts for the reset it was given to, not the next one.
    assert provider.start(4000.0).advance(4000.0) is None


def test_a_settle_reset_ends_once_the_watched_velocity_stayed_still_long_enough():
    settle = Settle.watching(['theta_dot'], NAMES, tolerance=0.05, duration=1.0)
    provider = ResetProvider('settle', timeout=10.0, settle=settle)
    assert provider.waiting_for == "['theta_dot'] to stay within ±0.05 for 1 s"
    reset = provider.start(0.0)
    assert reset.advance(0.0, None) is None  # no observation yet
    assert reset.advance(0.5, STILL) is None
    assert reset.advance(1.0, MOVING) is None  # moved: the clock starts over
    assert reset.advance(1.2, STILL) is None
    assert reset.advance(2.2, STILL) == (True, 'settle reset done in 2.2 s')
    # The next reset watches anew, from its own start.
    again = provider.start(5.0)
    assert again.advance(5.0, STILL) is None and again.advance(6.0, STILL)[0]


def test_a_settle_reset_names_the_observations_it_could_watch():
    with pytest.raises(ValueError, match=r"out of \['cos_theta', 'sin_theta', 'theta_dot'\]$"):
        Settle.watching([], NAMES, 0.05, 1.0)
    with pytest.raises(ValueError, match=r"\['omega'\] are not observations"):
        Settle.watching(['theta_dot', 'omega'], NAMES, 0.05, 1.0)
    settle = Settle.watching(['sin_theta', 'theta_dot'], NAMES, 0.05, 1.0)
    assert list(settle.indices) == [1, 2] and settle.features == ['sin_theta', 'theta_dot']
    with pytest.raises(ValueError, match='needs the features'):
        ResetProvider('settle')


@pytest.mark.parametrize('kind', ['service', 'simulation_interfaces'])
def test_a_service_reset_calls_once_and_ends_with_the_answer(kind):
    provider = ResetProvider(kind, timeout=5.0, hold=1.0, simulation_services='/gzserver')
    assert provider.calls_a_service and provider.simulation == (kind != 'service')
    reset = provider.start(0.0)
    assert reset.needs_call
    reset.call_sent()
    assert not reset.needs_call and reset.advance(1.0) is None  # the answer is awaited
    reset.answered(True, '/robot/home: homed')
    assert reset.advance(1.5) is None and not reset.needs_call  # the hold
    assert reset.advance(2.5) == (True, f'{kind} reset done in 2.5 s')
    failed = provider.start(10.0)
    failed.call_sent()
    failed.answered(False, '/robot/home: no answer')
    assert failed.advance(10.1) == (False, '/robot/home: no answer')  # no hold after a failure


def test_a_reset_that_takes_longer_than_its_timeout_fails_saying_so():
    provider = ResetProvider('service', timeout=1.5, service='/robot/home')
    assert provider.waiting_for == 'the reset service /robot/home'
    assert provider.answer_within == 1.5 + 0.0 + 5.0  # the request outlives the reset
    reset = provider.start(0.0)
    reset.call_sent()
    assert reset.advance(1.5) is None
    assert reset.advance(1.6) == (False, 'service reset took longer than 1.5 s')
    # A late answer changes nothing for a reset past its deadline.
    reset.answered(True, 'homed')
    assert reset.advance(1.7)[0] is False


def test_what_each_provider_waits_for_and_an_unknown_one():
    waiting = {
        'simulation_interfaces': '/gzserver/reset_simulation',
        'none': 'the plant to reset itself',
    }
    for kind, text in waiting.items():
        assert ResetProvider(kind, simulation_services='/gzserver').waiting_for == text
    with pytest.raises(ValueError, match='none of'):
        ResetProvider('teleport')
    assert isinstance(ResetProvider('none').start(0.0), ResetRun)
