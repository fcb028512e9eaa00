"""Numpy policies: evaluation, JSON format and its validation, latency."""

import json

import numpy as np
from pendulum_data import (
    ACTION_NAMES,
    OBSERVATION_NAMES,
    make_known_polynomial_policy,
    pendulum_states,
)
import pytest

from sindyrl_ros.core.policies import (
    MLPPolicy,
    SparsePolynomialPolicy,
    measure_policy_latency,
    polynomial_powers,
)
from sindyrl_ros.core.policy_loading import load_policy, policy_from_dict, policy_from_json
from sindyrl_ros.core.serialization import FormatError


def make_mlp(activation='tanh', seed=0, hidden=(16, 16), n=3, m=1):
    rng = np.random.default_rng(seed)
    sizes = [n, *hidden, m]
    layers = [
        (rng.normal(0, 1 / np.sqrt(a), (b, a)), rng.normal(0, 0.1, b))
        for a, b in zip(sizes[:-1], sizes[1:], strict=True)
    ]
    names = [f'x{i}' for i in range(n)] if n != 3 else OBSERVATION_NAMES
    actions = [f'u{i}' for i in range(m)] if m != 1 else ACTION_NAMES
    return MLPPolicy(layers, activation, names, actions, -2.0 * np.ones(m), 2.0 * np.ones(m))


@pytest.mark.parametrize('activation', ['tanh', 'relu'])
def test_mlp_single_call_matches_batch_and_reference(activation):
    policy = make_mlp(activation)
    observations = pendulum_states(50)
    batch = policy.act_batch(observations)
    single = np.array([policy(x).copy() for x in observations])
    np.testing.assert_allclose(single, batch, rtol=0, atol=1e-12)
    # Reference forward pass written out directly.
    h = observations
    for weight, bias in zip(policy.weights[:-1], policy.biases[:-1], strict=True):
        h = h @ weight.T + bias
        h = np.tanh(h) if activation == 'tanh' else np.maximum(h, 0)
    expected = 2.0 * np.tanh(h @ policy.weights[-1].T + policy.biases[-1])
    np.testing.assert_allclose(batch, expected, rtol=0, atol=1e-12)
    assert np.all(np.abs(batch) <= 2.0)
    assert policy.n_parameters == 3 * 16 + 16 + 16 * 16 + 16 + 16 + 1


def test_single_call_reuses_buffers_and_accepts_out():
    for policy in (make_mlp(), make_known_polynomial_policy()):
        x = pendulum_states(1)[0]
        first = policy(x)
        assert policy(x) is first  # preallocated output, no new array per call
        out = np.empty(1)
        assert policy(x, out=out) is out
        np.testing.assert_array_equal(out, first)


def test_mlp_asymmetric_limits_and_several_actions():
    rng = np.random.default_rng(3)
    layers = [
        (rng.normal(size=(8, 4)), rng.normal(size=8)),
        (rng.normal(size=(2, 8)), rng.normal(size=2)),
    ]
    policy = MLPPolicy(layers, 'relu', list('abcd'), ['left', 'right'], [0.0, -1.0], [1.0, 3.0])
    actions = policy.act_batch(rng.normal(size=(200, 4)) * 5)
    assert np.all(actions >= [0.0, -1.0]) and np.all(actions <= [1.0, 3.0])


def test_sparse_policy_evaluation_and_clipping():
    policy = make_known_polynomial_policy()
    observations = pendulum_states(500)
    expected = np.clip(
        -1.5 * observations[:, 0] + 0.5 * observations[:, 1] * observations[:, 2], -2, 2
    )
    batch = policy.act_batch(observations)[:, 0]
    single = np.array([policy(x)[0] for x in observations])
    np.testing.assert_allclose(batch, expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(single, expected, rtol=0, atol=1e-12)
    # Large velocities push the polynomial far beyond the limits: output must be clipped.
    assert np.any(
        np.abs(-1.5 * observations[:, 0] + 0.5 * observations[:, 1] * observations[:, 2]) > 2
    )
    assert batch.min() == -2.0 and batch.max() == 2.0
    assert policy(np.array([0.0, 1.0, 100.0]))[0] == 2.0
    assert policy(np.array([0.0, 1.0, -100.0]))[0] == -2.0
    assert policy.n_nonzero == 2 and policy.n_parameters == 2
    assert policy.equations() == ['torque = clip(-1.5*cos_theta + 0.5*sin_theta*theta_dot, -2, 2)']


def test_sparse_policy_higher_powers_match_batch():
    rng = np.random.default_rng(1)
    powers = polynomial_powers(4, 4)
    coefficients = rng.normal(size=(len(powers), 2)) * (rng.random((len(powers), 2)) < 0.3)
    policy = SparsePolynomialPolicy(
        powers, coefficients, list('abcd'), ['u', 'v'], [-5, -5], [5, 5]
    )
    observations = rng.normal(size=(100, 4))
    single = np.array([policy(x).copy() for x in observations])
    np.testing.assert_allclose(single, policy.act_batch(observations), rtol=1e-12, atol=1e-12)


def test_polynomial_powers_library():
    powers = polynomial_powers(3, 3)
    assert powers.shape == (20, 3)  # C(3 + 3, 3) monomials
    assert np.array_equal(powers[0], [0, 0, 0])
    assert powers.sum(axis=1).max() == 3
    assert len({tuple(p) for p in powers}) == 20


@pytest.mark.parametrize('factory', [make_mlp, make_known_polynomial_policy])
def test_json_round_trip(tmp_path, factory):
    policy = factory()
    policy.metadata = {'source_model_version': 7, 'metrics': {'surrogate_return': -150.5}}
    path = tmp_path / 'policy.json'
    policy.save(path)
    loaded = load_policy(path, OBSERVATION_NAMES, ACTION_NAMES)
    assert type(loaded) is type(policy)
    assert loaded.metadata == policy.metadata
    observations = pendulum_states(100)
    np.testing.assert_array_equal(loaded.act_batch(observations), policy.act_batch(observations))
    from_text = policy_from_json(policy.to_json())
    np.testing.assert_array_equal(
        from_text.act_batch(observations), policy.act_batch(observations)
    )
    document = json.loads(path.read_text())
    assert document['format'] == 'sindyrl_ros/policy' and document['version'] == 1
    assert document['kind'] == policy.kind


def _corrupt(document, mutate):
    document = json.loads(json.dumps(document))
    mutate(document)
    return document


CORRUPTIONS = [
    ('format', lambda d: d.update(format='sindyrl_ros/model')),
    ('version', lambda d: d.update(version=2)),
    ('kind', lambda d: d.update(kind='lookup_table')),
    ('action_low', lambda d: d.update(action_low=[-2.0, -1.0])),
    ('action_high', lambda d: d.pop('action_high')),
    ('action_names', lambda d: d.update(action_names=['torque', 'torque'])),
    ('observation_names', lambda d: d.update(observation_names=['cos_theta', 'sin_theta'])),
]


@pytest.mark.parametrize(('field', 'mutate'), CORRUPTIONS)
@pytest.mark.parametrize('factory', [make_mlp, make_known_polynomial_policy])
def test_refuses_corrupted_documents(tmp_path, factory, field, mutate):
    path = tmp_path / 'bad.json'
    path.write_text(json.dumps(_corrupt(factory().to_dict(), mutate)))
    with pytest.raises(FormatError, match=field) as error:
        load_policy(path)
    assert str(path) in str(error.value)


def test_refuses_wrong_mlp_shapes_and_non_finite_weights():
    document = make_mlp().to_dict()
    wrong_shape = _corrupt(document, lambda d: d['layers'][1]['weight'].pop())
    with pytest.raises(FormatError, match=r'layers\[2\]\.weight|layers\[1\]'):
        policy_from_dict(wrong_shape)
    wrong_bias = _corrupt(document, lambda d: d['layers'][0]['bias'].append(0.0))
    with pytest.raises(FormatError, match=r'layers\[0\]\.bias'):
        policy_from_dict(wrong_bias)
    wrong_output = _corrupt(document, lambda d: d.update(action_names=['a', 'b']))
    with pytest.raises(FormatError, match='action'):
        policy_from_dict(wrong_output)
    # json accepts the NaN literal, so a corrupt file can carry one.
    text = json.dumps(document).replace(str(document['layers'][0]['bias'][0]), 'NaN', 1)
    with pytest.raises(FormatError, match=r'layers\[0\]\.bias'):
        policy_from_json(text)
    ragged = _corrupt(document, lambda d: d['layers'][0]['weight'][0].pop())
    with pytest.raises(FormatError, match=r'layers\[0\]\.weight'):
        policy_from_dict(ragged)
    bad_activation = _corrupt(document, lambda d: d.update(hidden_activation='sigmoid'))
    with pytest.raises(FormatError, match='hidden_activation'):
        policy_from_dict(bad_activation)


def test_refuses_bad_sparse_fields():
    document = make_known_polynomial_policy().to_dict()
    with pytest.raises(FormatError, match='powers'):
        policy_from_dict(_corrupt(document, lambda d: d['powers'][3].__setitem__(0, -1)))
    with pytest.raises(FormatError, match='powers'):
        policy_from_dict(_corrupt(document, lambda d: d['powers'][3].__setitem__(0, 1.5)))
    with pytest.raises(FormatError, match='coefficients'):
        policy_from_dict(_corrupt(document, lambda d: d['coefficients'].pop()))
    with pytest.raises(FormatError, match='coefficients'):
        policy_from_json(json.dumps(document).replace('-1.5', 'Infinity', 1))


def test_refuses_truncated_and_mismatched_files(tmp_path):
    path = tmp_path / 'policy.json'
    make_mlp().save(path)
    text = path.read_text()
    path.write_text(text[: len(text) // 2])
    with pytest.raises(FormatError, match='policy.json'):
        load_policy(path)
    path.write_text(text)
    with pytest.raises(FormatError, match='observation_names'):
        load_policy(path, expected_observation_names=['x', 'x_dot', 'theta'])
    with pytest.raises(FormatError, match='action_names'):
        load_policy(path, expected_action_names=['force'])
    with pytest.raises(FormatError):
        policy_from_json('[1, 2, 3]')


def _hostile_policy_texts():
    """(label, text or bytes, what the refusal must say) of inputs that once escaped as
    other exceptions (OverflowError, ValueError, RecursionError) or were not refused."""
    good = make_known_polynomial_policy().to_dict()
    compact = json.dumps(good, separators=(',', ':'))
    first = json.dumps(good['coefficients'][0][0])

    def coefficient(literal):
        return compact.replace(f'"coefficients":[[{first}]', f'"coefficients":[[{literal}]', 1)

    mlp = json.dumps(make_mlp(hidden=(2,)).to_dict(), separators=(',', ':'))
    deep = '[' * 5000 + ']' * 5000
    return [
        ('400-digit weight', coefficient('9' * 400), r'coefficients\[0\]\[0\]: .*400 digits'),
        ('5000-digit weight', coefficient('9' * 5000), r'coefficients\[0\]\[0\]: .*5000'),
        (
            '5000-digit version',
            compact.replace('"version":1', '"version":' + '7' * 5000),
            'version',
        ),
        (
            '400-digit limit',
            compact.replace('"action_low":[-2.0]', '"action_low":[-' + '9' * 400 + ']'),
            r'action_low\[0\]',
        ),
        (
            '400-digit MLP weight',
            mlp.replace('"weight":[[', '"weight":[[' + '9' * 400 + ',', 1),
            r'layers\[0\]\.weight\[0\]\[0\]',
        ),
        ('nested 5000 deep', coefficient(deep), 'nested 5003 deep'),
        ('nested metadata', compact[:-1] + ',"extra":' + deep + '}', 'nested'),
        ('NaN literal', coefficient('NaN'), r'coefficients\[0\]\[0\]: NaN'),
        ('Infinity literal', coefficient('-Infinity'), r'coefficients\[0\]\[0\]: -Infinity'),
        ('float overflow', coefficient('1e400'), r'coefficients\[0\]\[0\]: number 1e400'),
        ('non-UTF-8 bytes', b'\xff\xfe' + compact.encode(), 'not UTF-8'),
        ('UTF-16 bytes', compact.encode('utf-16'), 'not UTF-8'),
        ('lone surrogate', compact.replace('"source"', '"\\ud800"'), 'surrogate'),
        ('bool kind', compact.replace('"kind":"sparse_polynomial"', '"kind":true'), 'kind'),
        ('list kind', compact.replace('"kind":"sparse_polynomial"', '"kind":[1]'), 'kind'),
        (
            'string limits',
            compact.replace('"action_low":[-2.0]', '"action_low":"-2"'),
            'action_low',
        ),
        ('object weights', coefficient('{"a":1}'), 'coefficients'),
        ('null powers', compact.replace('"powers":', '"powers":null,"x":', 1), 'powers'),
        ('a number', '42', 'top level'),
        ('nothing', '', 'not valid JSON'),
        ('not text', 42, 'expected JSON text'),
        ('oversized', compact[:-1] + ',"pad":"' + 'x' * (9 * 2**20) + '"}', 'cap'),
        ('huge array', coefficient(','.join(['0.5'] * 4_500_000)), 'cap'),
    ]


@pytest.mark.parametrize(
    ('text', 'expected'),
    [pytest.param(text, expected, id=label) for label, text, expected in _hostile_policy_texts()],
)
def test_policy_parsing_is_total(text, expected):
    """Each hostile policy message is a FormatError naming the problem and the field, never
    another exception: the controller counts a refusal instead of crash-looping on the
    latched topic. The error text stays short even when the input is megabytes.
    """
    with pytest.raises(FormatError, match=expected) as error:
        policy_from_json(text, 'topic /sindyrl/policy', OBSERVATION_NAMES, ACTION_NAMES)
    message = str(error.value)
    assert message.startswith('topic /sindyrl/policy'), message
    assert len(message) <= 1100


def test_policy_file_parsing_is_total(tmp_path):
    """The same inputs as files: FormatError naming the file, never another exception."""
    for index, (label, text, expected) in enumerate(_hostile_policy_texts()):
        if not isinstance(text, (str, bytes)):
            continue
        path = tmp_path / f'policy_{index}.json'
        path.write_bytes(
            text if isinstance(text, bytes) else text.encode('utf-8', 'surrogatepass')
        )
        with pytest.raises(FormatError, match=expected) as error:
            load_policy(path, OBSERVATION_NAMES, ACTION_NAMES)
        assert str(error.value).startswith(str(path)), (label, str(error.value)[:200])


def test_measure_policy_latency_reports_percentiles():
    result = measure_policy_latency(make_known_polynomial_policy(), n_calls=200)
    assert set(result) == {'p50_us', 'p99_us', 'max_us', 'mean_us'}
    assert 0 < result['p50_us'] <= result['p99_us'] <= result['max_us']
