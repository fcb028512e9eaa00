"""The serial bridge's rules, against a rig played by the test on a real pseudo-terminal.

The test writes the rig's STATE frames into the pty and reads back what the bridge sent
(COMMAND, RESET); the bridge's link reads them with pyserial, as in the node. Each test
drives the reader thread's passes itself, so every STATE's effect is seen: the sequence
numbers and what the rig applied, resets, pauses, steps and episodes.
"""

import logging
import math
import threading
import time

import numpy as np
import pytest

from sindyrl_ros.core.episodes import EpisodeLedger
from sindyrl_ros.core.tasks import get_task
from sindyrl_ros.hardware.bridge import (
    SENT_COMMANDS,
    RigBridge,
    bridge_settings,
    command_limits,
    within_task,
)
from sindyrl_ros.hardware.link import Tally
from sindyrl_ros.hardware.ports import PtyPort
from sindyrl_ros.hardware.protocol import (
    Command,
    CommandMode,
    FrameDecoder,
    Heartbeat,
    Reset,
    ResetFlag,
    State,
    StateFlag,
    encode,
)
from sindyrl_ros.params import ParameterError

pytest.importorskip('serial')
LOG = logging.getLogger('test_hardware_bridge')
PERIOD_US = 50_000
OFFSET_NS = 3_000_000_000  # the host's clock is the rig's + 3 s
RESETTING, EPISODE_START = StateFlag.RESETTING, StateFlag.EPISODE_START


def applied_reward(observations, actions, next_observations):
    """A reward that is the applied action: what each step was scored with shows it."""
    return actions[:, 0]


class Rig:
    """The rig's end of a pseudo-terminal, with a bridge on the other end (port open)."""

    def __init__(self, ledger=None, low=(-2.0,), high=(2.0,), **settings) -> None:
        self.port = PtyPort()
        self.report = Tally()
        self.published: list[int] = []
        self.device_us = 0
        self.host_ns = OFFSET_NS
        self._decoder = FrameDecoder()
        values = {'port': self.port.path, 'heartbeat_period': 60.0, 'clock_warmup': 1}
        self.bridge = RigBridge(
            bridge_settings(**{**values, **settings}),
            ['joint'],
            np.array(low),
            np.array(high),
            ledger,
            PERIOD_US,
            self.report,
            LOG,
            lambda state, stamp_ns: self.published.append(stamp_ns),
            lambda: self.host_ns,
        )
        assert self.bridge.link.run_once() == 0.0 and self.bridge.link.is_open
        self.port.write(b'\x00')  # ends a partial frame, as a rig does when it starts

    def received(self) -> list:
        """What the bridge sent since the last call, heartbeats left out."""
        messages = []
        while data := self.port.read():
            messages += self._decoder.feed(data)
        return [message for message in messages if not isinstance(message, Heartbeat)]

    def send(self, flags: int = 0, sequence: int = 0, periods: int = 1) -> None:
        """The rig samples ``periods`` after its last sample and sends the STATE."""
        self.device_us += periods * PERIOD_US
        self.host_ns += periods * PERIOD_US * 1000
        state = State(self.device_us, (0.0,), (0.0,), (0.0,), int(flags), sequence)
        assert self.port.write(encode(state))

    def sample(self, flags: int = 0, sequence: int = 0, periods: int = 1) -> int | None:
        """:meth:`send`, and the bridge reads it; the stamp it was published with, or None."""
        published, frames = len(self.published), self.report.counters['frames']
        self.send(flags, sequence, periods)
        deadline = time.monotonic() + 5.0
        while self.report.counters['frames'] == frames:
            assert time.monotonic() < deadline, 'the bridge read nothing'
            self.bridge.link.run_once()
        return self.published[-1] if len(self.published) > published else None

    def close(self) -> None:
        self.bridge.link.close('test over')
        self.port.close()


@pytest.fixture
def make_rig():
    rigs = []

    def make(*args, **kwargs) -> Rig:
        rigs.append(Rig(*args, **kwargs))
        return rigs[-1]

    yield make
    for rig in rigs:
        rig.close()


def test_commands_are_checked_clipped_and_sent_with_increasing_sequences(make_rig):
    rig = make_rig()
    bridge, counters = rig.bridge, rig.report.counters
    assert rig.sample() is None  # the clock's warm-up
    s0 = rig.sample()
    assert s0 == rig.device_us * 1000 + OFFSET_NS  # the rig's clock on the host's
    bridge.command([1.0], s0)
    bridge.command([5.0], s0)  # beyond the limits: clipped
    bridge.command([math.nan], s0)
    bridge.command([1.0, 2.0], s0)
    assert rig.received() == [Command(1, (1.0,)), Command(2, (2.0,))]
    assert counters['clipped_commands'] == 1 and counters['commands_sent'] == 2
    assert counters['rejected.command_nonfinite'] == counters['rejected.command_length'] == 1
    # The rig's echo of a sequence names the command it applied and the state it answered.
    action, answered = bridge.applied(1)
    assert action.tolist() == [1.0] and answered == s0
    assert bridge.applied(2)[0].tolist() == [2.0]
    assert bridge.applied(0) == (bridge.zero_command, None)  # the rig's own safe command
    assert bridge.applied(99) == (bridge.zero_command, None)
    assert counters['unknown_applied_commands'] == 1
    bridge.watch()  # the time from publishing s0 to its answer
    assert rig.report.values['answer_latency_ms'] != 'unknown'
    # Only the last SENT_COMMANDS are remembered; sequences wrap past 0 (the safe command).
    for _ in range(SENT_COMMANDS):
        bridge.command([0.5], None)
        rig.received()
    assert bridge.applied(1) == (bridge.zero_command, None)
    assert bridge.applied(SENT_COMMANDS + 2)[0].tolist() == [0.5]
    bridge._command_sequence = 0xFFFF_FFFE
    bridge.command([0.5], None)
    bridge.command([0.5], None)
    assert [c.sequence for c in rig.received()] == [0xFFFF_FFFF, 1]


def test_command_mode_is_the_rigs_and_shutdown_leaves_it_at_rest(make_rig):
    rig = make_rig(low=(0.5,), high=(2.0,), command_mode='velocity')
    rig.bridge.command([1.0], None)
    rig.bridge.shutdown()  # the zero command, clipped into the limits
    assert rig.received() == [
        Command(1, (1.0,), CommandMode.VELOCITY),
        Command(2, (0.5,), CommandMode.VELOCITY),
    ]
    rig.port.close()
    assert rig.bridge.link.run_once() > 0  # the port is gone
    rig.bridge.shutdown()  # nothing to write to: nothing sent, nothing counted
    assert rig.report.counters['commands_not_sent'] == 0


def test_a_step_is_two_published_states_scored_with_the_command_the_rig_echoes(make_rig):
    ledger = EpisodeLedger(applied_reward, 3, 'pendulum', observation_wait=10.0)
    rig = make_rig(ledger)
    bridge, counters = rig.bridge, rig.report.counters
    rig.sample()
    s0 = rig.sample()  # the chain starts: no step yet
    bridge.command([1.0], s0)  # sequence 1 answers s0
    s1 = rig.sample(sequence=1)  # applied in time
    bridge.command([1.5], s1)  # sequence 2 answers s1, but comes too late:
    s2 = rig.sample(sequence=1)  # the rig applied sequence 1 again
    assert counters['steps'] == 2 and counters['stale_command_steps'] == 1
    s3 = rig.sample(sequence=2, periods=3)  # two STATEs lost on the way
    assert counters['missed_states'] == 2 and counters['steps'] == 2
    assert ledger.real_steps == 4  # the rig stepped all the same
    s4 = rig.sample()  # the rig's own safe command (sequence 0)
    assert counters['steps'] == 3 and ledger.real_steps == 5
    # Three steps end the episode; the rig is reset after each (reset_each_episode).
    reset = rig.received()[-1]
    assert isinstance(reset, Reset) and reset.flags == ResetFlag.RANDOM_START
    assert bridge.pending_reset.sequence == reset.sequence == 3
    for stamp in (s0, s1, s2, s3, s4):
        bridge.add_observation(stamp, np.zeros(3))
    bridge.add_action(s0, 'explore')
    rewards, records = bridge.poll_ledger()
    assert rewards == [(s0, 1.0), (s1, 1.0), (s3, 0.0)]  # each step's echoed action
    assert records == [
        {
            'episode': 1,
            'return': 2.0,
            'length': 3,
            'real_steps': 5,
            'mode': 'explore',
            'end': 'episode_length',
            'task': 'pendulum',
            'missing_rewards': 0,
        }
    ]
    assert rig.report.values['real_steps'] == 5 and counters['missing_rewards'] == 0


def test_a_reset_follows_the_rigs_answer_and_drops_what_comes_meanwhile(make_rig):
    ledger = EpisodeLedger(None, 100, 'pendulum')
    rig = make_rig(ledger, reset_start='home', reset_retry=0.25)
    bridge, counters = rig.bridge, rig.report.counters
    rig.sample()
    s0 = rig.sample()
    bridge.command([1.0], s0)
    s1 = rig.sample(sequence=1)
    request = bridge.start_reset('test')
    assert rig.received()[-1] == Reset(2, 0)  # home: no RANDOM_START
    assert ledger.episodes_closed == 1 and rig.report.values['resetting'] is True
    assert bridge.start_reset('again') is request  # joins the reset in flight
    bridge.command([1.0], s1)
    assert counters['commands_while_resetting'] == 1 and rig.received() == []
    # A state from before the rig took up the RESET is no episode's.
    assert rig.sample(sequence=1) is None and counters['states_resetting'] == 1
    # No sign of it after reset_retry: sent again.
    bridge.watch_reset(request.sent_at + 0.3)
    assert rig.received() == [Reset(2, 0)] and counters['reset_resends'] == 1
    assert rig.sample(RESETTING, request.sequence) is None and request.acknowledged
    bridge.watch_reset(request.sent_at + 0.3)  # the rig is at it: not sent again
    assert rig.received() == [] and counters['reset_resends'] == 1
    start = rig.sample(EPISODE_START, request.sequence)
    assert start is not None  # the rig's start state is the new episode's first
    assert request.done.is_set() and request.ok and 'start state' in request.message
    assert counters['resets'] == 1 and bridge.pending_reset is None
    assert rig.report.values['resetting'] is False
    # No step spans the reset, and an answer to a state from before it is stale.
    assert counters['steps'] == 1
    bridge.command([1.0], s1)
    assert counters['stale_commands'] == 1 and rig.received() == []
    bridge.command([1.0], start)
    assert rig.received() == [Command(3, (1.0,))]


def test_a_lost_episode_start_ends_the_reset_at_the_next_running_state(make_rig):
    rig = make_rig()
    rig.sample()
    request = rig.bridge.start_reset('test')
    assert rig.sample(RESETTING, request.sequence) is None
    assert rig.sample() is not None  # running again: its EPISODE_START STATE was lost
    assert request.ok and 'EPISODE_START lost' in request.message
    assert rig.report.counters['episode_starts_missed'] == 1


def test_a_reset_the_rig_does_by_itself_ends_the_episode(make_rig):
    ledger = EpisodeLedger(None, 100, 'pendulum')
    rig = make_rig(ledger)
    rig.sample()
    rig.sample()
    rig.sample()
    assert ledger.episode_steps == 1
    assert rig.sample(RESETTING, 0) is None  # an operator pressed the rig's reset button
    assert ledger.episodes_closed == 1 and rig.bridge.pending_reset is None
    assert rig.sample(EPISODE_START, 0) is not None
    assert rig.sample() is not None and ledger.episode_steps == 1


def test_reset_and_wait_answers_once_the_rig_is_at_its_start_state(make_rig):
    rig = make_rig(start_paused=True)
    rig.bridge.start()  # the reader thread reads the STATEs below
    answer = {}
    waiter = threading.Thread(target=lambda: answer.update(r=rig.bridge.reset_and_wait('test')))
    waiter.start()
    deadline = time.monotonic() + 5.0
    sent = []
    while not sent and time.monotonic() < deadline:
        sent = [m for m in rig.received() if isinstance(m, Reset)]
    rig.send(RESETTING, sent[0].sequence)
    rig.send(EPISODE_START, sent[0].sequence)
    waiter.join(timeout=10.0)
    rig.bridge.stop()
    assert answer['r'] == (True, 'the rig is at its start state (held until /plant/pause false)')


def test_a_reset_the_rig_never_answers_fails_after_reset_timeout(make_rig):
    rig = make_rig(reset_timeout=0.2)
    rig.bridge.start()  # the reader thread watches the reset
    assert rig.bridge.reset_and_wait('test') == (
        False,
        'no EPISODE_START from the rig within 0.2 s',
    )
    rig.bridge.stop()
    assert rig.report.counters['resets_failed'] == 1 and 'reset' in rig.report.errors
    assert rig.bridge.pending_reset is None


def test_a_port_that_opens_is_reset_with_reset_on_connect(make_rig):
    rig = make_rig(reset_on_connect=True)
    assert rig.received() == [Reset(1, ResetFlag.RANDOM_START)]
    assert rig.bridge.pending_reset.sequence == 1


def test_pause_holds_the_rig_on_the_zero_command_and_counts_no_step(make_rig):
    ledger = EpisodeLedger(None, 100, 'pendulum')
    rig = make_rig(ledger, low=(0.5,), high=(2.0,))
    bridge, counters = rig.bridge, rig.report.counters
    rig.sample()
    s0 = rig.sample()
    bridge.command([1.0], s0)
    s1 = rig.sample(sequence=1)
    assert bridge.pause(True) == 'paused after 1 real steps'
    assert bridge.pause(True) == 'already paused' and counters['pauses'] == 1
    assert rig.received() == [Command(1, (1.0,)), Command(2, (0.5,))]  # zero, clipped
    # A rig cannot stop time: each STATE gets the zero command, none is published.
    assert rig.sample(sequence=2) is None and counters['states_paused'] == 1
    assert rig.received() == [Command(3, (0.5,))]
    bridge.command([1.0], s1)
    assert counters['commands_while_paused'] == 1 and rig.received() == []
    assert bridge.pause(False).startswith('resumed after')
    assert bridge.pause(False) == 'not paused' and rig.report.values['paused'] is False
    s2 = rig.sample(sequence=3)
    assert s2 is not None and counters['steps'] == 1  # no step spans the pause
    bridge.command([1.0], s1)  # an answer to a state from before the pause
    assert counters['stale_commands'] == 1 and rig.received() == []


def test_a_rig_restart_breaks_the_chain_of_states(make_rig):
    ledger = EpisodeLedger(None, 100, 'pendulum')
    rig = make_rig(ledger)
    rig.device_us = 5_000_000  # the rig has run for 5 s
    rig.sample()
    rig.sample()
    rig.sample()
    assert rig.report.counters['steps'] == 1
    rig.device_us = 0  # the rig rebooted: its clock starts again (the host's goes on)
    assert rig.sample() is None  # the clock mapping warms up anew
    assert rig.report.counters['device_restarts'] == 1
    assert rig.sample() is not None and rig.report.counters['steps'] == 1
    assert rig.sample() is not None and rig.report.counters['steps'] == 2


def test_a_warning_while_a_tenth_of_the_recent_steps_ran_a_stale_command(make_rig):
    rig = make_rig()
    counters, warnings = rig.report.counters, rig.report.warnings
    counters['steps'], counters['stale_command_steps'] = 199, 50
    rig.bridge.watch()
    assert 'real_time' not in warnings  # fewer than 200 steps to judge by
    counters['steps'] = 200
    rig.bridge.watch()
    assert warnings['real_time'].startswith('50 of the last 200 steps')
    counters['steps'], counters['stale_command_steps'] = 400, 70  # 20 of the next 200
    rig.bridge.watch()
    assert 'real_time' not in warnings


def test_command_limits_and_the_task_narrowing_them():
    low, high = command_limits([], [], [-2.0], [2.0])
    assert low.tolist() == [-2.0] and high.tolist() == [2.0]
    low, high = command_limits([-1.0], [1.0], [-2.0], [2.0], ['torque'])
    assert low.tolist() == [-1.0] and high.tolist() == [1.0]
    for args, parameter in [
        (([], [], [], []), 'command_low'),
        (([-1.0, -1.0], [1.0], [], []), 'command_high'),
        (([-1.0], [1.0], [], [], ['a', 'b']), 'command_low'),
        (([1.0], [1.0], [], []), 'command_low'),
    ]:
        with pytest.raises(ParameterError) as error:
            command_limits(*args)
        assert error.value.parameter == parameter, args
    pendulum = get_task('pendulum')  # torque in [-2, 2]
    low, high = within_task(np.array([-5.0]), np.array([1.0]), pendulum)
    assert low.tolist() == [-2.0] and high.tolist() == [1.0]
    with pytest.raises(ParameterError, match='no command is within'):
        within_task(np.array([3.0]), np.array([5.0]), pendulum)
    with pytest.raises(ParameterError, match='2 channels'):
        within_task(np.array([-1.0, -1.0]), np.array([1.0, 1.0]), pendulum)
    with pytest.raises(TypeError, match='not a serial bridge parameter'):
        bridge_settings(prot='/dev/ttyACM0')
