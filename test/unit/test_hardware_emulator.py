"""The rig emulator as a process on a real pseudo-terminal: what a host sees of it."""

import math
import subprocess
import sys
import time

import pytest

from sindyrl_ros.hardware.protocol import (
    Command,
    CommandMode,
    Error,
    FrameDecoder,
    Heartbeat,
    Reset,
    ResetFlag,
    State,
    StateFlag,
    encode,
    frames,
)


def test_rig_emulator_on_a_pty_applies_commands_and_refuses_bad_ones(tmp_path):
    """The emulator process: states at the task's rate, the applied command echoed."""
    serial = pytest.importorskip('serial')
    link = tmp_path / 'rig'
    process = subprocess.Popen(
        [
            sys.executable,
            '-m',
            'sindyrl_ros.hardware.emulator',
            '--link',
            str(link),
            '--duration',
            '20',
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert 'rig emulator ready' in process.stdout.readline()
        port = serial.Serial(str(link), timeout=0.05)
        port.reset_input_buffer()
        decoder = FrameDecoder(synchronised=False)
        received = []

        def exchange(command, until, timeout=10.0):
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if command is not None:
                    port.write(encode(command))
                received.extend(decoder.feed(port.read(port.in_waiting or 1)))
                if until():
                    return True
            return False

        def last_state():
            found = [m for m in received if isinstance(m, State)]
            return found[-1] if found else None

        # No command yet: the safe command, flagged.
        assert exchange(None, lambda: last_state() is not None)
        assert last_state().flags & StateFlag.COMMAND_TIMEOUT
        assert last_state().flags & StateFlag.SIMULATED
        assert last_state().command_sequence == 0
        # A command is applied and echoed (effort and sequence).
        assert exchange(
            Command(7, (1.5,)),
            lambda: last_state().efforts == (1.5,) and last_state().command_sequence == 7,
        )
        assert not last_state().flags & StateFlag.COMMAND_TIMEOUT
        # Beyond the rig's limits: clipped and flagged.
        assert exchange(Command(8, (9.0,)), lambda: last_state().efforts == (2.0,))
        assert last_state().flags & StateFlag.LIMIT
        # Refused with an ERROR: wrong count, unsupported mode.
        assert exchange(
            Command(9, (1.0, 2.0)), lambda: any(isinstance(m, Error) for m in received)
        )
        assert exchange(
            Command(10, (1.0,), CommandMode.POSITION),
            lambda: any(isinstance(m, Error) and m.code == 1 for m in received),
        )
        assert any(isinstance(m, Heartbeat) for m in received)
        times = [m.device_time_us for m in received if isinstance(m, State)]
        assert all(b > a for a, b in zip(times, times[1:]))
        assert decoder.total_dropped == 0
        port.close()
    finally:
        process.terminate()
        process.wait(timeout=10)
    assert not link.exists()  # the emulator removes its link


def test_rig_emulator_resets_on_request_and_runs_faster_with_speed(tmp_path):
    """RESET: held start state flagged RESETTING, then EPISODE_START, both echoing its sequence."""
    serial = pytest.importorskip('serial')
    import gymnasium

    link = tmp_path / 'rig'
    process = subprocess.Popen(
        [
            sys.executable,
            '-m',
            'sindyrl_ros.hardware.emulator',
            '--link',
            str(link),
            '--speed',
            '5',
            '--reset-periods',
            '3',
            '--seed',
            '11',
            '--duration',
            '20',
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert 'control period 0.01 s (speed 5)' in process.stdout.readline()
        port = serial.Serial(str(link), timeout=0.05)
        port.reset_input_buffer()
        decoder = FrameDecoder(synchronised=False)
        states = []

        def exchange(message, until, timeout=10.0):
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if message is not None:
                    port.write(encode(message))
                received = decoder.feed(port.read(port.in_waiting or 1))
                states.extend(m for m in received if isinstance(m, State))
                if until():
                    return True
            return False

        assert exchange(Command(7, (1.0,)), lambda: states and states[-1].command_sequence == 7)
        # Sampled every dt / 5 = 10 ms, stamped with the scheduled sample time.
        steps = [b.device_time_us - a.device_time_us for a, b in zip(states, states[1:])]
        assert sum(abs(step - 10_000) <= 2 for step in steps) >= 0.9 * len(steps), steps
        before = len(states)
        # A command sent during the reset is ignored, and so is a repeat of the RESET.
        port.write(frames([Reset(8, ResetFlag.RANDOM_START), Command(9, (2.0,))]))
        assert exchange(
            None, lambda: any(s.flags & StateFlag.EPISODE_START for s in states[before:])
        )
        port.write(encode(Reset(8)))
        assert exchange(None, lambda: len(states) >= before + 40)
        answer = [s for s in states[before:] if s.command_sequence == 8]
        flags = [s.flags & (StateFlag.RESETTING | StateFlag.EPISODE_START) for s in answer]
        assert flags == [StateFlag.RESETTING] * 3 + [StateFlag.EPISODE_START], flags
        # The start state is the simulator's reset with the next seed (11 + 1), held.
        env = gymnasium.make('Pendulum-v1')
        cos, sin, theta_dot = env.reset(seed=12)[0]
        env.close()
        for state in answer:
            assert state.positions == pytest.approx((math.atan2(sin, cos),), abs=1e-6)
            assert state.velocities == pytest.approx((theta_dot,), abs=1e-6)
            assert state.efforts == (0.0,)
        # The command from before the reset is forgotten: the safe command, flagged.
        after = states[states.index(answer[-1]) + 1 :]
        assert after and all(s.command_sequence == 0 for s in after)
        assert all(s.flags & StateFlag.COMMAND_TIMEOUT for s in after)
        assert not any(s.flags & StateFlag.RESETTING for s in after)  # the repeat was ignored
        port.close()
    finally:
        process.terminate()
        process.wait(timeout=10)
