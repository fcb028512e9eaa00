"""The stamp window of a sensor input: plausibility, order reference, clock steps back.

Stamps and the node clock are plain integers here, as the sensor node hands them over
(``builtin_interfaces/Time`` sec / nanosec, the clock in nanoseconds).
"""

import pytest

from sindyrl_ros.core.stamps import (
    ACCEPTED,
    FUTURE_STAMP,
    INVALID_STAMP,
    OUT_OF_ORDER,
    REPEATED,
    STALE,
    StampWindow,
    describe_stamp,
)

SECOND = 1_000_000_000
NOW = 1000 * SECOND


def split(stamp_ns):
    """(sec, nanosec) of a stamp in nanoseconds."""
    return divmod(stamp_ns, SECOND)


def check(window, stamp_ns, now_ns=NOW):
    return window.check(*split(stamp_ns), now_ns)


def take(window, stamp_ns, now_ns=NOW):
    """Check a stamp and, when the window accepts it, accept it as the caller would."""
    verdict = check(window, stamp_ns, now_ns)
    if verdict.accepted:
        window.accept(stamp_ns)
    return verdict


def test_a_stamp_within_the_window_is_accepted_and_costs_no_new_verdict():
    window = StampWindow(max_future=0.1, max_age=1.0)
    for stamp in (NOW, NOW + 50_000_000, NOW + 100_000_000):  # up to max_future ahead
        assert take(window, stamp) is ACCEPTED
    window = StampWindow(max_future=0.1, max_age=1.0)
    assert take(window, NOW - SECOND) is ACCEPTED  # exactly max_age old
    verdict = check(window, NOW - SECOND)
    assert verdict is REPEATED and verdict.repeated and not verdict.refused


def test_a_far_future_stamp_is_refused_and_never_becomes_the_reference():
    window = StampWindow(max_future=0.1, max_age=1.0)
    assert take(window, NOW - 10_000_000).accepted
    verdict = take(window, NOW + 3600 * SECOND)
    assert verdict.reason == FUTURE_STAMP and verdict.refused
    assert '3600.000 s ahead' in verdict.detail and 'max_future 0.1 s' in verdict.detail
    assert window.reference_ns == NOW - 10_000_000
    # The next valid stamp is not refused as older than the one an hour ahead.
    assert take(window, NOW) is ACCEPTED and window.reference_ns == NOW
    # Nor is it on a window that has accepted nothing yet.
    fresh = StampWindow(max_future=0.1, max_age=1.0)
    assert take(fresh, NOW + 3600 * SECOND).reason == FUTURE_STAMP
    assert fresh.reference_ns is None and take(fresh, NOW) is ACCEPTED


def test_max_future_zero_disables_the_future_check():
    window = StampWindow(max_future=0.0, max_age=1.0)
    assert take(window, NOW + 3600 * SECOND) is ACCEPTED
    # Then the reference is kept, whatever the clock: that is what 0 asks for.
    assert check(window, NOW).reason == OUT_OF_ORDER


def test_only_what_the_caller_accepts_becomes_the_reference():
    window = StampWindow(max_future=0.1, max_age=1.0)
    assert check(window, NOW) is ACCEPTED  # checked, then refused by the caller
    assert window.reference_ns is None
    assert check(window, NOW - 1) is ACCEPTED  # so an older stamp is not out of order
    window.accept(NOW - 1)
    assert window.reference_ns == NOW - 1


def test_an_older_stamp_than_the_reference_is_out_of_order_and_the_same_one_repeated():
    window = StampWindow(max_future=0.1, max_age=1.0)
    assert take(window, NOW) is ACCEPTED
    verdict = check(window, NOW - 1)
    assert verdict.reason == OUT_OF_ORDER and verdict.refused
    assert describe_stamp(NOW) in verdict.detail
    assert check(window, NOW) is REPEATED
    assert window.reference_ns == NOW


def test_a_stale_stamp_is_refused_unless_max_age_is_zero():
    window = StampWindow(max_future=0.1, max_age=1.0)
    verdict = check(window, NOW - 5 * SECOND)
    assert verdict.reason == STALE and verdict.refused
    assert '5.000 s old' in verdict.detail and 'max_age 1.0 s' in verdict.detail
    assert window.reference_ns is None
    assert check(StampWindow(max_future=0.1, max_age=0.0), NOW - 900 * SECOND) is ACCEPTED


def test_order_comes_before_age():
    """An old stamp that is also older than the reference is counted as out of order."""
    window = StampWindow(max_future=0.1, max_age=1.0)
    assert take(window, NOW) is ACCEPTED
    assert check(window, NOW - 5 * SECOND).reason == OUT_OF_ORDER


@pytest.mark.parametrize(
    'sec, nanosec',
    [(-1, 0), (-(2**31), 0), (-1, 999_999_999), (1000, 1_000_000_000), (1000, 2**32 - 1)],
)
def test_a_stamp_that_is_not_a_time_is_invalid(sec, nanosec):
    window = StampWindow(max_future=0.0, max_age=0.0)  # even with no window at all
    verdict = window.check(sec, nanosec, NOW)
    assert verdict.reason == INVALID_STAMP and verdict.refused
    assert f'sec {sec} / nanosec {nanosec}' in verdict.detail
    assert window.reference_ns is None


def test_the_largest_time_is_valid_and_far_in_the_future():
    window = StampWindow(max_future=0.1, max_age=1.0)
    assert window.check(2**31 - 1, 999_999_999, NOW).reason == FUTURE_STAMP
    latest = (2**31 - 1) * SECOND + 999_999_999
    assert window.check(2**31 - 1, 999_999_999, latest) is ACCEPTED


def test_a_clock_step_back_drops_the_reference_and_is_reported_once():
    window = StampWindow(max_future=0.1, max_age=1.0)
    assert take(window, NOW) is ACCEPTED
    assert window.clock_step_back_ns == 0
    earlier = NOW - 900 * SECOND  # a restarted simulator, an NTP step
    assert take(window, earlier, now_ns=earlier) is ACCEPTED  # not out of order
    assert window.clock_step_back_ns == 900 * SECOND
    assert window.reference_ns == earlier
    assert take(window, earlier + 1, now_ns=earlier + 1) is ACCEPTED
    assert window.clock_step_back_ns == 0  # reported by the check that saw it only


def test_a_clock_step_back_is_noticed_even_by_a_refused_stamp():
    window = StampWindow(max_future=0.1, max_age=1.0)
    assert take(window, NOW) is ACCEPTED
    earlier = NOW - 900 * SECOND
    assert check(window, earlier - 5 * SECOND, now_ns=earlier).reason == STALE
    assert window.clock_step_back_ns == 900 * SECOND and window.reference_ns is None
    assert take(window, earlier, now_ns=earlier) is ACCEPTED


def test_an_invalid_stamp_does_not_read_the_clock():
    window = StampWindow(max_future=0.1, max_age=1.0)
    assert take(window, NOW) is ACCEPTED
    assert window.check(-1, 0, NOW - 900 * SECOND).reason == INVALID_STAMP
    assert window.clock_step_back_ns == 0 and window.reference_ns == NOW
    # The next valid stamp sees the step back.
    assert take(window, NOW - 900 * SECOND, now_ns=NOW - 900 * SECOND) is ACCEPTED
    assert window.clock_step_back_ns == 900 * SECOND


def test_a_reference_ahead_of_a_narrowed_window_is_dropped():
    """max_future narrowed at run time: a reference accepted before lies beyond it."""
    window = StampWindow(max_future=0.1, max_age=1.0)
    assert take(window, NOW + 80_000_000) is ACCEPTED
    window.max_future = 0.01
    assert take(window, NOW + 5_000_000) is ACCEPTED  # not out of order
    assert window.reference_ns == NOW + 5_000_000
    # Within the window the reference stays: an older stamp is out of order.
    assert check(window, NOW).reason == OUT_OF_ORDER


def test_a_widened_max_age_applies_to_the_next_check():
    window = StampWindow(max_future=0.1, max_age=1.0)
    assert check(window, NOW - 5 * SECOND).reason == STALE
    window.max_age = 10.0
    assert check(window, NOW - 5 * SECOND) is ACCEPTED


def test_describe_stamp_reads_like_a_message_stamp():
    assert describe_stamp(12 * SECOND + 5) == '12.000000005'
    assert describe_stamp(0) == '0.000000000'
