"""Exported sparse policies compute what the numpy policy computes: C compiled, Python run."""

import ctypes
import json
from pathlib import Path
import shutil
import subprocess

import numpy as np
import pytest

from sindyrl_ros import cli
from sindyrl_ros.core.export import export_c, export_python
from sindyrl_ros.core.policies import MLPPolicy, SparsePolynomialPolicy, polynomial_powers

CARTPOLE_OBSERVATIONS = ['cart_x', 'cos_theta', 'sin_theta', 'cart_x_dot', 'theta_dot']
COMPILER = shutil.which('cc')
needs_compiler = pytest.mark.skipif(COMPILER is None, reason='no C compiler (cc) on this machine')


def sparse_policy(seed=0, n_actions=1, n_terms=12, scale=0.5, degree=4, names=None, low=-1.0):
    """A random sparse polynomial policy on the cart-pole observation, up to degree 4."""
    rng = np.random.default_rng(seed)
    names = names or CARTPOLE_OBSERVATIONS
    powers = polynomial_powers(len(names), degree)
    coefficients = np.zeros((len(powers), n_actions))
    rows = rng.choice(len(powers), n_terms, replace=False)
    coefficients[rows] = rng.normal(0.0, scale, (n_terms, n_actions))
    coefficients[rows[0], 0] = 0.0  # a monomial used by one action channel only
    return SparsePolynomialPolicy(
        powers,
        coefficients,
        names,
        [f'u{j}' for j in range(n_actions)],
        low * np.ones(n_actions),
        np.linspace(1.0, 3.0, n_actions),
        metadata={'policy_version': 7, 'source_model_version': 5, 'teacher': 'mlp'},
    )


def observations(n=1000, seed=1, dim=5):
    """Cart-pole-like states: position, an angle's cosine and sine, velocities."""
    rng = np.random.default_rng(seed)
    theta = rng.uniform(-np.pi, np.pi, n)
    states = np.column_stack(
        [
            rng.uniform(-1.8, 1.8, n),
            np.cos(theta),
            np.sin(theta),
            rng.normal(0, 2, n),
            rng.normal(0, 5, n),
        ]
    )
    return np.ascontiguousarray(states[:, :dim])


def compile_policy(header: str, name: str, n: int, m: int, directory: Path):
    """Build the header into a shared library; return batch(observations) -> actions."""
    (directory / 'policy.h').write_text(header)
    (directory / 'batch.c').write_text(
        '#include "policy.h"\n'
        'void evaluate_batch(const double *observations, double *actions, int count)\n'
        '{\n'
        '    for (int i = 0; i < count; ++i) {\n'
        f'        {name}(observations + {n} * i, actions + {m} * i);\n'
        '    }\n'
        '}\n'
    )
    library = directory / 'libpolicy.so'
    result = subprocess.run(
        [
            COMPILER,
            '-std=c99',
            '-Wall',
            '-Wextra',
            '-pedantic',
            '-Werror',
            '-O2',
            '-shared',
            '-fPIC',
            '-o',
            str(library),
            str(directory / 'batch.c'),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    function = ctypes.CDLL(str(library)).evaluate_batch
    pointer = ctypes.POINTER(ctypes.c_double)
    function.argtypes = [pointer, pointer, ctypes.c_int]
    function.restype = None

    def batch(states):
        states = np.ascontiguousarray(states, dtype=np.float64)
        actions = np.full((len(states), m), np.nan)
        function(states.ctypes.data_as(pointer), actions.ctypes.data_as(pointer), len(states))
        return actions

    return batch


def load_python(text: str, name: str):
    """Run the generated module (our own output) in an empty namespace."""
    namespace = {}
    exec(compile(text, f'<exported {name}>', 'exec'), namespace)
    return namespace


@needs_compiler
@pytest.mark.parametrize('n_actions', [1, 2])
def test_c_export_matches_the_numpy_policy(n_actions, tmp_path):
    policy = sparse_policy(n_actions=n_actions)
    states = observations()
    batch = compile_policy(
        export_c(policy, 'cartpole_policy'), 'cartpole_policy', 5, n_actions, tmp_path
    )
    expected = policy.act_batch(states)
    np.testing.assert_allclose(batch(states), expected, rtol=1e-9, atol=1e-9)
    # The controller's single-observation path agrees too.
    for state, action in zip(states[:20], batch(states[:20]), strict=True):
        np.testing.assert_allclose(action, policy(state), rtol=1e-9, atol=1e-9)


def test_python_export_matches_the_numpy_policy():
    policy = sparse_policy(n_actions=2, seed=3)
    namespace = load_python(export_python(policy, 'cartpole_policy'), 'cartpole_policy')
    function = namespace['cartpole_policy']
    states = observations(seed=4)
    actions = np.array([function(list(state)) for state in states])
    np.testing.assert_allclose(actions, policy.act_batch(states), rtol=1e-9, atol=1e-9)
    assert isinstance(function(states[0]), list)  # takes any sequence, numpy rows too
    assert namespace['CARTPOLE_POLICY_OBSERVATION_NAMES'] == tuple(CARTPOLE_OBSERVATIONS)
    assert namespace['CARTPOLE_POLICY_ACTION_NAMES'] == ('u0', 'u1')
    assert namespace['CARTPOLE_POLICY_ACTION_LOW'] == (-1.0, -1.0)
    assert namespace['CARTPOLE_POLICY_ACTION_HIGH'] == (1.0, 3.0)


@needs_compiler
def test_both_exports_clip_to_the_action_limits(tmp_path):
    policy = sparse_policy(scale=5.0, seed=5, n_actions=2, low=-0.5)
    states = observations(seed=6)
    expected = policy.act_batch(states)
    at_low, at_high = expected == policy.action_low, expected == policy.action_high
    assert at_low.mean() > 0.2 and at_high.mean() > 0.2  # clipping is really active
    c_actions = compile_policy(export_c(policy, 'clipped'), 'clipped', 5, 2, tmp_path)(states)
    function = load_python(export_python(policy, 'clipped'), 'clipped')['clipped']
    python_actions = np.array([function(state) for state in states])
    for actions in (c_actions, python_actions):
        np.testing.assert_allclose(actions, expected, rtol=1e-9, atol=1e-9)
        # Clipped outputs are the limits exactly, and nothing is outside them.
        assert np.array_equal(actions == policy.action_low, at_low)
        assert np.array_equal(actions == policy.action_high, at_high)


def test_exports_hold_only_the_nonzero_terms_and_describe_the_policy():
    names = ['cos_theta', 'sin_theta', 'theta_dot']
    powers = polynomial_powers(3, 3)
    coefficients = np.zeros((len(powers), 1))
    row = {tuple(p): k for k, p in enumerate(powers.tolist())}
    coefficients[row[(1, 0, 0)]] = -1.5
    coefficients[row[(0, 1, 2)]] = 0.1
    coefficients[row[(0, 0, 0)]] = 0.25
    policy = SparsePolynomialPolicy(
        powers,
        coefficients,
        names,
        ['torque'],
        [-2.0],
        [2.0],
        metadata={'policy_version': 3, 'source_model_version': 2},
    )
    header = export_c(policy, 'pendulum_policy')
    body = header[header.index('static inline') :]
    # Three terms, in feature order, each constant written to round-trip exactly.
    monomial = row[(0, 1, 2)]
    assert f'const double t{monomial} = x1 * x2_2;  /* sin_theta*theta_dot^2 */' in body
    assert (
        'const double u0 = 0.25\n'
        '        - 1.5 * x0\n'
        f'        + 0.10000000000000001 * t{monomial};\n'
    ) in body
    assert 'x2_2' in body and 'obs[2]' in body  # theta_dot^2, read once
    assert 't' + str(row[(1, 1, 0)]) not in body  # an unused monomial is not computed
    for text in (header, export_python(policy, 'pendulum_policy')):
        assert (
            'torque = clip(0.25 - 1.5*cos_theta + 0.10000000000000001*sin_theta*theta_dot' in text
        )
        for name in names:
            assert name in text
        assert 'source_model_version: 2' in text and 'policy_version: 3' in text
        assert 'sha256 ' in text


@needs_compiler
def test_awkward_names_constant_and_zero_policies_still_compile(tmp_path):
    """Names are free strings: they must not end a comment or a line of the generated code."""
    names = ['x */ int broken; /*', 'line\nbreak??/', 'θ̇ "quoted" \\']
    powers = np.array([[0, 0, 0], [1, 0, 0], [0, 2, 1]])
    cases = {
        'awkward': [[0.5], [-1.0], [2.0]],
        'constant_only': [[0.75], [0.0], [0.0]],
        'all_zero': [[0.0], [0.0], [0.0]],
    }
    states = observations(n=50, dim=3)
    for index, (name, coefficients) in enumerate(cases.items()):
        policy = SparsePolynomialPolicy(powers, coefficients, names, ['a */ b'], [-1.0], [1.0])
        directory = tmp_path / name
        directory.mkdir()
        batch = compile_policy(export_c(policy, name), name, 3, 1, directory)
        function = load_python(export_python(policy, name), name)[name]
        expected = policy.act_batch(states)
        np.testing.assert_allclose(batch(states), expected, rtol=1e-9, atol=1e-9)
        python_actions = np.array([function(state) for state in states])
        np.testing.assert_allclose(python_actions, expected, rtol=1e-9, atol=1e-9)
        assert index < 1 or np.all(expected == expected[0])


def test_only_sparse_policies_and_usable_names_export():
    rng = np.random.default_rng(0)
    mlp = MLPPolicy(
        [(rng.normal(size=(4, 5)), np.zeros(4)), (rng.normal(size=(1, 4)), np.zeros(1))],
        'tanh',
        CARTPOLE_OBSERVATIONS,
        ['force'],
        [-1.0],
        [1.0],
    )
    for export in (export_c, export_python):
        with pytest.raises(TypeError, match='only sparse polynomial'):
            export(mlp, 'policy')
    policy = sparse_policy()
    for bad in ('2fast', 'has space', 'int', 'obs', ''):
        with pytest.raises(ValueError, match='not a usable C function name'):
            export_c(policy, bad)
    for bad in ('2fast', 'has space', 'lambda', ''):
        with pytest.raises(ValueError, match='not a usable Python function name'):
            export_python(policy, bad)


@needs_compiler
def test_cli_writes_c_and_python_files(tmp_path, capsys):
    policy = sparse_policy(n_actions=1, seed=8)
    policy_file = tmp_path / 'policy.json'
    policy.save(policy_file)
    header = tmp_path / 'out' / 'policy.h'
    header.parent.mkdir()
    assert (
        cli.main(
            [
                'export',
                '--policy',
                str(policy_file),
                '--format',
                'c',
                '--output',
                str(header),
                '--name',
                'rig_policy',
            ]
        )
        == 0
    )
    assert 'rig_policy' in capsys.readouterr().err
    states = observations(n=200, seed=9)
    batch = compile_policy(header.read_text(), 'rig_policy', 5, 1, tmp_path / 'out')
    np.testing.assert_allclose(batch(states), policy.act_batch(states), rtol=1e-9, atol=1e-9)

    module = tmp_path / 'policy_module.py'
    assert (
        cli.main(
            ['export', '--policy', str(policy_file), '--format', 'python', '--output', str(module)]
        )
        == 0
    )
    function = load_python(module.read_text(), 'sindyrl_policy')['sindyrl_policy']
    np.testing.assert_allclose(
        [function(state) for state in states], policy.act_batch(states), rtol=1e-9, atol=1e-9
    )

    # Without --output the code goes to standard output.
    assert cli.main(['export', '--policy', str(policy_file), '--format', 'python']) == 0
    assert capsys.readouterr().out == module.read_text()


def test_cli_refuses_mlp_and_corrupt_policies(tmp_path, capsys):
    rng = np.random.default_rng(0)
    mlp = MLPPolicy(
        [(rng.normal(size=(4, 5)), np.zeros(4)), (rng.normal(size=(1, 4)), np.zeros(1))],
        'tanh',
        CARTPOLE_OBSERVATIONS,
        ['force'],
        [-1.0],
        [1.0],
    )
    mlp_file = tmp_path / 'mlp.json'
    mlp.save(mlp_file)
    output = tmp_path / 'policy.h'
    with pytest.raises(SystemExit, match="kind 'mlp'; only sparse polynomial policies export"):
        cli.main(['export', '--policy', str(mlp_file), '--format', 'c', '--output', str(output)])
    corrupt = tmp_path / 'corrupt.json'
    document = sparse_policy().to_dict()
    document['coefficients'] = document['coefficients'][:-1]  # truncated
    corrupt.write_text(json.dumps(document))
    # A bad file is a configuration error: one FATAL line naming it, exit code 2.
    assert (
        cli.main(['export', '--policy', str(corrupt), '--format', 'c', '--output', str(output)])
        == 2
    )
    assert f'FATAL: {corrupt}.coefficients: expected shape' in capsys.readouterr().err
    sparse_file = tmp_path / 'sparse.json'
    sparse_policy().save(sparse_file)
    with pytest.raises(SystemExit, match='not a usable C function name'):
        cli.main(['export', '--policy', str(sparse_file), '--format', 'c', '--name', 'int'])
    assert not output.exists()


def _hostile_states(rng, dim=5):
    """Observations with NaN or +-inf in each position, huge finite ones (1e200..1e300: every
    monomial of degree >= 2 overflows, so mixed signs give inf - inf), and ordinary ones."""
    rows = []
    for bad in (np.nan, np.inf, -np.inf):
        for position in range(dim):
            row = observations(n=1, seed=position, dim=dim)[0]
            row[position] = bad
            rows.append(row)
    rows.append(np.full(dim, np.nan))
    signs = rng.choice([-1.0, 1.0], (60, dim))
    rows += list(signs * 10.0 ** rng.uniform(200, 300, (60, dim)))
    one_huge = observations(n=40, seed=9, dim=dim)
    one_huge[np.arange(40), rng.integers(0, dim, 40)] = rng.choice([-1e300, 1e300], 40)
    rows += list(one_huge)
    rows += list(observations(n=40, seed=10, dim=dim))
    return np.array(rows)


def _reference_actions(policy, states, safe):
    """What an export must give: the safe command for a non-finite observation or a
    non-finite polynomial value, else the value clipped into the limits."""
    actions = np.empty((len(states), policy.action_dim))
    values = np.empty((len(states), policy.action_dim))
    finite_rows = np.all(np.isfinite(states), axis=1)
    actions[~finite_rows] = safe
    with np.errstate(all='ignore'):
        features = policy.features(states[finite_rows])
        for j in range(policy.action_dim):
            used = policy.coefficients[:, j] != 0.0
            value = (features[:, used] * policy.coefficients[used, j]).sum(axis=1)
            clipped = np.clip(value, policy.action_low[j], policy.action_high[j])
            actions[finite_rows, j] = np.where(np.isfinite(value), clipped, safe[j])
            values[finite_rows, j] = value
    return actions, values[finite_rows]


@needs_compiler
def test_exports_give_the_safe_command_for_nan_inf_and_overflow(tmp_path):
    """NaN, +-inf and huge observations: the C header (compiled with -Werror) and the Python
    function give the safe command for a non-finite observation or a non-finite polynomial
    value (overflow, inf - inf), never NaN or a value outside the limits. The old clip
    ``u < lo ? lo : (u > hi ? hi : u)`` let NaN through.
    """
    policy = sparse_policy(n_actions=2, n_terms=20, seed=11, low=-1.0)
    safe = [0.25, 1.5]
    states = _hostile_states(np.random.default_rng(12))
    expected, values = _reference_actions(policy, states, np.array(safe))
    # The cases are really there: NaN (inf - inf) and infinite values from finite inputs.
    assert np.isnan(values).any() and np.isinf(values).any()
    batch = compile_policy(export_c(policy, 'guarded', safe), 'guarded', 5, 2, tmp_path)
    function = load_python(export_python(policy, 'guarded', safe), 'guarded')['guarded']
    c_actions = batch(states)
    python_actions = np.array([function(state) for state in states])
    for actions in (c_actions, python_actions):
        assert np.all(np.isfinite(actions))
        assert np.all((actions >= policy.action_low) & (actions <= policy.action_high))
        np.testing.assert_allclose(actions, expected, rtol=1e-9, atol=1e-9)
        unsafe_inputs = ~np.all(np.isfinite(states), axis=1)
        assert np.all(actions[unsafe_inputs] == safe)
    # Without a safe command: the policy's metadata, else 0 clipped into the limits.
    low_positive = sparse_policy(n_actions=1, seed=13, low=0.5)
    nan_state = np.full((1, 5), np.nan)
    header = export_c(low_positive, 'default_safe')
    directory = tmp_path / 'default'
    directory.mkdir()
    assert compile_policy(header, 'default_safe', 5, 1, directory)(nan_state)[0, 0] == 0.5
    python = load_python(export_python(low_positive, 'default_safe'), 'default_safe')
    assert python['default_safe']([np.nan] * 5) == [0.5]
    low_positive.metadata['safe_command'] = [0.75]
    python = load_python(export_python(low_positive, 'meta_safe'), 'meta_safe')
    assert python['meta_safe']([np.inf] * 5) == [0.75]
    for bad in ([5.0], [np.nan], [0.6, 0.7], 'x'):
        with pytest.raises(ValueError, match='safe_command'):
            export_c(low_positive, 'bad', bad)
