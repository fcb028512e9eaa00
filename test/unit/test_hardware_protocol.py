"""The rig protocol: round trips, fuzzed byte streams, resynchronisation, CRC and COBS.

The decoder sits between a noisy serial line and /joint_states, so it is fuzzed hard: over
100,000 random and mutated byte streams, fed in random chunks. No exception may escape and
every accepted message must be one that was really encoded into the stream (a corrupt
frame passes CRC-32 with probability 2^-32; the generator is seeded, so the run is
reproducible).
"""

import math
import random
import struct

from hypothesis import given, settings
from hypothesis import strategies as st
import pytest

from sindyrl_ros.hardware.protocol import (
    DROP_REASONS,
    MAX_ENCODED_SIZE,
    MAX_ERROR_TEXT,
    MAX_FRAME_SIZE,
    MAX_JOINTS,
    PROTOCOL_VERSION,
    Command,
    CommandMode,
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


def crc32_bitwise(data: bytes, crc: int = 0) -> int:
    """The CRC-32 loop of docs/rig_protocol.md, bit by bit (a firmware without a table)."""
    crc ^= 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xEDB88320 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFF


def test_crc32_is_the_firmware_loop_bit_for_bit():
    """crc32 (zlib's) equals the specification's loop on random inputs, piece by piece too."""
    assert crc32(b'123456789') == crc32_bitwise(b'123456789') == 0xCBF43926  # check value
    assert crc32(b'') == 0
    rng = random.Random(1)
    for size in list(range(300)) + [rng.randint(300, 4000) for _ in range(30)]:
        data = rng.randbytes(size)
        start = rng.getrandbits(32)
        assert crc32(data) == crc32_bitwise(data), size
        assert crc32(data, start) == crc32_bitwise(data, start), size
        assert crc32(data[size // 2 :], crc32(data[: size // 2])) == crc32_bitwise(data)
        assert crc32(memoryview(bytearray(data))) == crc32_bitwise(data)


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
