"""The plausibility window of a sensor's message stamps, and its order check.

A sensor message is measured at its stamp; the node that ingests it judges that stamp by
its own clock (which follows /clock under ``use_sim_time``). :class:`StampWindow` is that
judgement for one input (joint states, IMU or odometry, each with its own window):

* ``invalid_stamp``: negative seconds (a stamp past 2**31 - 1 s wraps to a negative
  int32) or nanoseconds of 10**9 or more;
* ``future_stamp``: more than ``max_future`` seconds ahead of the node clock (clock
  offsets between machines, a message that overtakes its own /clock tick);
* ``out_of_order``: older than the last accepted stamp (the *reference*);
* ``stale``: more than ``max_age`` seconds behind the node clock.

A stamp equal to the reference is *repeated*: a retransmission or a duplicate, which only
the caller, who holds the values, can tell apart.

Only a stamp the caller finally accepts (:meth:`StampWindow.accept`) becomes the
reference, and the future side of the window is checked before the order: otherwise one
stamp an hour ahead would be taken as the reference and every valid message after it
refused as out of order for that hour. For the same reason the reference is dropped when
the node clock goes back (an NTP step, a restarted simulator; reported in
:attr:`StampWindow.clock_step_back_ns`) or has fallen behind it by more than
``max_future`` (the window was narrowed since).

Nothing here knows about ROS: stamps are (sec, nanosec) as in ``builtin_interfaces/Time``
and the node clock is integer nanoseconds.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = [
    'ACCEPTED',
    'FUTURE_STAMP',
    'INVALID_STAMP',
    'OUT_OF_ORDER',
    'REPEATED',
    'STALE',
    'StampVerdict',
    'StampWindow',
    'describe_stamp',
]

NANOSECONDS = 1_000_000_000

# Refusal reasons, named as the sensor node counts them for joint states (an IMU or
# odometry input prefixes its own name: imu_future_stamp, odometry_stale, ...).
INVALID_STAMP = 'invalid_stamp'
FUTURE_STAMP = 'future_stamp'
OUT_OF_ORDER = 'out_of_order'
STALE = 'stale'


class StampVerdict(NamedTuple):
    """What a :class:`StampWindow` says about one stamp.

    ``reason`` is ``''`` for an accepted stamp, ``'repeated'`` for the reference's own
    stamp again, else the refusal reason (:data:`INVALID_STAMP`, :data:`FUTURE_STAMP`,
    :data:`OUT_OF_ORDER`, :data:`STALE`); ``detail`` explains a refusal to a person, with
    the numbers behind it.
    """

    reason: str
    detail: str = ''

    @property
    def accepted(self) -> bool:
        return not self.reason

    @property
    def repeated(self) -> bool:
        return self.reason == 'repeated'

    @property
    def refused(self) -> bool:
        return bool(self.reason) and self.reason != 'repeated'


# The two verdicts without numbers, shared so that a stamp within the window costs nothing.
ACCEPTED = StampVerdict('')
REPEATED = StampVerdict('repeated', 'same stamp as the last accepted')


def describe_stamp(stamp_ns: int) -> str:
    """Integer nanoseconds as ``sec.nanosec`` (how ``ros2 topic echo`` reads a stamp)."""
    return f'{stamp_ns // NANOSECONDS}.{stamp_ns % NANOSECONDS:09d}'


class StampWindow:
    """Plausibility window and order check of one input's stamps.

    Parameters
    ----------
    max_future : float
        Seconds a stamp may be ahead of the node clock; 0 = no future check (and the
        reference is then never dropped for being ahead).
    max_age : float
        Seconds a stamp may be behind the node clock; 0 = no age check.

    Both may be changed between checks (a parameter set at run time).

    Attributes
    ----------
    reference_ns : int or None
        The last accepted stamp, which later stamps must not be older than; None until a
        stamp is accepted and after the reference is dropped.
    clock_step_back_ns : int
        How far the node clock went back since the previous check (0 when it did not);
        set by every :meth:`check` that gets past the stamp's own validity.
    """

    def __init__(self, max_future: float, max_age: float) -> None:
        self.max_future = max_future
        self.max_age = max_age
        self.reference_ns: int | None = None
        self.clock_step_back_ns = 0
        self._last_clock_ns: int | None = None

    def check(self, sec: int, nanosec: int, now_ns: int) -> StampVerdict:
        """Judge the stamp (sec, nanosec) at node clock ``now_ns`` (integer nanoseconds).

        Never makes the stamp the reference (see :meth:`accept`); drops the reference
        when the clock went back or it lies more than ``max_future`` ahead of the clock.
        """
        if sec < 0 or nanosec >= NANOSECONDS or nanosec < 0:
            return StampVerdict(
                INVALID_STAMP,
                f'sec {sec} / nanosec {nanosec} is not a time '
                '(sec must be 0..2**31-1, nanosec below 10**9; a wrapped int32?)',
            )
        last_clock, self._last_clock_ns = self._last_clock_ns, now_ns
        self.clock_step_back_ns = 0
        if last_clock is not None and now_ns < last_clock:
            self.clock_step_back_ns = last_clock - now_ns
            self.reference_ns = None
        stamp_ns = sec * NANOSECONDS + nanosec
        ahead = (stamp_ns - now_ns) * 1e-9
        if self.max_future > 0.0 and ahead > self.max_future:
            return StampVerdict(
                FUTURE_STAMP,
                f'{ahead:.3f} s ahead of the node clock (max_future {self.max_future} s)',
            )
        reference = self.reference_ns
        if (
            reference is not None
            and self.max_future > 0.0
            and (reference - now_ns) * 1e-9 > self.max_future
        ):
            reference = self.reference_ns = None  # accepted before the clock stepped back
        if reference is not None and stamp_ns == reference:
            return REPEATED
        if reference is not None and stamp_ns < reference:
            return StampVerdict(
                OUT_OF_ORDER, f'older than the last accepted {describe_stamp(reference)}'
            )
        if self.max_age > 0.0 and -ahead > self.max_age:
            return StampVerdict(
                STALE, f'{-ahead:.3f} s old by the node clock (max_age {self.max_age} s)'
            )
        return ACCEPTED

    def accept(self, stamp_ns: int) -> None:
        """Make ``stamp_ns`` the reference: the caller accepted the message it stamps."""
        self.reference_ns = stamp_ns
