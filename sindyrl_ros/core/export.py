"""Sparse polynomial policies as dependency-free source code: a C99 header or a Python function.

A distilled policy is a handful of monomials of the observation, so it can run where numpy,
ROS and this package cannot: on a microcontroller next to the motor driver, or pasted into a
script. The generated code evaluates only the nonzero terms, with every constant written to
17 significant digits (``%.17g``, enough to round-trip a double exactly), and clips to the
policy's action limits, so it computes what :class:`SparsePolynomialPolicy` computes (up to
the rounding of the sum's order). A comment records the equations, the observation and
action names in order, and where the policy came from (source model and policy versions, a
SHA-256 of the policy document), so a deployed copy can be traced to its run.

Non-finite values never reach an actuator: a NaN or infinite observation, or a
polynomial value that is not finite (an overflow, or inf - inf between large terms), gives
the **safe command** instead, and the clip is written so that NaN cannot pass it (``u < lo
? lo : (u > hi ? hi : u)`` returns NaN for NaN). The safe command is the ``safe_command``
argument, else the policy's ``metadata['safe_command']``, else 0 clipped into the limits;
an explicit one must be finite and within the limits. Finiteness is tested as ``x - x ==
0.0`` (true only for finite x), so the C header still needs no ``<math.h>``; do not
compile it with ``-ffast-math``, which assumes NaN never occurs.
"""

from __future__ import annotations

import hashlib
import json
import keyword
import re

import numpy as np

from sindyrl_ros.core.policies import SparsePolynomialPolicy

__all__ = ['export_c', 'export_python']

# C99 keywords and names the generated function uses itself.
_C_RESERVED = frozenset(
    'auto break case char const continue default do double else enum extern float for goto '
    'if inline int long register restrict return short signed sizeof static struct switch '
    'typedef union unsigned void volatile while _Bool _Complex _Imaginary obs action'.split()
)
_C_IDENTIFIER = re.compile(r'[A-Za-z_][A-Za-z0-9_]*\Z')
_PROVENANCE_KEYS = ('policy_version', 'source_model_version', 'teacher', 'kind_deployed')


def _check_policy(policy) -> SparsePolynomialPolicy:
    if not isinstance(policy, SparsePolynomialPolicy):
        kind = getattr(policy, 'kind', type(policy).__name__)
        raise TypeError(
            f'only sparse polynomial policies export to source code, not {kind!r} '
            '(distil one with distill_sparse_policy)'
        )
    return policy


def _literal(value: float) -> str:
    """A double literal that round-trips exactly and is a double in both C and Python."""
    if not np.isfinite(value):
        raise ValueError(f'cannot export the non-finite constant {value}')
    text = format(float(value), '.17g')  # printf's %.17g
    return text if any(c in text for c in '.e') else text + '.0'


def _tuple(values) -> str:
    """A Python tuple literal of exact doubles."""
    items = [_literal(value) for value in values]
    return '(' + ', '.join(items) + (',)' if len(items) == 1 else ')')


_LINE_BREAKS = re.compile(r'[\x00-\x1f\x7f\x85\u2028\u2029]')


def _comment_safe(text: str) -> str:
    """Names are arbitrary strings: keep them from opening or closing a C comment, forming a
    trigraph (``??/``) or breaking a line."""
    text = _LINE_BREAKS.sub(' ', str(text))
    return text.replace('/*', '/ *').replace('*/', '* /').replace('??', '? ?')


def _provenance(policy: SparsePolynomialPolicy) -> list[str]:
    """Lines naming where the policy came from."""
    document = policy.to_dict()
    digest = hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()
    lines = [
        f'{policy.kind} policy, format {document["format"]} version {document["version"]}, '
        f'{policy.n_nonzero} nonzero coefficients',
        f'policy sha256 {digest} (of its JSON document with sorted keys)',
    ]
    for key in _PROVENANCE_KEYS:
        if key in policy.metadata or key in ('policy_version', 'source_model_version'):
            lines.append(f'{key}: {json.dumps(policy.metadata.get(key, "unknown"))}')
    return lines


def _safe_command(policy: SparsePolynomialPolicy, safe_command) -> list[str]:
    """The safe command as exact literals, one per action channel (see the module doc)."""
    low, high = policy.action_low, policy.action_high
    if safe_command is None:
        safe_command = policy.metadata.get('safe_command')
    if safe_command is None:
        values = np.clip(np.zeros(policy.action_dim), low, high)
    else:
        try:
            values = np.asarray(safe_command, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError, OverflowError):
            values = np.full(0, np.nan)
        if (
            values.shape != (policy.action_dim,)
            or not np.all(np.isfinite(values))
            or np.any(values < low)
            or np.any(values > high)
        ):
            raise ValueError(
                f'safe_command {safe_command!r}: expected {policy.action_dim} finite numbers '
                f'within the action limits [{low.tolist()}, {high.tolist()}]'
            )
    return [_literal(value) for value in values]


def _description(policy: SparsePolynomialPolicy, safe: list[str]) -> list[str]:
    """The comment block both exports carry: names, limits, equations, provenance."""
    lines = ['Generated by sindyrl_ros.core.export from a sparse polynomial policy.', '']
    lines.append('Observation, in this order:')
    lines += [f'  [{i}] {name}' for i, name in enumerate(policy.observation_names)]
    lines.append('Action, in this order, clipped to [low, high]:')
    lines += [
        f'  [{j}] {name} in [{_literal(low)}, {_literal(high)}]'
        for j, (name, low, high) in enumerate(
            zip(policy.action_names, policy.action_low, policy.action_high, strict=True)
        )
    ]
    lines += ['', 'Equations:']
    lines += [f'  {equation}' for equation in policy.equations(precision=17)]
    lines += [
        '',
        f'Safe command [{", ".join(safe)}]: the action for a NaN or infinite observation',
        'and for a channel whose polynomial value is not finite (overflow, inf - inf).',
    ]
    lines += ['', *_provenance(policy)]
    return [_comment_safe(line) for line in lines]


class _Terms:
    """The arithmetic both exports share: powers, monomials, sums of the nonzero terms.

    Powers are built by repeated multiplication and monomials multiply their factors in
    observation order, as SparsePolynomialPolicy does, so the results agree to the rounding
    of the final sum.
    """

    def __init__(self, policy: SparsePolynomialPolicy):
        self.policy = policy
        coefficients = policy.coefficients
        self.active = [k for k in range(len(policy.powers)) if np.any(coefficients[k] != 0.0)]
        used = policy.powers[self.active]
        self.max_power = used.max(axis=0) if self.active else np.zeros(policy.observation_dim)
        self.feature_names = policy.feature_names()

    def variables(self) -> list[tuple[str, int | None, str, str]]:
        """(name, observation index or None, product, comment) of each power in use.

        The observation index is set for first powers (read from the observation), the
        product for higher ones (the previous power times the first).
        """
        definitions = []
        for j, name in enumerate(self.policy.observation_names):
            for power in range(1, int(self.max_power[j]) + 1):
                if power == 1:
                    definitions.append((f'x{j}', j, '', name))
                else:
                    previous = f'x{j}' if power == 2 else f'x{j}_{power - 1}'
                    definitions.append(
                        (f'x{j}_{power}', None, f'{previous} * x{j}', f'{name}^{power}')
                    )
        return definitions

    def _factors(self, k: int) -> list[str]:
        return [
            f'x{j}' if power == 1 else f'x{j}_{power}'
            for j, power in enumerate(self.policy.powers[k])
            if power > 0
        ]

    def monomials(self) -> list[tuple[str, str, str]]:
        """(name, product, comment) of each monomial of two or more factors in use."""
        return [
            (f't{k}', ' * '.join(self._factors(k)), self.feature_names[k])
            for k in self.active
            if len(self._factors(k)) > 1
        ]

    def terms(self, action: int) -> list[str]:
        """The polynomial of one action channel: its nonzero terms, in feature order.

        The first term carries its sign (``-0.5 * x1``), the others an operator
        (``+ 2.0 * t7``), so that joined with spaces they are the sum.
        """
        terms = []
        for k in self.active:
            value = float(self.policy.coefficients[k, action])
            if value == 0.0:
                continue
            factors = self._factors(k)
            variable = f't{k}' if len(factors) > 1 else (factors[0] if factors else None)
            magnitude = _literal(abs(value))
            term = magnitude if variable is None else f'{magnitude} * {variable}'
            if not terms:
                terms.append(f'-{term}' if value < 0 else term)
            else:
                terms.append(f'- {term}' if value < 0 else f'+ {term}')
        return terms or ['0.0']


def _check_name(name: str, language: str) -> None:
    if language == 'c':
        if not _C_IDENTIFIER.match(name) or name in _C_RESERVED:
            raise ValueError(f'{name!r} is not a usable C function name')
    elif not name.isidentifier() or keyword.iskeyword(name):
        raise ValueError(f'{name!r} is not a usable Python function name')


def export_c(
    policy: SparsePolynomialPolicy, name: str = 'sindyrl_policy', safe_command=None
) -> str:
    """The policy as a C99 header: ``void name(const double obs[n], double action[m])``.

    Dependency free (no includes, no libm): one ``static inline`` function, so the header can
    be included in several files, and two size macros (``NAME_OBSERVATION_DIM``,
    ``NAME_ACTION_DIM``, NAME upper-cased). Compiles warning-free with
    ``-std=c99 -Wall -Wextra -pedantic``.

    Parameters
    ----------
    policy : SparsePolynomialPolicy
        n observation features, m action channels.
    name : str
        The C function's name (an identifier); upper-cased for the include guard and macros.
    safe_command : sequence of float, optional
        The action for non-finite inputs or values (see the module doc).

    Returns
    -------
    str
        The header's text.

    Raises
    ------
    TypeError
        For any other kind of policy (an MLP is thousands of weights, not an equation).
    ValueError
        For a name that is not a C identifier, or a safe command outside the limits.
    """
    policy = _check_policy(policy)
    _check_name(name, 'c')
    safe = _safe_command(policy, safe_command)
    n, m = policy.observation_dim, policy.action_dim
    terms = _Terms(policy)
    macro = name.upper()
    lines = ['/*', *(f' * {line}'.rstrip() for line in _description(policy, safe)), ' */']
    lines += [f'#ifndef {macro}_H', f'#define {macro}_H', '']
    lines += [f'#define {macro}_OBSERVATION_DIM {n}', f'#define {macro}_ACTION_DIM {m}', '']
    lines += [f'static inline void {name}(const double obs[{n}], double action[{m}])', '{']
    variables = terms.variables()
    if n == 0:
        lines.append('    (void)obs;  /* every term is constant */')
    else:
        lines += [
            '    /* NaN or infinite observation: the safe command (x - x is 0 only if finite) */',
            f'    for (int i = 0; i < {n}; ++i) {{',
            '        if (!(obs[i] - obs[i] == 0.0)) {',
            *(f'            action[{j}] = {value};' for j, value in enumerate(safe)),
            '            return;',
            '        }',
            '    }',
        ]
    definitions = [
        (variable, f'obs[{index}]' if index is not None else product, comment)
        for variable, index, product, comment in variables
    ]
    for variable, expression, comment in [*definitions, *terms.monomials()]:
        comment = _comment_safe(comment)
        lines.append(f'    const double {variable} = {expression};  /* {comment} */')
    for j, action_name in enumerate(policy.action_names):
        low, high = _literal(policy.action_low[j]), _literal(policy.action_high[j])
        first, *rest = terms.terms(j)
        lines.append(f'    /* {_comment_safe(action_name)} */')
        lines.append(f'    const double u{j} = {first}')
        lines += [f'        {term}' for term in rest]
        lines[-1] += ';'
        # Clipped when finite; NaN and +-inf (overflow, inf - inf) give the safe command.
        lines.append(
            f'    action[{j}] = u{j} - u{j} == 0.0 ? (u{j} < {low} ? {low} : '
            f'(u{j} > {high} ? {high} : u{j})) : {safe[j]};'
        )
    lines += ['}', '', f'#endif /* {macro}_H */', '']
    return '\n'.join(lines)


def export_python(
    policy: SparsePolynomialPolicy, name: str = 'sindyrl_policy', safe_command=None
) -> str:
    """The policy as a dependency-free Python function ``name(observation) -> list[float]``.

    ``observation`` is any sequence of n numbers, ordered as the comment lists them; the
    function returns m floats. Module constants ``NAME_OBSERVATION_NAMES``,
    ``NAME_ACTION_NAMES``, ``NAME_ACTION_LOW``, ``NAME_ACTION_HIGH`` and
    ``NAME_SAFE_COMMAND`` (NAME upper-cased) come with it.

    Parameters
    ----------
    policy : SparsePolynomialPolicy
        n observation features, m action channels.
    name : str
        The function's name (a Python identifier).
    safe_command : sequence of float, optional
        The action for non-finite inputs or values (see the module doc).

    Returns
    -------
    str
        The module's text.

    Raises
    ------
    TypeError
        For any other kind of policy.
    ValueError
        For a name that is not a Python identifier, or a safe command outside the limits.
    """
    policy = _check_policy(policy)
    _check_name(name, 'python')
    safe = _safe_command(policy, safe_command)
    n, m = policy.observation_dim, policy.action_dim
    terms = _Terms(policy)
    constant = name.upper()
    lines = [f'# {line}'.rstrip() for line in _description(policy, safe)]
    lines += [
        '',
        'import math',
        '',
        f'{constant}_OBSERVATION_NAMES = {tuple(policy.observation_names)!r}',
        f'{constant}_ACTION_NAMES = {tuple(policy.action_names)!r}',
        f'{constant}_ACTION_LOW = {_tuple(policy.action_low)}',
        f'{constant}_ACTION_HIGH = {_tuple(policy.action_high)}',
        f'{constant}_SAFE_COMMAND = {_tuple(float(value) for value in safe)}',
        '',
        '',
        f'def {name}(observation):',
        f'    """Action ({m} float{"s" * (m != 1)}) for one observation '
        f'({n} numbers, in the order above)."""',
    ]
    if n:
        lines += [
            f'    if not all(math.isfinite(float(observation[i])) for i in range({n})):',
            f'        return list({constant}_SAFE_COMMAND)  # a NaN or infinite observation',
        ]
    for variable, index, product, comment in terms.variables():
        expression = f'float(observation[{index}])' if index is not None else product
        lines.append(f'    {variable} = {expression}  # {_comment_safe(comment)}')
    for variable, product, comment in terms.monomials():
        lines.append(f'    {variable} = {product}  # {_comment_safe(comment)}')
    outputs = []
    for j, action_name in enumerate(policy.action_names):
        low, high = _literal(policy.action_low[j]), _literal(policy.action_high[j])
        first, *rest = terms.terms(j)
        lines.append(f'    # {_comment_safe(action_name)}')
        if rest:
            lines += [
                f'    u{j} = (',
                f'        {first}',
                *(f'        {t}' for t in rest),
                '    )',
            ]
        else:
            lines.append(f'    u{j} = {first}')
        # Clipped when finite; NaN and +-inf (overflow, inf - inf) give the safe command.
        outputs.append(
            f'({low} if u{j} < {low} else ({high} if u{j} > {high} else u{j})) '
            f'if math.isfinite(u{j}) else {safe[j]}'
        )
    lines += ['    return [', *(f'        {output},' for output in outputs), '    ]', '']
    return '\n'.join(lines)
