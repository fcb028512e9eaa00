"""JSON model files: round trip predicts identically; damaged files are refused with a reason."""

import json
import os
import threading

import gymnasium as gym
import numpy as np
import pytest

from sindyrl_ros.core.dynamics import SindyDynamics
from sindyrl_ros.core.dynamics_fit import EnsembleConfig
from sindyrl_ros.core.serialization import (
    MAX_DOCUMENT_BYTES,
    FormatError,
    as_float_array,
    document_from_json,
    load_json_document,
    parse_json_text,
    require,
    save_json_document,
)
from sindyrl_ros.core.trajectories import Trajectory


@pytest.fixture(scope='module')
def episodes():
    env = gym.make('Pendulum-v1').unwrapped
    rng = np.random.default_rng(7)
    result = []
    for episode in range(2):
        observation, _ = env.reset(seed=70 + episode)
        observations, actions = [observation], []
        for _ in range(150):
            action = rng.uniform(-2.0, 2.0, size=1)
            observation, *_ = env.step(action)
            observations.append(observation)
            actions.append(action)
        result.append(Trajectory(np.array(observations, dtype=np.float64), np.array(actions)))
    return result


@pytest.fixture(scope='module')
def model(episodes):
    dynamics = SindyDynamics(
        ['cos', 'sin', 'thdot'],
        ['u'],
        0.05,
        saturation={'thdot': (-8.0, 8.0)},
        action_low=[-2.0],
        action_high=[2.0],
        ensemble=EnsembleConfig(n_models=10),
    ).fit(episodes[:1])
    dynamics.validate(episodes[1:], horizon=40)
    return dynamics


@pytest.fixture
def saved(model, tmp_path):
    path = tmp_path / 'model.json'
    model.save(path)
    return path


def test_round_trip_predicts_identically(model, episodes, saved):
    loaded = SindyDynamics.load(saved)
    observations = episodes[1].observations[:-1]
    actions = episodes[1].actions
    np.testing.assert_array_equal(
        loaded.predict(observations, actions), model.predict(observations, actions)
    )
    np.testing.assert_array_equal(
        loaded.predict_members(observations, actions), model.predict_members(observations, actions)
    )
    np.testing.assert_array_equal(
        loaded.rollout(observations[0], actions), model.rollout(observations[0], actions)
    )
    assert loaded.equations() == model.equations()
    assert loaded.model_version == model.model_version
    assert loaded.saturation == model.saturation
    np.testing.assert_array_equal(loaded.action_low, [-2.0])
    assert loaded.validation == model.validation
    assert loaded.pysindy_model is None
    document = json.loads(saved.read_text())
    assert document['format'] == 'sindyrl_ros/model'
    assert document['version'] == 1
    assert len(document['member_coefficients']) == 10
    assert document['equations'][2].startswith('thdot[k+1] = ')


def test_save_is_atomic_and_leaves_no_temporary_files(model, tmp_path):
    path = tmp_path / 'model.json'
    model.save(path)
    model.save(path)  # replaces
    assert sorted(p.name for p in tmp_path.iterdir()) == ['model.json']


def _rewrite(path, change):
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))


def test_refuses_garbage(saved):
    saved.write_bytes(b'\x00\xffnot json at all')
    with pytest.raises(FormatError, match='not valid JSON') as error:
        SindyDynamics.load(saved)
    assert str(saved) in str(error.value)


def test_refuses_truncated_file(saved):
    text = saved.read_text()
    saved.write_text(text[: len(text) // 2])
    with pytest.raises(FormatError, match='corrupt or truncated') as error:
        SindyDynamics.load(saved)
    assert str(saved) in str(error.value)


def test_refuses_wrong_format(saved):
    _rewrite(saved, lambda d: d.update(format='sindyrl_ros/policy'))
    with pytest.raises(FormatError, match=r"format: expected 'sindyrl_ros/model'"):
        SindyDynamics.load(saved)


def test_refuses_wrong_version(saved):
    _rewrite(saved, lambda d: d.update(version=99))
    with pytest.raises(FormatError, match='unsupported version 99'):
        SindyDynamics.load(saved)


def test_refuses_non_object(saved):
    saved.write_text('[1, 2, 3]')
    with pytest.raises(FormatError, match='top level must be a JSON object'):
        SindyDynamics.load(saved)


def test_refuses_coefficient_shape_mismatch(saved):
    _rewrite(saved, lambda d: d['coefficients'].pop())
    with pytest.raises(FormatError, match=r'coefficients: expected shape \(3, ') as error:
        SindyDynamics.load(saved)
    assert str(saved) in str(error.value)


def test_refuses_ragged_member_coefficients(saved):
    _rewrite(saved, lambda d: d['member_coefficients'][0][1].pop())
    with pytest.raises(FormatError, match='member_coefficients'):
        SindyDynamics.load(saved)


def test_refuses_non_finite_coefficient(saved):
    text = saved.read_text()
    document = json.loads(text)
    document['coefficients'][1][2] = float('nan')
    saved.write_text(json.dumps(document))  # writes NaN, which Python's json accepted back
    with pytest.raises(FormatError, match=r'coefficients\[1\]\[2\]: NaN is not a JSON number'):
        SindyDynamics.load(saved)


def test_refuses_missing_field(saved):
    _rewrite(saved, lambda d: d.pop('observation_names'))
    with pytest.raises(FormatError, match="missing field 'observation_names'"):
        SindyDynamics.load(saved)


def test_refuses_mistyped_field(saved):
    _rewrite(saved, lambda d: d.update(dt='0.05'))
    with pytest.raises(FormatError, match=r'\.dt: expected float, got str'):
        SindyDynamics.load(saved)


def test_refuses_terms_that_do_not_match_the_library(saved):
    def change(document):
        document['library']['degree'] = 2

    _rewrite(saved, change)
    with pytest.raises(FormatError, match='terms'):
        SindyDynamics.load(saved)


def test_refuses_names_of_wrong_length(saved):
    _rewrite(saved, lambda d: d.update(observation_names=['cos', 'sin']))
    with pytest.raises(FormatError):
        SindyDynamics.load(saved)


def test_missing_file_is_not_a_format_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        SindyDynamics.load(tmp_path / 'absent.json')


def test_document_helpers(tmp_path):
    path = tmp_path / 'doc.json'
    save_json_document(path, {'format': 'x/y', 'version': 2, 'a': [1.0, 2.0]})
    document = load_json_document(path, 'x/y', {1, 2})
    assert require(document, 'version', int, 'doc') == 2
    assert require({'v': 3}, 'v', float, 'doc') == 3.0
    with pytest.raises(FormatError, match=r'doc\.v: expected int, got bool'):
        require({'v': True}, 'v', int, 'doc')
    np.testing.assert_array_equal(as_float_array([[1, 2]], (1, None), 'doc.a'), [[1.0, 2.0]])
    with pytest.raises(FormatError, match=r'doc\.a: expected shape \(2, \*\)'):
        as_float_array([[1, 2]], (2, None), 'doc.a')
    with pytest.raises(FormatError, match='rectangular'):
        as_float_array([[1, 2], [3]], None, 'doc.a')
    with pytest.raises(FormatError, match='numeric array'):
        as_float_array('abc', None, 'doc.a')
    with pytest.raises(ValueError):
        save_json_document(path, {'x': float('inf')})  # not JSON
    assert load_json_document(path, 'x/y', {2})['a'] == [1.0, 2.0]  # old file intact
    with pytest.raises(FormatError, match='<topic>'):
        document_from_json('{"format": "x/y"', 'x/y', {1}, '<topic>')
    assert issubclass(FormatError, ValueError)


def _load_within(path, seconds=10.0):
    """load_json_document in a daemon thread: what it raised, or 'hung' (a FIFO once did)."""
    outcome = []

    def run():
        try:
            load_json_document(path, 'x/y', {1})
            outcome.append(None)
        except BaseException as error:  # noqa: B036 - the test inspects whatever it was
            outcome.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    return outcome[0] if outcome else 'hung'


@pytest.mark.parametrize('kind', ['fifo', 'dev_zero', 'directory', 'sparse_oversized', 'grown'])
def test_only_regular_files_within_the_cap_are_read(tmp_path, kind):
    """/dev/zero was read until MemoryError and a FIFO hung the reader; a directory or a
    file over MAX_DOCUMENT_BYTES is refused before parsing, naming the path and the cause.
    """
    path = tmp_path / kind
    if kind == 'fifo':
        os.mkfifo(path)
        expected = 'a FIFO, not a regular file'
    elif kind == 'dev_zero':
        path = '/dev/zero'
        expected = 'a character device, not a regular file'
    elif kind == 'directory':
        path.mkdir()
        expected = 'a directory, not a regular file'
    elif kind == 'sparse_oversized':
        with open(path, 'wb') as stream:
            stream.truncate(50 * MAX_DOCUMENT_BYTES)  # 400 MiB claimed, no disk used
        expected = f'{50 * MAX_DOCUMENT_BYTES} bytes, larger than the {MAX_DOCUMENT_BYTES}'
    else:
        path.write_text('{"format": "x/y", "version": 1, "pad": "' + 'x' * MAX_DOCUMENT_BYTES)
        expected = 'larger than the'
    error = _load_within(path)
    assert isinstance(error, FormatError), error
    assert str(error).startswith(str(path)) and expected in str(error), str(error)


def test_parser_caps_depth_digits_and_literals_but_not_strings():
    """Brackets inside strings do not count as nesting; real nesting, long integers, NaN and
    overflowing floats are refused with the field path, non-UTF-8 with the byte offset."""
    text = json.dumps({'note': '[' * 100 + '{' * 100, 'a': [[1, 2], [3, 4]], 'big': 10**299})
    assert parse_json_text(text, 'doc')['big'] == 10**299
    nested = '{"a": ' + '[' * 33 + ']' * 33 + '}'
    with pytest.raises(FormatError, match='doc: arrays/objects nested 34 deep, more than 32'):
        parse_json_text(nested, 'doc')
    parse_json_text('{"a": ' + '[' * 31 + ']' * 31 + '}', 'doc')
    with pytest.raises(FormatError, match=r'doc\.a\[1\]\.b: integer 1111.*301 digits'):
        parse_json_text('{"a": [0, {"b": ' + '1' * 301 + '}]}', 'doc')
    with pytest.raises(FormatError, match=r'doc\.a\[0\]: Infinity is not a JSON number'):
        parse_json_text('{"a": [Infinity]}', 'doc')
    with pytest.raises(FormatError, match=r'doc\.a: number -1e999 overflows a float'):
        parse_json_text('{"a": -1e999}', 'doc')
    with pytest.raises(FormatError, match=r'doc: not valid JSON: not UTF-8 text \(byte 7'):
        parse_json_text(b'{"a": "\xc3\x28"}', 'doc')


def test_model_card_with_a_huge_integer_is_a_format_error(saved):
    """A model card goes through the same loader: a 400-digit coefficient once raised
    OverflowError from numpy, a 5000-digit one ValueError from Python's int limit."""
    text = saved.read_text()
    marker = '"coefficients": ['
    head, tail = text.split(marker, 1)
    tail = tail[tail.index('[') :]  # past the whitespace json.dumps(indent=1) writes
    first_end = min(tail.index(','), tail.index(']'))
    for digits in (400, 5000):
        saved.write_text(head + marker + '[' + '9' * digits + tail[first_end:])
        with pytest.raises(FormatError, match=rf'coefficients\[0\]\[0\]: .*{digits} digits'):
            SindyDynamics.load(saved)
