"""Vectorised rewards for surrogate training.

Every reward has the signature ``fn(observations, actions, next_observations) -> (N,)``
with observations (N, n) and actions (N, m), so a surrogate can score a whole batch
of environments in one call.

* :func:`pendulum_reward` and :func:`cartpole_swingup_reward` reproduce the
  benchmark rewards (gymnasium Pendulum-v1, dm_control cartpole swing-up) exactly,
  so policies trained on the surrogate are scored like on the real task.
* :func:`expression_reward` builds a reward from a text expression of observation and
  action names (for a robot configured from a YAML file), parsed with ``ast`` against
  a whitelist: it never evaluates arbitrary code.
* :class:`SparseRewardModel` learns a sparse polynomial reward from recorded rewards,
  for plants whose reward cannot be computed from the observation directly.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Sequence
import math
from pathlib import Path
from typing import Any

import numpy as np

from sindyrl_ros.core.library import FeatureEvaluator, LibraryConfig, build_terms, format_term
from sindyrl_ros.core.serialization import (
    FormatError,
    as_float_array,
    check_document,
    load_json_document,
    require,
    save_json_document,
)
from sindyrl_ros.core.trajectories import Trajectory

__all__ = [
    'LEARNED_REWARD',
    'MAX_EXPRESSION_CHARACTERS',
    'MAX_EXPRESSION_DEPTH',
    'MAX_EXPRESSION_NODES',
    'REWARDS',
    'REWARD_FORMAT',
    'RewardFunction',
    'SparseRewardModel',
    'cartpole_swingup_reward',
    'expression_reward',
    'get_reward',
    'pendulum_reward',
    'tolerance',
]

RewardFunction = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
# A task whose reward is this word learns it: the plant reports rewards, the model updater
# fits a SparseRewardModel with every model, the policy trainer trains on it.
LEARNED_REWARD = 'learned'
REWARD_FORMAT = 'sindyrl_ros/reward'
REWARD_VERSION = 1


# ---------------------------------------------------------------------- benchmark rewards
def pendulum_reward(
    observations: np.ndarray, actions: np.ndarray, next_observations: np.ndarray
) -> np.ndarray:
    """Reward of gymnasium Pendulum-v1, from its observation (cos θ, sin θ, θ̇).

    ``-(θ² + 0.1 θ̇² + 0.001 u²)`` with θ in [-π, π] taken from the observation
    *before* the step and u clipped to [-2, 2], exactly as gymnasium computes it.

    Parameters
    ----------
    observations : numpy.ndarray, shape (N, 3)
        (cos θ, sin θ, θ̇) before the step.
    actions : numpy.ndarray, shape (N, 1)
        Torque.
    next_observations : numpy.ndarray, shape (N, 3)
        Unused (the gymnasium cost is on the state before the step).

    Returns
    -------
    numpy.ndarray, shape (N,)
    """
    observations = np.asarray(observations, dtype=np.float64)
    theta = np.arctan2(observations[:, 1], observations[:, 0])
    theta_dot = observations[:, 2]
    torque = np.clip(np.asarray(actions, dtype=np.float64)[:, 0], -2.0, 2.0)
    return -(theta**2 + 0.1 * theta_dot**2 + 0.001 * torque**2)


def tolerance(
    x: np.ndarray,
    margin: float,
    sigmoid: str = 'gaussian',
    value_at_margin: float = 0.1,
) -> np.ndarray:
    """dm_control's soft indicator of ``x == 0`` (``rewards.tolerance`` with bounds (0, 0)).

    1 at zero, falling to ``value_at_margin`` at ``|x| = margin``. Only the
    ``'gaussian'`` and ``'quadratic'`` shapes used by the cartpole reward are
    implemented.
    """
    distance = np.abs(x) / margin
    if sigmoid == 'gaussian':
        scale = np.sqrt(-2.0 * np.log(value_at_margin))
        value = np.exp(-0.5 * (distance * scale) ** 2)
    elif sigmoid == 'quadratic':
        scaled = distance * np.sqrt(1.0 - value_at_margin)
        value = np.where(np.abs(scaled) < 1.0, 1.0 - scaled**2, 0.0)
    else:
        raise ValueError(f'unsupported sigmoid {sigmoid!r}')
    return np.where(x == 0.0, 1.0, value)


def cartpole_swingup_reward(
    observations: np.ndarray, actions: np.ndarray, next_observations: np.ndarray
) -> np.ndarray:
    """Smooth reward of dm_control ``cartpole/swingup``.

    upright · centered · small_control · small_velocity, computed like dm_control
    on the state *after* the step and the applied action:
    upright = (cos + 1)/2, centered = (1 + tol(x, 2))/2,
    small_control = (4 + tol_quadratic(u, 1, 0))/5, small_velocity = (1 + tol(θ̇, 5))/2.

    Parameters
    ----------
    observations : numpy.ndarray, shape (N, 5)
        Unused.
    actions : numpy.ndarray, shape (N, 1)
        Force command in [-1, 1].
    next_observations : numpy.ndarray, shape (N, 5)
        (x, cos θ, sin θ, ẋ, θ̇) after the step.

    Returns
    -------
    numpy.ndarray, shape (N,)
    """
    next_observations = np.asarray(next_observations, dtype=np.float64)
    cart = next_observations[:, 0]
    cosine = next_observations[:, 1]
    angular_velocity = next_observations[:, 4]
    control = np.asarray(actions, dtype=np.float64)[:, 0]
    upright = (cosine + 1.0) / 2.0
    centered = (1.0 + tolerance(cart, margin=2.0)) / 2.0
    small_control = (
        4.0 + tolerance(control, margin=1.0, sigmoid='quadratic', value_at_margin=0.0)
    ) / 5.0
    small_velocity = (1.0 + tolerance(angular_velocity, margin=5.0)) / 2.0
    return upright * small_control * small_velocity * centered


REWARDS: dict[str, RewardFunction] = {
    'pendulum': pendulum_reward,
    'cartpole_swingup': cartpole_swingup_reward,
}


def get_reward(name: str) -> RewardFunction:
    """Look up a named reward, with a helpful error for unknown names."""
    try:
        return REWARDS[name]
    except KeyError:
        raise ValueError(f'unknown reward {name!r}; known: {sorted(REWARDS)}') from None


# ---------------------------------------------------------------------- expression reward
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


# ---------------------------------------------------------------------- learned reward
class SparseRewardModel:
    """Sparse polynomial reward r ≈ Θ(x, u) ξ learned from recorded rewards.

    Fitted with sequentially thresholded least squares on columns scaled to unit
    RMS, so ``threshold`` is relative: a term is dropped when its contribution is
    below ``threshold`` × the standard deviation of the reward.

    Parameters
    ----------
    observation_names, action_names : sequence of str
    library : LibraryConfig, optional
        Candidate terms (default: degree 2, all (x, u) products).
    angle_pairs : sequence of (int, int)
        (cos, sin) observation indices, for the library's circle reduction.
    threshold : float
        Relative STLSQ threshold.
    alpha : float
        Ridge regularisation (relative to the scaled columns).
    observation : {'current', 'next'}
        Whether the features use the observation before the step or after it.
    """

    def __init__(
        self,
        observation_names: Sequence[str],
        action_names: Sequence[str],
        library: LibraryConfig | None = None,
        angle_pairs: Sequence[tuple[int, int]] = (),
        threshold: float = 0.01,
        alpha: float = 1e-6,
        observation: str = 'current',
        max_iter: int = 20,
    ) -> None:
        if observation not in ('next', 'current'):
            raise ValueError(f"observation must be 'next' or 'current', got {observation!r}")
        self.observation_names = [str(n) for n in observation_names]
        self.action_names = [str(n) for n in action_names]
        self.library = library if library is not None else LibraryConfig(degree=2, control='full')
        self.angle_pairs = [(int(c), int(s)) for c, s in angle_pairs]
        self.threshold = float(threshold)
        self.alpha = float(alpha)
        self.observation = observation
        self.max_iter = int(max_iter)
        self.terms = build_terms(
            self.library, self.observation_names, self.action_names, self.angle_pairs
        )
        self.coefficients = np.zeros(len(self.terms))
        self.fit_info: dict[str, Any] = {}
        self._prepare()

    def _prepare(self) -> None:
        active = np.flatnonzero(self.coefficients)
        n_inputs = len(self.observation_names) + len(self.action_names)
        self._active = active
        self._evaluator = FeatureEvaluator(self.terms, active, n_inputs)
        self._rows = self._evaluator.expand_coefficients(self.coefficients[None, :], active)[0]

    def _inputs(
        self, observations: np.ndarray, actions: np.ndarray, next_observations: np.ndarray
    ) -> np.ndarray:
        source = next_observations if self.observation == 'next' else observations
        return np.hstack(
            [np.asarray(source, dtype=np.float64), np.asarray(actions, dtype=np.float64)]
        )

    def fit(self, trajectories: Sequence[Trajectory]) -> SparseRewardModel:
        """Fit on trajectories that carry rewards.

        Parameters
        ----------
        trajectories : sequence of Trajectory
            With ``rewards`` (T,) set.
        """
        usable = [t for t in trajectories if t.rewards is not None and t.n_steps > 0]
        if not usable:
            raise ValueError('no trajectory with rewards to fit on')
        inputs = np.vstack(
            [self._inputs(t.observations[:-1], t.actions, t.observations[1:]) for t in usable]
        )
        rewards = np.concatenate([t.rewards for t in usable])
        finite = np.all(np.isfinite(inputs), axis=1) & np.isfinite(rewards)
        inputs, rewards = inputs[finite], rewards[finite]
        everything = FeatureEvaluator(self.terms, range(len(self.terms)), inputs.shape[1])
        rows = everything.evaluate(inputs)
        theta = rows[everything.term_rows].T.copy()  # (N, n_terms)
        scale = np.sqrt(np.mean(theta**2, axis=0))
        scale = np.where(scale > 1e-12, scale, 1.0)
        scaled = theta / scale
        reward_scale = max(float(np.std(rewards)), 1e-12)
        keep = np.ones(len(self.terms), dtype=bool)
        coefficients = np.zeros(len(self.terms))
        for _ in range(self.max_iter):
            coefficients[:] = 0.0
            if not np.any(keep):
                break
            columns = scaled[:, keep]
            gram = columns.T @ columns / len(rewards) + self.alpha * np.eye(columns.shape[1])
            solution = np.linalg.solve(gram, columns.T @ rewards / len(rewards))
            coefficients[keep] = solution
            new_keep = keep & (np.abs(coefficients) >= self.threshold * reward_scale)
            if np.array_equal(new_keep, keep):
                break
            keep = new_keep
        coefficients[~keep] = 0.0
        if np.any(keep):
            # Unbias: plain least squares on the selected terms (the ridge only steers
            # the selection).
            coefficients[keep] = np.linalg.lstsq(scaled[:, keep], rewards, rcond=None)[0]
        self.coefficients = coefficients / scale
        residual = theta @ self.coefficients - rewards
        self.fit_info = {
            'n_samples': int(len(rewards)),
            'rmse': float(np.sqrt(np.mean(residual**2))),
            'reward_std': float(np.std(rewards)),
        }
        self._prepare()
        return self

    def __call__(
        self, observations: np.ndarray, actions: np.ndarray, next_observations: np.ndarray
    ) -> np.ndarray:
        """Predicted reward, shape (N,)."""
        rows = self._evaluator.evaluate(self._inputs(observations, actions, next_observations))
        return self._rows @ rows

    @property
    def n_nonzero(self) -> int:
        """Number of terms in the learned reward."""
        return int(np.count_nonzero(self.coefficients))

    def equation(self, precision: int = 4) -> str:
        """The learned reward as text, e.g. ``'r = -1.0 + 0.95 cos - 0.1 thdot^2'``."""
        names = self.observation_names + self.action_names
        parts = []
        for coefficient, term in zip(self.coefficients, self.terms):
            if coefficient == 0:
                continue
            text = format_term(term, names, '')
            body = f'{abs(coefficient):.{precision}g}' + ('' if text == '1' else f' {text}')
            sign = '-' if coefficient < 0 else '+'
            parts.append(f'{sign} {body}' if parts else (f'-{body}' if coefficient < 0 else body))
        return 'r = ' + (' '.join(parts) if parts else '0')

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready document (format ``'sindyrl_ros/reward'``, version 1)."""
        return {
            'format': REWARD_FORMAT,
            'version': REWARD_VERSION,
            'observation_names': list(self.observation_names),
            'action_names': list(self.action_names),
            'library': self.library.to_dict(),
            'angle_pairs': [list(p) for p in self.angle_pairs],
            'threshold': self.threshold,
            'alpha': self.alpha,
            'observation': self.observation,
            'feature_names': [
                format_term(t, self.observation_names + self.action_names, '') for t in self.terms
            ],
            'coefficients': self.coefficients.tolist(),
            'equation': self.equation(),
            'fit_info': dict(self.fit_info),
        }

    @classmethod
    def from_dict(cls, doc: dict[str, Any], where: str = 'reward') -> SparseRewardModel:
        """Rebuild from :meth:`to_dict` output; raises :class:`FormatError` on bad fields."""
        check_document(doc, REWARD_FORMAT, {REWARD_VERSION}, where)
        observation_names = require(doc, 'observation_names', list, where)
        action_names = require(doc, 'action_names', list, where)
        for key, names in (
            ('observation_names', observation_names),
            ('action_names', action_names),
        ):
            if not all(isinstance(n, str) and n for n in names):
                raise FormatError(f'{where}.{key}: expected a list of non-empty strings')
        angle_pairs = require(doc, 'angle_pairs', list, where)
        try:
            library = LibraryConfig.from_dict(require(doc, 'library', dict, where))
            model = cls(
                observation_names,
                action_names,
                library=library,
                angle_pairs=[tuple(p) for p in angle_pairs],
                threshold=require(doc, 'threshold', float, where),
                alpha=require(doc, 'alpha', float, where),
                observation=require(doc, 'observation', str, where),
            )
        except (TypeError, ValueError) as error:
            if isinstance(error, FormatError):
                raise
            raise FormatError(f'{where}: {error}') from None
        model.coefficients = as_float_array(
            require(doc, 'coefficients', list, where), (len(model.terms),), f'{where}.coefficients'
        )
        fit_info = doc.get('fit_info', {})
        model.fit_info = fit_info if isinstance(fit_info, dict) else {}
        model._prepare()
        return model

    def save(self, path: str | Path) -> None:
        """Write as JSON (atomic replace)."""
        save_json_document(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> SparseRewardModel:
        """Read and validate a saved reward model."""
        return cls.from_dict(
            load_json_document(path, REWARD_FORMAT, {REWARD_VERSION}), where=str(path)
        )
