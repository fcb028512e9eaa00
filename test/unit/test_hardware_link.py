"""The host's end of a rig link over a real pseudo-terminal: frames, checks, clock, status.

The rig's end is a :class:`~sindyrl_ros.hardware.ports.PtyPort`, as the emulator holds it;
the link opens the other end with pyserial, as the bridge does. The tests drive the reader
thread's passes (:meth:`SerialLink.run_once`) themselves, so each frame's effect is seen.
"""

import logging
import random
import subprocess
import sys
import time

import pytest

from sindyrl_ros.hardware.bridge import bridge_settings
from sindyrl_ros.hardware.link import RESTART_US, DeviceClock, SerialLink, Tally
from sindyrl_ros.hardware.ports import PtyPort, make_link
from sindyrl_ros.hardware.protocol import (
    Command,
    Error,
    FrameDecoder,
    Heartbeat,
    State,
    StateFlag,
    encode,
    frames,
)

pytest.importorskip('serial')
LOG = logging.getLogger('test_hardware_link')
OFFSET_NS = 3_000_000_000  # host time = rig time + 3 s (+ 1 ms transport)


class Handler:
    """The link's owner, recording what it is told (the bridge in the node)."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.states: list[tuple[State, int, bool]] = []

    def on_open(self) -> None:
        self.events.append('open')

    def on_close(self) -> None:
        self.events.append('close')

    def on_restart(self) -> None:
        self.events.append('restart')

    def on_poll(self) -> None:
        pass

    def on_state(self, state: State, stamp_ns: int, settled: bool) -> None:
        self.states.append((state, stamp_ns, settled))


def open_link(path: str, **settings):
    """A link on ``path``, opened by its first pass; the rig's host clock is settable."""
    handler, report, host = Handler(), Tally(), {'ns': 0}
    link = SerialLink(
        bridge_settings(**{'port': path, 'heartbeat_period': 60.0, **settings}),
        1,
        handler,
        report,
        LOG,
        lambda: host['ns'],
    )
    return link, handler, report, host


def deliver(rig: PtyPort, link: SerialLink, data: bytes, host: dict, device_us: int = 0):
    """The rig sends ``data``; the link reads it (arriving 1 ms after ``device_us``)."""
    host['ns'] = device_us * 1000 + OFFSET_NS + 1_000_000
    before = link.report.counters['frames'] + sum(
        v for k, v in link.report.counters.items() if k.startswith('rejected.frame_')
    )
    assert rig.write(data)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        link.run_once()
        after = link.report.counters['frames'] + sum(
            v for k, v in link.report.counters.items() if k.startswith('rejected.frame_')
        )
        if after > before:
            return
    raise AssertionError('the link read nothing')


def state(device_us: int, position: float = 0.0, **fields) -> State:
    return State(device_us, (position,), (0.0,), (0.0,), **fields)


@pytest.fixture
def rig():
    port = PtyPort()
    yield port
    port.close()


def test_bad_states_are_refused_and_counted_good_ones_stamped_on_the_host_clock(rig):
    link, handler, report, host = open_link(rig.path, clock_warmup=2)
    assert link.run_once() == 0.0 and handler.events == ['open'] and link.is_open
    assert report.counters['connects'] == 1
    # The host's first byte ends a partial frame the rig may hold; a HEARTBEAT follows.
    first = rig.read()
    assert first[:1] == b'\x00'
    assert [type(m) for m in FrameDecoder().feed(first)] == [Heartbeat]
    rig.write(b'\x00')  # the rig ends whatever the host may hold, as the emulator does
    deliver(rig, link, encode(State(1_000, (0.0, 1.0), (0.0, 0.0))), host, 1_000)
    deliver(rig, link, encode(state(2_000, float('nan'))), host, 2_000)
    assert report.counters['rejected.state_joint_count'] == 1
    assert report.counters['rejected.state_nonfinite'] == 1
    for k in range(1, 5):
        deliver(rig, link, encode(state(k * 50_000, 0.1 * k)), host, k * 50_000)
    # Not after the last device time: refused (a reordered or repeated frame).
    deliver(rig, link, encode(state(200_000)), host, 200_000)
    deliver(rig, link, encode(state(150_000)), host, 150_000)
    assert report.counters['rejected.state_out_of_order'] == 2
    assert [s.device_time_us for s, _, _ in handler.states] == [50_000, 100_000, 150_000, 200_000]
    # Stamped with the rig's clock on the host's: arrival - 1 ms transport, all the same.
    stamps = [stamp for _, stamp, _ in handler.states]
    assert stamps[0] == 50_000_000 + OFFSET_NS + 1_000_000
    assert [b - a for a, b in zip(stamps, stamps[1:])] == [50_000_000] * 3
    # The first clock_warmup STATEs only settle the clock offset.
    assert [settled for _, _, settled in handler.states] == [False, False, True, True]
    assert report.counters['frames'] == 8 and report.values['device_flags'] == 'none'


def test_a_rig_clock_going_back_more_than_a_second_is_a_restart(rig):
    link, handler, report, host = open_link(rig.path, clock_warmup=1)
    link.run_once()
    rig.write(b'\x00')
    deliver(rig, link, encode(state(5_000_000)), host, 5_000_000)
    deliver(rig, link, encode(state(5_000_000 - RESTART_US + 1)), host, 5_000_100)
    assert report.counters['rejected.state_out_of_order'] == 1 and 'restart' not in handler.events
    deliver(rig, link, encode(state(5_000_000 - RESTART_US - 1)), host, 5_000_200)
    assert report.counters['device_restarts'] == 1 and handler.events[-1] == 'restart'
    # The clock mapping starts anew: the first state after the restart is warm-up again.
    assert link.clock.samples == 1 and handler.states[-1][2] is False


def test_heartbeats_errors_and_frames_the_rig_must_not_send(rig):
    link, handler, report, host = open_link(rig.path)
    link.run_once()
    rig.write(b'\x00')
    deliver(rig, link, encode(Heartbeat(1, 10)), host)
    deliver(rig, link, encode(Error(4, 'motor driver fault')), host)
    deliver(rig, link, encode(Command(1, (1.0,))), host)  # a COMMAND from the rig
    corrupt = bytearray(encode(Heartbeat(2, 20)))
    corrupt[3] ^= 0x10
    deliver(rig, link, bytes(corrupt), host)
    assert report.counters['heartbeats_received'] == 1
    assert report.counters['device_errors'] == 1
    assert report.values['last_device_error'] == '4: motor driver fault'
    assert report.counters['rejected.frame_unexpected_type'] == 1
    assert report.counters['rejected.frame_crc'] == 1 and handler.states == []


def test_the_echo_of_a_command_gives_its_round_trip_and_heartbeats_go_out(rig):
    link, handler, report, host = open_link(rig.path, heartbeat_period=0.01)
    link.run_once()
    rig.write(b'\x00')
    assert link.write(Command(7, (1.5,)))
    deliver(rig, link, encode(state(1_000, command_sequence=7)), host, 1_000)
    assert report.values['command_round_trip_ms'] != 'unknown'
    time.sleep(0.02)
    link.run_once()
    sent = FrameDecoder().feed(rig.read())
    assert Command(7, (1.5,)) in sent
    beats = [m.sequence for m in sent if isinstance(m, Heartbeat)]
    assert len(beats) >= 2 and beats == list(range(1, len(beats) + 1))
    assert report.counters['heartbeats_sent'] == len(beats)


def test_status_from_closed_to_up_to_lost_and_the_rigs_flags(rig):
    link, handler, report, host = open_link(rig.path, link_timeout=0.5)
    assert link.status(time.monotonic()) == ('disconnected', 'not opened yet')
    link.watch()
    assert report.values['link'] == 'disconnected' and 'link' in report.errors
    link.run_once()
    assert link.status(time.monotonic())[0] == 'waiting'
    rig.write(b'\x00')
    deliver(rig, link, encode(state(1_000, flags=StateFlag.FAULT)), host, 1_000)
    now = time.monotonic()
    assert link.status(now) == ('up', None)
    link.watch()
    assert report.values['link'] == 'up' and 'link' not in report.errors
    assert 'FAULT' in report.errors['rig'] and 'rig' not in report.warnings
    deliver(rig, link, encode(state(2_000, flags=StateFlag.COMMAND_TIMEOUT)), host, 2_000)
    link.watch()
    assert 'rig' not in report.errors and 'safe command' in report.warnings['rig']
    link_state, problem = link.status(now + 0.6)
    assert link_state == 'lost' and 'no valid frame' in problem


def test_a_vanished_port_is_reopened_with_doubling_back_off(tmp_path):
    path = tmp_path / 'rig'  # a stable name, as /dev/serial/by-id/... is for a rig
    link, handler, report, host = open_link(str(path), reconnect_min=0.1, reconnect_max=0.3)
    assert [link.run_once() for _ in range(4)] == [0.1, 0.2, 0.3, 0.3]
    assert link.port_error.startswith(f'cannot open {path}') and not link.is_open
    first = PtyPort()
    make_link(str(path), first.path)
    assert link.run_once() == 0.0 and link.is_open
    first.write(b'\x00')
    deliver(first, link, encode(state(1_000)), host, 1_000)  # a valid frame: back-off anew
    first.close()  # the cable is pulled
    assert link.run_once() == 0.1
    assert not link.is_open and 'lost' in link.port_error and handler.events[-1] == 'close'
    assert link.status(time.monotonic())[0] == 'disconnected'
    assert not link.write(Command(1, (0.0,)))  # nothing to write to
    second = PtyPort()
    make_link(str(path), second.path)
    assert link.run_once() == 0.0 and report.counters['connects'] == 2
    assert handler.events == ['open', 'close', 'open']
    # A new port: the clock is estimated anew.
    second.write(b'\x00')
    deliver(second, link, encode(state(10)), host, 10)
    assert link.clock.samples == 1
    link.close('test over')
    second.close()


def test_the_reader_thread_stops_and_closes_the_port(rig):
    link, handler, report, host = open_link(rig.path)
    link.start()
    deadline = time.monotonic() + 5.0
    while not link.is_open and time.monotonic() < deadline:
        time.sleep(0.01)
    rig.write(b'\x00' + frames([state(1_000), state(2_000)]))
    while len(handler.states) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    link.stop()
    assert len(handler.states) == 2
    assert not link.is_open and link.port_error == 'bridge stopped'


def test_the_hardware_path_needs_no_rclpy():
    """A rig and its bridge's rules run where ROS is not installed (tools, firmware tests)."""
    modules = ('bridge', 'emulator', 'link', 'ports', 'protocol')
    imports = ', '.join(f'sindyrl_ros.hardware.{module}' for module in modules)
    code = f'import sys, {imports}; assert "rclpy" not in sys.modules'
    subprocess.run([sys.executable, '-c', code], check=True, timeout=60)


# ----------------------------------------------------------------------------- clock


@pytest.mark.parametrize('drift_ppm', [-400.0, 0.0, 400.0])
def test_device_clock_follows_offset_and_drift_never_ahead_of_arrival(drift_ppm):
    """Frames every 10 ms with 0.2-5 ms random delay, device clock off by 3 s and drifting."""
    rng = random.Random(3)
    clock = DeviceClock(slew_ppm=1000.0)
    errors = []
    for k in range(6000):  # 60 s
        host_sample_ns = 5_000_000_000 + k * 10_000_000  # when the rig sampled, host time
        device_us = int((host_sample_ns - 2_000_000_000) * (1 + drift_ppm * 1e-6) / 1000)
        arrival_ns = host_sample_ns + int(rng.uniform(0.2e6, 5e6))
        mapped = clock.update(device_us, arrival_ns)
        assert mapped <= arrival_ns
        errors.append(mapped - host_sample_ns)
    settled = errors[500:]
    # The estimate sits near the smallest delays (0.2 ms), well inside the 5 ms delay spread;
    # a fast rig clock lets it lag by the drift since the last least-delayed frame.
    assert all(0 <= e < 2_000_000 for e in settled), (min(settled), max(settled))
    assert sum(settled) / len(settled) < 1_000_000
    assert clock.samples == 6000
    clock.reset()
    assert clock.offset_ns is None
    with pytest.raises(ValueError):
        clock.to_host_ns(0)
    with pytest.raises(ValueError):
        DeviceClock(slew_ppm=-1.0)
