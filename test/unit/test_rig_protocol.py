"""The rig protocol: round trips, fuzzed byte streams, resynchronisation, clock mapping.

The decoder sits between a noisy serial line and /joint_states, so it is fuzzed hard: over
100,000 random and mutated byte streams, fed in random chunks. No exception may escape and
every accepted message must be one that was really encoded into the stream (a corrupt
frame passes CRC-32 with probability 2^-32; the generator is seeded, so the run is
reproducible). Then the emulator is checked over a real pseudo-terminal.
"""

import math
import random
import struct
import subprocess
import sys
import time
import zlib

from hypothesis import given, settings
from hypothesis import strategies as st
import pytest

from sindyrl_ros.core.rig_protocol import (
    DROP_REASONS,
    MAX_ENCODED_SIZE,
    MAX_ERROR_TEXT,
    MAX_FRAME_SIZE,
    MAX_JOINTS,
    PROTOCOL_VERSION,
    Command,
    CommandMode,
    DeviceClock,
    Error,
    FrameDecoder,
    Heartbeat,
    MessageType,
    Reset,
    ResetFlag,
    State,
    StateFlag,
    cobs_decode,
    cobs_encode,
    crc32,
    encode,
    frames,
)

# ----------------------------------------------------------------------------- strategies

finite32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFF_FFFF)
u64 = st.integers(0, 0xFFFF_FFFF_FFFF_FFFF)


@st.composite
def states(draw):
    n = draw(st.integers(1, MAX_JOINTS))
    values = st.lists(finite32, min_size=n, max_size=n)
    efforts = draw(st.sampled_from([0, n]))
    return State(
        device_time_us=draw(u64),
        positions=draw(values),
        velocities=draw(values),
        efforts=draw(st.lists(finite32, min_size=efforts, max_size=efforts)),
        flags=draw(u16),
        command_sequence=draw(u32),
    )


commands = st.builds(
    Command,
    sequence=u32,
    values=st.lists(finite32, min_size=1, max_size=MAX_JOINTS),
    mode=st.sampled_from(list(CommandMode)),
)
heartbeats = st.builds(Heartbeat, sequence=u32, time_us=u64)
errors = st.builds(
    Error,
    code=u16,
    text=st.text(max_size=MAX_ERROR_TEXT // 4),  # 4 bytes per character at most
)
resets = st.builds(Reset, sequence=u32, flags=st.integers(0, 0xFF))
messages = st.one_of(states(), commands, heartbeats, errors, resets)


def feed_in_chunks(decoder, data: bytes, cuts) -> list:
    """Feed ``data`` split at ``cuts`` (positions), return every message decoded."""
    out = []
    previous = 0
    for cut in sorted(set(cuts)) + [len(data)]:
        out += decoder.feed(data[previous:cut])
        previous = cut
    return out


def payload_frame(payload: bytes) -> bytes:
    """A frame around a hand-made payload (version, type, body), with a correct CRC."""
    return cobs_encode(payload + struct.pack('<I', crc32(payload))) + b'\x00'


# ----------------------------------------------------------------------------- CRC, COBS


def test_crc32_check_value_and_zlib_agree():
    assert crc32(b'123456789') == 0xCBF43926  # the documented test vector
    assert crc32(b'') == 0
    rng = random.Random(1)
    for size in range(300):
        data = rng.randbytes(size)
        assert crc32(data) == zlib.crc32(data)
        assert crc32(data[size // 2 :], crc32(data[: size // 2])) == zlib.crc32(data)


@given(st.binary(max_size=1200))
@settings(max_examples=300, deadline=None)
def test_cobs_round_trip_without_zeros(data):
    encoded = cobs_encode(data)
    assert 0 not in encoded
    assert len(encoded) <= len(data) + 1 + len(data) // 254
    assert cobs_decode(encoded) == data


def test_cobs_known_vectors_and_invalid_input():
    assert cobs_encode(b'') == b'\x01'
    assert cobs_encode(b'\x00') == b'\x01\x01'
    assert cobs_encode(b'\x11\x22\x00\x33') == b'\x03\x11\x22\x02\x33'
    assert cobs_encode(b'\x11\x00\x00\x00') == b'\x02\x11\x01\x01\x01'
    run = bytes(range(1, 255))  # 254 non-zero bytes: one full group
    assert cobs_encode(run) == b'\xff' + run + b'\x01'
    assert cobs_decode(b'\xff' + run) == run
    assert cobs_decode(b'\x05\x11\x22') is None  # the group runs past the end
    assert cobs_decode(b'\x03\x11\x00') is None  # a zero inside
    assert cobs_decode(b'\x00') is None


# ----------------------------------------------------------------------------- messages


@given(st.lists(messages, min_size=1, max_size=6), st.lists(st.integers(0, 2000), max_size=8))
@settings(max_examples=400, deadline=None)
def test_every_message_type_round_trips_in_any_chunking(originals, cuts):
    stream = frames(originals)
    assert all(len(encode(m)) <= MAX_FRAME_SIZE for m in originals)
    decoder = FrameDecoder()
    assert feed_in_chunks(decoder, stream, [c % (len(stream) + 1) for c in cuts]) == originals
    assert decoder.total_dropped == 0 and decoder.accepted == len(originals)


def test_messages_are_float32_little_endian_and_bounded():
    state = State(7, (0.1, -2.5), (1e-3, 3.0), (0.5, 0.0), StateFlag.SIMULATED, 42)
    assert state.positions[0] == struct.unpack('<f', struct.pack('<f', 0.1))[0]
    payload = cobs_decode(encode(state)[:-1])
    assert payload[:2] == bytes([PROTOCOL_VERSION, MessageType.STATE])
    assert struct.unpack_from('<QIHBB', payload, 2) == (7, 42, 0x10, 2, 2)
    assert len(payload) == 2 + 16 + 4 * 6 + 4
    # Non-finite values travel (the bridge refuses them, not the protocol).
    odd = FrameDecoder().feed(encode(State(1, (math.inf,), (math.nan,))))[0]
    assert odd.positions == (math.inf,) and math.isnan(odd.velocities[0])
    with pytest.raises(ValueError, match='joints'):
        State(0, [0.0] * (MAX_JOINTS + 1), [0.0] * (MAX_JOINTS + 1))
    with pytest.raises(ValueError, match='velocities'):
        State(0, (1.0,), (1.0, 2.0))
    with pytest.raises(ValueError, match='efforts'):
        State(0, (1.0, 2.0), (1.0, 2.0), (1.0,))
    with pytest.raises(ValueError, match='float32'):
        Command(1, (1e300,))
    with pytest.raises(ValueError, match='device_time_us'):
        State(-1, (1.0,), (1.0,))
    with pytest.raises(ValueError, match='mode'):
        Command(1, (1.0,), mode=9)
    with pytest.raises(ValueError, match='text'):
        Error(1, 'x' * (MAX_ERROR_TEXT + 1))
    reset = cobs_decode(encode(Reset(0x01020304, ResetFlag.RANDOM_START))[:-1])
    assert reset[:2] == bytes([PROTOCOL_VERSION, MessageType.RESET])
    assert reset[2:-4] == bytes([4, 3, 2, 1, 1])  # sequence u32, flags u8
    with pytest.raises(ValueError, match='RESET.flags'):
        Reset(1, 0x100)
    with pytest.raises(ValueError, match='RESET.sequence'):
        Reset(-1)
    cut = Error.truncated(1, 'é' * MAX_ERROR_TEXT)  # 2 bytes each: cut at a boundary
    assert len(cut.text.encode()) == MAX_ERROR_TEXT
    with pytest.raises(TypeError):
        encode('not a message')


def test_each_drop_reason_is_counted_with_its_reason():
    header = bytes([PROTOCOL_VERSION])
    state_body = struct.pack('<QIHBB', 1, 0, 0, 1, 0) + struct.pack('<2f', 1.0, 2.0)
    good = payload_frame(header + bytes([MessageType.STATE]) + state_body)
    assert isinstance(FrameDecoder().feed(good)[0], State)
    cases = {
        'crc': cobs_encode(bytes([x ^ 0xFF for x in cobs_decode(good[:-1])])) + b'\x00',
        'cobs': b'\x09\x01\x02\x00',
        'length': payload_frame(header + bytes([MessageType.STATE]) + state_body[:-1]),
        'version': payload_frame(bytes([PROTOCOL_VERSION + 1, MessageType.STATE]) + state_body),
        'unknown_type': payload_frame(header + b'\x7f' + state_body),
        'field': payload_frame(
            header
            + bytes([MessageType.STATE])
            + struct.pack('<QIHBB', 1, 0, 0, MAX_JOINTS + 1, 0)
            + bytes(4 * 2 * (MAX_JOINTS + 1))
        ),
        'oversize': bytes([1]) * (MAX_ENCODED_SIZE + 5) + b'\x00',
    }
    bad_text = payload_frame(
        header + bytes([MessageType.ERROR]) + struct.pack('<HB', 1, 2) + b'\xff\xfe'
    )
    bad_mode = payload_frame(
        header + bytes([MessageType.COMMAND]) + struct.pack('<IBBf', 1, 9, 1, 1.0)
    )
    short = payload_frame(b'\x01')
    cases['length_reset'] = payload_frame(header + bytes([MessageType.RESET]) + bytes(6))
    for name, frame in cases.items():
        reason = name.split('_reset')[0]
        decoder = FrameDecoder()
        # The bad frame costs nothing else: the good frame after it decodes.
        assert len(decoder.feed(frame + good)) == 1, name
        assert decoder.dropped == {reason: 1}, (name, decoder.dropped)
        assert decoder.recent_drops[-1].reason == reason
    drops = []
    decoder = FrameDecoder(on_drop=lambda reason, detail: drops.append(reason))
    assert decoder.feed(bad_text + bad_mode + short + b'\x00\x00') == []
    assert drops == ['field', 'field', 'length']  # empty frames are not errors
    for reason in decoder.dropped:
        assert reason in DROP_REASONS


def test_decoder_skips_a_partial_first_frame_when_unsynchronised():
    stream = frames([Heartbeat(1, 10), Heartbeat(2, 20), Heartbeat(3, 30)])
    middle = stream[5:]  # the port opened in the middle of the first frame
    decoder = FrameDecoder(synchronised=False)
    assert decoder.feed(middle) == [Heartbeat(2, 20), Heartbeat(3, 30)]
    assert decoder.total_dropped == 0 and decoder.skipped_bytes > 0
    counted = FrameDecoder()
    assert counted.feed(middle) == [Heartbeat(2, 20), Heartbeat(3, 30)]
    assert counted.total_dropped == 1


@given(
    st.lists(messages, max_size=3),
    st.binary(max_size=600),
    st.lists(messages, min_size=1, max_size=3),
    st.lists(st.integers(0, 3000), max_size=6),
)
@settings(max_examples=300, deadline=None)
def test_resynchronises_after_garbage(before, garbage, after, cuts):
    """Garbage costs at most the frames it overwrites: all after the next 0x00 decode."""
    stream = frames(before) + garbage + b'\x00' + frames(after)
    decoded = feed_in_chunks(FrameDecoder(), stream, [c % (len(stream) + 1) for c in cuts])
    assert decoded[: len(before)] == before
    assert decoded[len(decoded) - len(after) :] == after
    assert len(decoded) == len(before) + len(after)  # the garbage produced nothing


# ----------------------------------------------------------------------------- fuzzing

FUZZ_CASES = 100_000  # mutated valid streams
RANDOM_CASES = 20_000  # streams of random bytes


def _message_pool(rng: random.Random) -> list:
    """Valid messages of every type and size, with extreme and non-finite values."""
    specials = [0.0, -0.0, 1.0, -1.0, math.inf, -math.inf, math.nan, 3.4e38, 1e-45]

    def value() -> float:
        return rng.choice(specials) if rng.random() < 0.2 else rng.uniform(-10, 10)

    pool = []
    for _ in range(400):
        n = rng.randint(1, MAX_JOINTS)
        kind = rng.randrange(5)
        if kind == 0:
            pool.append(
                State(
                    rng.getrandbits(64),
                    [value() for _ in range(n)],
                    [value() for _ in range(n)],
                    [value() for _ in range(rng.choice((0, n)))],
                    rng.getrandbits(16),
                    rng.getrandbits(32),
                )
            )
        elif kind == 1:
            pool.append(
                Command(
                    rng.getrandbits(32),
                    [value() for _ in range(n)],
                    rng.choice(list(CommandMode)),
                )
            )
        elif kind == 2:
            pool.append(Heartbeat(rng.getrandbits(32), rng.getrandbits(64)))
        elif kind == 3:
            pool.append(Reset(rng.getrandbits(32), rng.getrandbits(8)))
        else:
            text = ''.join(rng.choice('abcé€\x00\n ') for _ in range(rng.randint(0, 60)))
            pool.append(Error.truncated(rng.getrandbits(16), text))
    return pool


def _mutate(rng: random.Random, data: bytearray) -> None:
    """One random corruption of a serial stream, in place."""
    size = len(data)
    kind = rng.randrange(9)
    at = rng.randrange(size) if size else 0
    if kind == 0 and size:  # flip one bit
        data[at] ^= 1 << rng.randrange(8)
    elif kind == 1 and size:  # replace a byte
        data[at] = rng.randrange(256)
    elif kind == 2:  # insert noise
        data[at:at] = rng.randbytes(rng.randint(1, 12))
    elif kind == 3 and size:  # lose bytes (UART overrun)
        del data[at : at + rng.randint(1, 12)]
    elif kind == 4 and size:  # a spurious delimiter
        data[at] = 0
    elif kind == 5 and size:  # a lost delimiter: two frames run together
        zeros = [i for i, b in enumerate(data) if b == 0]
        if zeros:
            data[rng.choice(zeros)] = rng.randrange(1, 256)
    elif kind == 6 and size:  # repeat a span
        span = data[at : at + rng.randint(1, 40)]
        data[at:at] = span
    elif kind == 7:  # cut the stream short
        del data[at:]
    elif size:  # a burst of errors
        for i in range(at, min(size, at + rng.randint(2, 8))):
            data[i] = rng.randrange(256)


def test_fuzzed_streams_never_raise_and_never_accept_a_corrupt_frame():
    rng = random.Random(20240611)
    pool = _message_pool(rng)
    encoded = [encode(m) for m in pool]
    cases = accepted = 0
    drops = {reason: 0 for reason in DROP_REASONS}
    for _ in range(FUZZ_CASES):
        chosen = [rng.randrange(len(pool)) for _ in range(rng.randint(1, 4))]
        valid = {encoded[i] for i in chosen}
        stream = bytearray(b''.join(encoded[i] for i in chosen))
        for _ in range(rng.randint(1, 3)):
            _mutate(rng, stream)
        decoder = FrameDecoder(synchronised=rng.random() < 0.8)
        cuts = [rng.randrange(len(stream) + 1) for _ in range(rng.randint(0, 3))]
        for message in feed_in_chunks(decoder, bytes(stream), cuts):
            assert encode(message) in valid, message
            accepted += 1
        for reason, count in decoder.dropped.items():
            drops[reason] += count
        cases += 1
    for _ in range(RANDOM_CASES):
        size = rng.randint(0, 400)
        # Random bytes with extra zeros, so short candidate frames are common too.
        stream = bytearray(rng.randbytes(size))
        for _ in range(size // 20):
            stream[rng.randrange(size)] = 0
        stream = bytes(stream)
        decoder = FrameDecoder()
        assert feed_in_chunks(decoder, stream, [rng.randrange(size + 1)]) == []
        for reason, count in decoder.dropped.items():
            drops[reason] += count
        cases += 1
    assert cases == FUZZ_CASES + RANDOM_CASES >= 120_000
    assert drops['internal_error'] == 0
    # The mutations reached every check before the CRC (those after it need a valid CRC: see
    # test_each_drop_reason_is_counted_with_its_reason), and most frames still got through.
    for reason in ('oversize', 'cobs', 'length', 'crc'):
        assert drops[reason] > 0, drops
    assert drops['version'] == drops['unknown_type'] == drops['field'] == 0
    assert accepted > FUZZ_CASES // 2  # ~2.5 frames per stream, 1-3 mutations


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


# ----------------------------------------------------------------------------- emulator


def test_rig_emulator_on_a_pty_applies_commands_and_refuses_bad_ones(tmp_path):
    """The emulator process: states at the task's rate, the applied command echoed."""
    serial = pytest.importorskip('serial')
    link = tmp_path / 'rig'
    process = subprocess.Popen(
        [
            sys.executable,
            '-m',
            'sindyrl_ros.rig_emulator',
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
            'sindyrl_ros.rig_emulator',
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
