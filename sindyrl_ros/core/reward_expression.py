"""Rewards and termination conditions written as text: a safe compiler of expressions.

:func:`expression_reward` builds a vectorised reward from an expression of observation and
action names (for a robot configured from a YAML file); a task's ``termination`` expression is
compiled the same way.  The text is parsed with :mod:`ast` and only whitelisted nodes are
compiled, into closures over numpy arrays: nothing is passed to ``eval``, and an expression
over the size caps is refused before it is compiled.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Sequence
import math
from typing import Any

import numpy as np

from sindyrl_ros.core.reward import RewardFunction

__all__ = [
    'MAX_EXPRESSION_CHARACTERS',
    'MAX_EXPRESSION_DEPTH',
    'MAX_EXPRESSION_NODES',
    'expression_reward',
]


# Caps on a reward expression, checked before it is compiled: the compiler recurses once per
# level, and a reward is a few dozen terms, not a program. Without them a 1,000-term sum
# (depth 1,000) raised RecursionError instead of a refusal.
MAX_EXPRESSION_CHARACTERS = 10_000
MAX_EXPRESSION_NODES = 2_000  # ast nodes, operators and name contexts included
MAX_EXPRESSION_DEPTH = 100


def _excerpt(text: str, limit: int = 200) -> str:
    """``text`` cut for an error message (an expression may be 10,000 characters)."""
    return text if len(text) <= limit else f'{text[:limit]}... ({len(text)} characters)'


def _check_size(tree: ast.AST) -> None:
    """Refuse a parsed expression over the node or depth cap (iteratively: no recursion)."""
    count, stack = 0, [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_EXPRESSION_NODES:
            raise ValueError(
                f'reward expression is too large (more than {MAX_EXPRESSION_NODES} syntax nodes)'
            )
        if depth > MAX_EXPRESSION_DEPTH:
            raise ValueError(
                f'reward expression nests too deep (more than {MAX_EXPRESSION_DEPTH} levels; '
                'a long sum nests one level per term)'
            )
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))


_FUNCTIONS: dict[str, Callable[..., Any]] = {
    'cos': np.cos,
    'sin': np.sin,
    'tan': np.tan,
    'tanh': np.tanh,
    'arctan2': np.arctan2,
    'abs': np.abs,
    'exp': np.exp,
    'log': np.log,
    'sqrt': np.sqrt,
    'square': np.square,
    'minimum': np.minimum,
    'maximum': np.maximum,
    'clip': np.clip,
    'where': np.where,
}
_CONSTANTS = {'pi': np.pi}
_BINARY = {
    ast.Add: np.add,
    ast.Sub: np.subtract,
    ast.Mult: np.multiply,
    ast.Div: np.divide,
    ast.Pow: np.power,
    ast.Mod: np.mod,
    ast.BitAnd: np.logical_and,
    ast.BitOr: np.logical_or,
}
_UNARY = {ast.USub: np.negative, ast.UAdd: np.positive, ast.Invert: np.logical_not}
_COMPARE = {
    ast.Lt: np.less,
    ast.LtE: np.less_equal,
    ast.Gt: np.greater,
    ast.GtE: np.greater_equal,
    ast.Eq: np.equal,
    ast.NotEq: np.not_equal,
}


def _offending(node: ast.AST, expression: str) -> str:
    segment = ast.get_source_segment(expression, node)
    return _excerpt(segment) if segment else type(node).__name__


def _compile(node: ast.AST, expression: str, variables: set[str]) -> Callable[[dict], Any]:
    """Turn a whitelisted AST node into a closure over a dict of arrays."""
    if isinstance(node, ast.Expression):
        return _compile(node.body, expression, variables)
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            raise ValueError(
                f'only numeric constants are allowed, got {_offending(node, expression)!r}'
            )
        # Every constant becomes a float64 here, so arithmetic on constants (9**9**9**9) is a
        # few float operations at evaluation, never Python big-integer arithmetic.
        try:
            value = np.float64(float(node.value))
        except OverflowError:
            raise ValueError(
                f'constant {_offending(node, expression)!r} is too large for a float'
            ) from None
        if not math.isfinite(value):
            raise ValueError(f'constant {_offending(node, expression)!r} is not finite')
        return lambda env: value
    if isinstance(node, ast.Name):
        name = node.id
        if name in variables:
            return lambda env: env[name]
        if name in _CONSTANTS:
            value = _CONSTANTS[name]
            return lambda env: value
        if name in _FUNCTIONS:
            raise ValueError(f'function {name!r} must be called, e.g. {name}(...)')
        raise ValueError(
            f'unknown name {name!r}; allowed: observation/action names {sorted(variables)}, '
            f'functions {sorted(_FUNCTIONS)}, constants {sorted(_CONSTANTS)}'
        )
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        operation = _BINARY[type(node.op)]
        left = _compile(node.left, expression, variables)
        right = _compile(node.right, expression, variables)
        return lambda env: operation(left(env), right(env))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        operation = _UNARY[type(node.op)]
        operand = _compile(node.operand, expression, variables)
        return lambda env: operation(operand(env))
    if isinstance(node, ast.Compare) and all(type(op) in _COMPARE for op in node.ops):
        parts = [_compile(node.left, expression, variables)]
        parts += [_compile(c, expression, variables) for c in node.comparators]
        operations = [_COMPARE[type(op)] for op in node.ops]

        def compare(env):
            values = [part(env) for part in parts]
            result = operations[0](values[0], values[1])
            for index in range(1, len(operations)):
                result = np.logical_and(
                    result, operations[index](values[index], values[index + 1])
                )
            return result

        return compare
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCTIONS:
            raise ValueError(
                f'call of {_offending(node.func, expression)!r} is not allowed; '
                f'allowed functions: {sorted(_FUNCTIONS)}'
            )
        if node.keywords:
            raise ValueError(
                f'keyword arguments are not allowed in {_offending(node, expression)!r}'
            )
        function = _FUNCTIONS[node.func.id]
        arguments = [_compile(a, expression, variables) for a in node.args]
        return lambda env: function(*(a(env) for a in arguments))
    if isinstance(node, ast.Attribute):
        raise ValueError(f'attribute access {_offending(node, expression)!r} is not allowed')
    raise ValueError(
        f'{type(node).__name__} {_offending(node, expression)!r} is not allowed in a reward '
        'expression (use arithmetic, comparisons and the allowed functions)'
    )


def expression_reward(
    expression: str,
    observation_names: Sequence[str],
    action_names: Sequence[str],
    observation: str = 'next',
) -> RewardFunction:
    """Reward from a text expression of observation and action names.

    Example: ``"-(x**2) - 0.1*thdot**2 - 0.001*u**2"``. Allowed: numbers, the names,
    ``pi``, ``+ - * / ** %``, comparisons, ``&``/``|``/``~`` on comparisons, and the
    functions cos, sin, tan, tanh, arctan2, abs, exp, log, sqrt, square, minimum,
    maximum, clip, where. The text is parsed with :mod:`ast` and only those nodes are
    accepted; nothing is passed to ``eval``. A feature may share a function's name
    (Pendulum's ``cos``, ``sin``): called, the name is the function; bare, the feature,
    e.g. ``arctan2(sin, cos)``.

    Parameters
    ----------
    expression : str
    observation_names, action_names : sequence of str
    observation : {'next', 'current'}
        Whether observation names refer to the observation after the step (like
        dm_control) or before it (like gymnasium's Pendulum).

    Returns
    -------
    callable
        ``fn(observations (N, n), actions (N, m), next_observations (N, n)) -> (N,)``.

    Raises
    ------
    ValueError
        If the expression does not parse or uses anything not allowed; the message
        names the offending token.
    """
    if observation not in ('next', 'current'):
        raise ValueError(f"observation must be 'next' or 'current', got {observation!r}")
    if not isinstance(expression, str) or not expression.strip():
        raise ValueError('reward expression is empty')
    if len(expression) > MAX_EXPRESSION_CHARACTERS:
        raise ValueError(
            f'reward expression is too long (> {MAX_EXPRESSION_CHARACTERS} characters)'
        )
    observation_names = list(observation_names)
    action_names = list(action_names)
    # Names may coincide with functions (Pendulum's 'cos', 'sin' features): a called
    # name is the function, a bare name the feature.
    variables = set(observation_names) | set(action_names)
    try:
        tree = ast.parse(expression.strip(), mode='eval')
    except SyntaxError as error:
        raise ValueError(
            f'reward expression does not parse: {_excerpt(error.msg)} in {_excerpt(expression)!r}'
        ) from None
    except (RecursionError, MemoryError, ValueError) as error:
        # Deep nesting ('-' * 3000 + 'x') exhausts the parser; a NUL byte is a ValueError.
        raise ValueError(
            f'reward expression does not parse ({type(error).__name__}: '
            f'{_excerpt(str(error))}) in {_excerpt(expression)!r}'
        ) from None
    _check_size(tree)
    evaluate = _compile(tree, expression.strip(), variables)
    use_next = observation == 'next'
    observation_columns = {
        name: index for index, name in enumerate(observation_names) if name in variables
    }
    action_columns = {name: index for index, name in enumerate(action_names) if name in variables}

    def reward(
        observations: np.ndarray, actions: np.ndarray, next_observations: np.ndarray
    ) -> np.ndarray:
        source = next_observations if use_next else observations
        env = {name: source[:, index] for name, index in observation_columns.items()}
        env.update({name: actions[:, index] for name, index in action_columns.items()})
        with np.errstate(all='ignore'):
            value = evaluate(env)
        return np.broadcast_to(np.asarray(value, dtype=np.float64), (source.shape[0],)).copy()

    reward.expression = expression  # type: ignore[attr-defined]
    return reward
