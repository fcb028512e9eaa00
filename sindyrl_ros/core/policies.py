"""Numpy-only policies for the real-time controller, their JSON format, and sparse distillation.

The controller evaluates a policy every control period with numpy alone (no torch at run
time), so both policy kinds keep preallocated buffers and evaluate one observation with a
handful of ufunc calls that write into those buffers.

Two kinds share one JSON document format (``format: 'sindyrl_ros/policy'``, ``version: 1``):

``mlp``
    The deterministic action of a SAC actor: hidden layers with ``tanh`` or ``relu``, a
    linear output layer, then ``tanh`` squashed and scaled to ``[action_low, action_high]``.
``sparse_polynomial``
    ``clip(Θ(observation) @ coefficients, action_low, action_high)`` where ``Θ`` are
    monomials of the observation given by an integer powers matrix.  Tens of coefficients
    instead of thousands of weights; readable as equations and trivially exported to C.

Common fields: ``kind``, ``observation_names``, ``action_names``, ``action_low``,
``action_high`` and ``metadata`` (free JSON object: source model version, metrics, ...).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import contextlib
import itertools
import json
import math
from pathlib import Path
import time
from typing import Any

import numpy as np

from sindyrl_ros.core.serialization import (
    FormatError,
    as_float_array,
    check_document,
    document_from_json,
    load_json_document,
    require,
    save_json_document,
)

POLICY_FORMAT = 'sindyrl_ros/policy'
POLICY_VERSION = 1
SUPPORTED_POLICY_VERSIONS = {POLICY_VERSION}
HIDDEN_ACTIVATIONS = ('tanh', 'relu')
MAX_POLYNOMIAL_POWER = 12

__all__ = [
    'POLICY_FORMAT',
    'POLICY_VERSION',
    'NumpyPolicy',
    'MLPPolicy',
    'SparsePolynomialPolicy',
    'polynomial_powers',
    'policy_from_dict',
    'policy_from_json',
    'load_policy',
    'measure_policy_latency',
    'distill_sparse_policy',
]


def _check_names(names: Any, expected_length: int | None, where: str) -> tuple[str, ...]:
    """Validate a list of unique, non-empty feature names (names map robot signals)."""
    if not isinstance(names, (list, tuple)):
        raise FormatError(f'{where}: expected a list of names, got {type(names).__name__}')
    if not all(isinstance(name, str) and name for name in names):
        raise FormatError(f'{where}: every name must be a non-empty string')
    if len(set(names)) != len(names):
        raise FormatError(f'{where}: names must be unique, got {list(names)}')
    if expected_length is not None and len(names) != expected_length:
        raise FormatError(f'{where}: expected {expected_length} names, got {len(names)}')
    return tuple(names)


def _check_expected_names(
    names: tuple[str, ...], expected: Sequence[str] | None, where: str
) -> None:
    """Refuse a policy whose signal names differ from what the robot provides."""
    if expected is not None and tuple(expected) != tuple(names):
        raise FormatError(f'{where}: policy has {list(names)}, expected {list(expected)}')


class NumpyPolicy:
    """Base of the numpy policies: names, action limits, metadata and the JSON envelope.

    Parameters
    ----------
    observation_names : sequence of str, length n
        Observation features, in the order the policy expects them.
    action_names : sequence of str, length m
        Action channels, in the order the policy produces them.
    action_low, action_high : array_like, shape (m,)
        Hard limits of the action; every output lies inside them.
    metadata : dict, optional
        JSON-serialisable provenance (source model version, training metrics, ...).
    """

    kind = ''

    def __init__(
        self,
        observation_names: Sequence[str],
        action_names: Sequence[str],
        action_low: Any,
        action_high: Any,
        metadata: dict | None = None,
    ) -> None:
        self.observation_names = _check_names(list(observation_names), None, 'observation_names')
        self.action_names = _check_names(list(action_names), None, 'action_names')
        m = len(self.action_names)
        self.action_low = as_float_array(action_low, (m,), 'action_low').copy()
        self.action_high = as_float_array(action_high, (m,), 'action_high').copy()
        if np.any(self.action_low >= self.action_high):
            raise FormatError('action_low: every lower limit must be below its upper limit')
        self.metadata = dict(metadata or {})
        try:
            json.dumps(self.metadata, allow_nan=False)
        except (TypeError, ValueError) as error:
            raise FormatError(f'metadata: not JSON-serialisable ({error})') from error
        # Scale between the normalised action in [-1, 1] and the robot's limits.
        self._action_center = 0.5 * (self.action_high + self.action_low)
        self._action_half_range = 0.5 * (self.action_high - self.action_low)
        self._output = np.empty(m)

    @property
    def observation_dim(self) -> int:
        """Number of observation features n."""
        return len(self.observation_names)

    @property
    def action_dim(self) -> int:
        """Number of action channels m."""
        return len(self.action_names)

    @property
    def n_parameters(self) -> int:
        """Number of stored numbers that define the policy (weights or coefficients)."""
        raise NotImplementedError

    def __call__(self, observation: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Action for one observation, computed without allocating new arrays.

        Parameters
        ----------
        observation : ndarray, shape (n,)
            float64 observation, ordered as ``observation_names``.
        out : ndarray, shape (m,), optional
            Where to write the action.  Without it the action is written into the
            policy's own buffer, which the next call overwrites: copy it to keep it.

        Returns
        -------
        ndarray, shape (m,)
            Action inside ``[action_low, action_high]`` (``out`` or the internal buffer).
        """
        raise NotImplementedError

    def act_batch(self, observations: np.ndarray) -> np.ndarray:
        """Actions for many observations (offline use: evaluation, distillation).

        Parameters
        ----------
        observations : ndarray, shape (N, n)

        Returns
        -------
        ndarray, shape (N, m)
            A new array.
        """
        raise NotImplementedError

    def _check_batch(self, observations: Any) -> np.ndarray:
        observations = np.asarray(observations, dtype=np.float64)
        if observations.ndim != 2 or observations.shape[1] != self.observation_dim:
            raise ValueError(
                f'observations must have shape (N, {self.observation_dim}), '
                f'got {observations.shape}'
            )
        return observations

    def _body_to_dict(self) -> dict:
        raise NotImplementedError

    def to_dict(self) -> dict:
        """JSON-ready document (format ``sindyrl_ros/policy``, version 1)."""
        document = {
            'format': POLICY_FORMAT,
            'version': POLICY_VERSION,
            'kind': self.kind,
            'observation_names': list(self.observation_names),
            'action_names': list(self.action_names),
            'action_low': self.action_low.tolist(),
            'action_high': self.action_high.tolist(),
            'metadata': self.metadata,
        }
        document.update(self._body_to_dict())
        return document

    def to_json(self) -> str:
        """The document as a JSON string, e.g. for the ``/sindyrl/policy`` topic."""
        return json.dumps(self.to_dict(), allow_nan=False)

    def save(self, path: str | Path) -> None:
        """Write the policy atomically as JSON."""
        save_json_document(path, self.to_dict())


class MLPPolicy(NumpyPolicy):
    """Multilayer perceptron with a tanh-squashed output: SAC's deterministic action.

    ``action = center + half_range * tanh(W_L h_{L-1} + b_L)``, with
    ``h_i = act(W_i h_{i-1} + b_i)`` and ``h_0 = observation``.

    Parameters
    ----------
    layers : sequence of (weight, bias)
        ``weight`` of shape (out, in) (torch's ``nn.Linear`` convention), ``bias`` of shape
        (out,).  The first layer takes n inputs, the last one gives m outputs.
    hidden_activation : {'tanh', 'relu'}
        Activation of every layer but the last.
    observation_names, action_names, action_low, action_high, metadata
        See :class:`NumpyPolicy`.
    """

    kind = 'mlp'

    def __init__(
        self,
        layers: Sequence[tuple[Any, Any]],
        hidden_activation: str,
        observation_names: Sequence[str],
        action_names: Sequence[str],
        action_low: Any,
        action_high: Any,
        metadata: dict | None = None,
    ) -> None:
        super().__init__(observation_names, action_names, action_low, action_high, metadata)
        if hidden_activation not in HIDDEN_ACTIVATIONS:
            raise FormatError(
                f'hidden_activation: must be one of {HIDDEN_ACTIVATIONS}, '
                f'got {hidden_activation!r}'
            )
        if len(layers) < 1:
            raise FormatError('layers: at least one layer is needed')
        self.hidden_activation = hidden_activation
        weights, biases = [], []
        n_inputs = self.observation_dim
        for index, (weight, bias) in enumerate(layers):
            where = f'layers[{index}]'
            weight = as_float_array(weight, (None, None), f'{where}.weight')
            if weight.shape[1] != n_inputs:
                inputs = 'observation_names' if index == 0 else f'outputs of layers[{index - 1}]'
                raise FormatError(
                    f'{where}.weight: has {weight.shape[1]} columns, expected {n_inputs} '
                    f'(one per {inputs})'
                )
            n_outputs = weight.shape[0]
            bias = as_float_array(bias, (n_outputs,), f'{where}.bias')
            weights.append(np.ascontiguousarray(weight, dtype=np.float64))
            biases.append(np.ascontiguousarray(bias, dtype=np.float64))
            n_inputs = n_outputs
        if n_inputs != self.action_dim:
            raise FormatError(
                f'layers[{len(layers) - 1}].weight: last layer gives {n_inputs} outputs, '
                f'but there are {self.action_dim} action_names'
            )
        self.weights = tuple(weights)
        self.biases = tuple(biases)
        # One buffer per hidden layer and one for the pre-squash output.
        self._hidden = tuple(np.empty(w.shape[0]) for w in self.weights[:-1])
        self._relu = hidden_activation == 'relu'

    @property
    def n_parameters(self) -> int:
        return int(sum(w.size + b.size for w, b in zip(self.weights, self.biases, strict=True)))

    @property
    def hidden_sizes(self) -> tuple[int, ...]:
        """Widths of the hidden layers."""
        return tuple(w.shape[0] for w in self.weights[:-1])

    def __call__(self, observation: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        out = self._output if out is None else out
        h = observation
        for weight, bias, buffer in zip(self.weights, self.biases, self._hidden, strict=False):
            np.dot(weight, h, out=buffer)
            np.add(buffer, bias, out=buffer)
            if self._relu:
                np.maximum(buffer, 0.0, out=buffer)
            else:
                np.tanh(buffer, out=buffer)
            h = buffer
        np.dot(self.weights[-1], h, out=out)
        np.add(out, self.biases[-1], out=out)
        np.tanh(out, out=out)
        np.multiply(out, self._action_half_range, out=out)
        np.add(out, self._action_center, out=out)
        return out

    def act_batch(self, observations: np.ndarray) -> np.ndarray:
        h = self._check_batch(observations)
        for weight, bias in zip(self.weights[:-1], self.biases[:-1], strict=True):
            h = h @ weight.T + bias
            h = np.maximum(h, 0.0) if self._relu else np.tanh(h)
        z = h @ self.weights[-1].T + self.biases[-1]
        return np.tanh(z) * self._action_half_range + self._action_center

    def _body_to_dict(self) -> dict:
        return {
            'hidden_activation': self.hidden_activation,
            'layers': [
                {'weight': w.tolist(), 'bias': b.tolist()}
                for w, b in zip(self.weights, self.biases, strict=True)
            ],
        }

    @classmethod
    def _from_body(cls, document: dict, common: dict, where: str) -> MLPPolicy:
        activation = require(document, 'hidden_activation', str, where)
        raw_layers = require(document, 'layers', list, where)
        layers = []
        for index, layer in enumerate(raw_layers):
            layer_where = f'{where}.layers[{index}]'
            if not isinstance(layer, dict):
                raise FormatError(f'{layer_where}: expected an object with weight and bias')
            layers.append(
                (
                    require(layer, 'weight', list, layer_where),
                    require(layer, 'bias', list, layer_where),
                )
            )
        return cls(layers, activation, **common)


def polynomial_powers(n: int, degree: int, include_bias: bool = True) -> np.ndarray:
    """All monomials of ``n`` variables up to total ``degree``, as an integer powers matrix.

    Ordered by degree, then lexicographically in the variables (pysindy's order).

    Returns
    -------
    ndarray of int64, shape (n_features, n)
        Row k holds the power of each observation feature in monomial k.
    """
    rows = []
    for total in range(0 if include_bias else 1, degree + 1):
        for combination in itertools.combinations_with_replacement(range(n), total):
            row = np.zeros(n, dtype=np.int64)
            for variable in combination:
                row[variable] += 1
            rows.append(row)
    return np.array(rows, dtype=np.int64).reshape(-1, n)


class SparsePolynomialPolicy(NumpyPolicy):
    """Clipped sparse polynomial of the observation.

    ``action = clip(Θ(observation) @ coefficients, action_low, action_high)`` with
    ``Θ_k(x) = prod_j x_j ** powers[k, j]``.

    Parameters
    ----------
    powers : array_like of int, shape (n_features, n)
        Non-negative integer powers; a row of zeros is the constant term.
    coefficients : array_like, shape (n_features, m)
        Coefficients in action units; most are zero.
    observation_names, action_names, action_low, action_high, metadata
        See :class:`NumpyPolicy`.
    """

    kind = 'sparse_polynomial'

    def __init__(
        self,
        powers: Any,
        coefficients: Any,
        observation_names: Sequence[str],
        action_names: Sequence[str],
        action_low: Any,
        action_high: Any,
        metadata: dict | None = None,
    ) -> None:
        super().__init__(observation_names, action_names, action_low, action_high, metadata)
        n, m = self.observation_dim, self.action_dim
        powers_float = as_float_array(powers, (None, None), 'powers')
        if powers_float.shape[1] != n:
            raise FormatError(
                f'powers: has {powers_float.shape[1]} columns, expected {n} '
                '(one per observation_names entry)'
            )
        if np.any(powers_float < 0) or np.any(powers_float != np.round(powers_float)):
            raise FormatError('powers: every power must be a non-negative integer')
        if np.any(powers_float > MAX_POLYNOMIAL_POWER):
            raise FormatError(f'powers: powers above {MAX_POLYNOMIAL_POWER} are not supported')
        self.powers = powers_float.astype(np.int64)
        if len({tuple(row) for row in self.powers}) != len(self.powers):
            raise FormatError('powers: duplicate monomials')
        self.coefficients = as_float_array(
            coefficients, (self.powers.shape[0], m), 'coefficients'
        ).copy()
        # Evaluate only the monomials that carry a nonzero coefficient.
        active = np.flatnonzero(np.any(self.coefficients != 0.0, axis=1))
        self._active_coefficients = np.ascontiguousarray(self.coefficients[active])
        active_powers = self.powers[active]
        self._max_power = int(active_powers.max()) if active_powers.size else 0
        # power_table[j, p] = x_j ** p; a monomial is a product of n table entries.
        # filled by one np.power call per tick (fewer numpy calls is what makes it fast).
        self._power_table = np.ones((n, self._max_power + 1))
        self._exponents = np.arange(self._max_power + 1, dtype=np.float64)[None, :]
        self._observation_column = np.empty((n, 1))
        self._observation_values = self._observation_column[:, 0]  # a view, made once
        stride = self._max_power + 1
        self._gather_index = np.ascontiguousarray(
            np.arange(n)[None, :] * stride + active_powers, dtype=np.intp
        )
        self._gathered = np.empty(self._gather_index.shape)
        self._features = np.empty(len(active))

    @property
    def n_parameters(self) -> int:
        """Number of nonzero coefficients."""
        return self.n_nonzero

    @property
    def n_nonzero(self) -> int:
        """Number of nonzero coefficients (the policy's size)."""
        return int(np.count_nonzero(self.coefficients))

    def __call__(self, observation: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        out = self._output if out is None else out
        np.copyto(self._observation_values, observation)
        np.power(self._observation_column, self._exponents, out=self._power_table)
        np.take(self._power_table, self._gather_index, out=self._gathered, mode='clip')
        np.prod(self._gathered, axis=1, out=self._features)
        np.dot(self._features, self._active_coefficients, out=out)
        np.clip(out, self.action_low, self.action_high, out=out)
        return out

    def features(self, observations: np.ndarray) -> np.ndarray:
        """All monomials of a batch of observations.

        Parameters
        ----------
        observations : ndarray, shape (N, n)

        Returns
        -------
        ndarray, shape (N, n_features)
        """
        observations = self._check_batch(observations)
        return _monomials(observations, self.powers)

    def act_batch(self, observations: np.ndarray) -> np.ndarray:
        polynomial = self.features(observations) @ self.coefficients
        return np.clip(polynomial, self.action_low, self.action_high)

    def feature_names(self) -> list[str]:
        """Readable monomial names, e.g. ``'sin_theta*theta_dot^2'`` (``'1'`` for the bias)."""
        names = []
        for row in self.powers:
            factors = [
                name if power == 1 else f'{name}^{power}'
                for name, power in zip(self.observation_names, row, strict=True)
                if power > 0
            ]
            names.append('*'.join(factors) if factors else '1')
        return names

    def equations(self, precision: int = 4) -> list[str]:
        """One readable equation per action, e.g. ``'torque = clip(-1.5*cos_theta, -2, 2)'``."""
        feature_names = self.feature_names()
        equations = []
        for j, action_name in enumerate(self.action_names):
            terms = []
            for k in np.flatnonzero(self.coefficients[:, j]):
                value = self.coefficients[k, j]
                magnitude = f'{abs(value):.{precision}g}'
                term = magnitude if feature_names[k] == '1' else f'{magnitude}*{feature_names[k]}'
                sign = '-' if value < 0 else '+'
                terms.append((sign, term))
            if not terms:
                body = '0'
            else:
                first_sign, first_term = terms[0]
                body = ('-' if first_sign == '-' else '') + first_term
                body += ''.join(f' {sign} {term}' for sign, term in terms[1:])
            low = f'{self.action_low[j]:.{precision}g}'
            high = f'{self.action_high[j]:.{precision}g}'
            equations.append(f'{action_name} = clip({body}, {low}, {high})')
        return equations

    def _body_to_dict(self) -> dict:
        return {
            'powers': self.powers.tolist(),
            'coefficients': self.coefficients.tolist(),
            'feature_names': self.feature_names(),
            'equations': self.equations(),
        }

    @classmethod
    def _from_body(cls, document: dict, common: dict, where: str) -> SparsePolynomialPolicy:
        powers = require(document, 'powers', list, where)
        coefficients = require(document, 'coefficients', list, where)
        return cls(powers, coefficients, **common)


def _monomials(observations: np.ndarray, powers: np.ndarray) -> np.ndarray:
    """Monomials of a batch: (N, n) observations, (K, n) powers -> (N, K) features."""
    max_power = int(powers.max()) if powers.size else 0
    table = np.ones((max_power + 1,) + observations.shape)  # table[p, i, j] = x_ij ** p
    for power in range(1, max_power + 1):
        table[power] = table[power - 1] * observations
    features = np.ones((len(observations), len(powers)))
    for j in range(observations.shape[1]):
        features *= table[powers[:, j], :, j].T
    return features


_POLICY_KINDS: dict[str, type[NumpyPolicy]] = {
    MLPPolicy.kind: MLPPolicy,
    SparsePolynomialPolicy.kind: SparsePolynomialPolicy,
}


def policy_from_dict(
    document: Any,
    where: str = 'policy',
    expected_observation_names: Sequence[str] | None = None,
    expected_action_names: Sequence[str] | None = None,
) -> MLPPolicy | SparsePolynomialPolicy:
    """Build and validate a policy from its JSON document.

    Parameters
    ----------
    document : dict
        Parsed JSON (from a file or the ``/sindyrl/policy`` topic).
    where : str
        Where the document came from (file path, topic); prefixed to every error.
    expected_observation_names, expected_action_names : sequence of str, optional
        The robot's signal names; a policy built for other names is refused.

    Raises
    ------
    FormatError
        Wrong format/version/kind, missing field, wrong shape, non-finite number or
        mismatched names; the message names the field. Nothing else: whatever the
        document holds, a controller must be able to refuse it and keep running.
    """
    try:
        return _policy_from_dict(
            document, where, expected_observation_names, expected_action_names
        )
    except FormatError as error:
        raise FormatError(_short(str(error))) from None
    except Exception as error:  # total: any other failure is a refusal too
        raise FormatError(
            _short(f'{where}: invalid policy ({type(error).__name__}: {error})')
        ) from None


def _short(message: str, limit: int = 1000) -> str:
    """``message`` cut to ``limit`` characters: a refusal quotes the input, not megabytes."""
    return message if len(message) <= limit else f'{message[:limit]}... (cut)'


def _policy_from_dict(
    document: Any,
    where: str,
    expected_observation_names: Sequence[str] | None,
    expected_action_names: Sequence[str] | None,
) -> MLPPolicy | SparsePolynomialPolicy:
    """:func:`policy_from_dict` without its last-resort conversion of other exceptions."""
    check_document(document, POLICY_FORMAT, SUPPORTED_POLICY_VERSIONS, where)
    kind = require(document, 'kind', str, where)
    if kind not in _POLICY_KINDS:
        raise FormatError(f'{where}.kind: {kind!r} is not one of {sorted(_POLICY_KINDS)}')
    observation_names = _check_names(
        require(document, 'observation_names', list, where), None, f'{where}.observation_names'
    )
    action_names = _check_names(
        require(document, 'action_names', list, where), None, f'{where}.action_names'
    )
    _check_expected_names(
        observation_names, expected_observation_names, f'{where}.observation_names'
    )
    _check_expected_names(action_names, expected_action_names, f'{where}.action_names')
    metadata = document.get('metadata', {})
    if not isinstance(metadata, dict):
        raise FormatError(f'{where}.metadata: expected an object')
    m = len(action_names)
    common = {
        'observation_names': observation_names,
        'action_names': action_names,
        'action_low': as_float_array(
            require(document, 'action_low', list, where), (m,), f'{where}.action_low'
        ),
        'action_high': as_float_array(
            require(document, 'action_high', list, where), (m,), f'{where}.action_high'
        ),
        'metadata': metadata,
    }
    try:
        return _POLICY_KINDS[kind]._from_body(document, common, where)
    except FormatError as error:
        message = str(error)
        if message.startswith(where):
            raise
        raise FormatError(f'{where}.{message}') from error
    except (TypeError, ValueError) as error:
        raise FormatError(f'{where}: invalid {kind} policy: {error}') from error


def policy_from_json(
    text: str,
    where: str = 'policy message',
    expected_observation_names: Sequence[str] | None = None,
    expected_action_names: Sequence[str] | None = None,
) -> MLPPolicy | SparsePolynomialPolicy:
    """Parse a JSON policy string (e.g. a ``/sindyrl/policy`` message); see policy_from_dict.

    Total: any text (capped at ``serialization.MAX_DOCUMENT_BYTES``) gives a policy or a
    :class:`FormatError` saying what is wrong and where.
    """
    try:
        document = document_from_json(text, POLICY_FORMAT, SUPPORTED_POLICY_VERSIONS, where)
    except FormatError as error:
        raise FormatError(_short(str(error))) from None
    return policy_from_dict(document, where, expected_observation_names, expected_action_names)


def load_policy(
    path: str | Path,
    expected_observation_names: Sequence[str] | None = None,
    expected_action_names: Sequence[str] | None = None,
) -> MLPPolicy | SparsePolynomialPolicy:
    """Read and validate a policy file; see :func:`policy_from_dict`.

    Only a regular file of at most ``serialization.MAX_DOCUMENT_BYTES`` is read; anything
    else is a :class:`FormatError` naming the file (``FileNotFoundError`` if it is missing).
    """
    try:
        document = load_json_document(path, POLICY_FORMAT, SUPPORTED_POLICY_VERSIONS)
    except FormatError as error:
        raise FormatError(_short(str(error))) from None
    return policy_from_dict(document, str(path), expected_observation_names, expected_action_names)


def measure_policy_latency(
    policy: Callable[[np.ndarray], np.ndarray],
    n_calls: int = 10000,
    observation: np.ndarray | None = None,
    warmup: int = 200,
) -> dict[str, float]:
    """Per-call latency of a policy on one observation, as the controller calls it.

    Parameters
    ----------
    policy : callable
        Maps an observation of shape (n,) to an action.
    n_calls : int
        Number of timed calls.
    observation : ndarray, shape (n,), optional
        Observation to evaluate; a fixed random one by default.

    Returns
    -------
    dict
        ``p50_us``, ``p99_us``, ``max_us``, ``mean_us``: latency in microseconds.
    """
    if observation is None:
        n = policy.observation_dim  # type: ignore[attr-defined]
        observation = np.random.default_rng(0).uniform(-1.0, 1.0, n)
    observation = np.ascontiguousarray(observation, dtype=np.float64)
    for _ in range(warmup):
        policy(observation)
    timings = np.empty(n_calls)
    clock = time.perf_counter_ns
    for index in range(n_calls):
        start = clock()
        policy(observation)
        timings[index] = clock() - start
    timings *= 1e-3
    return {
        'p50_us': float(np.percentile(timings, 50)),
        'p99_us': float(np.percentile(timings, 99)),
        'max_us': float(timings.max()),
        'mean_us': float(timings.mean()),
    }


# --------------------------------------------------------------------------- distillation


def _single_threaded_blas() -> contextlib.AbstractContextManager:
    """Limit BLAS to one thread: the many small (K, K) products of the ensemble fit run
    ~10x slower with a multithreaded BLAS on a busy few-core robot computer."""
    try:
        from threadpoolctl import threadpool_limits  # installed with scikit-learn/pysindy
    except ImportError:  # pragma: no cover - optional
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api='blas')


def _stlsq_normal_equations(
    gram: np.ndarray, moment: np.ndarray, threshold: float, ridge: float, max_iterations: int
) -> np.ndarray:
    """Sequentially thresholded ridge least squares from the normal equations.

    ``gram`` (K, K) and ``moment`` (K,) are sample means of ``Θᵀ Θ`` and ``Θᵀ y`` with
    normalised features, so one Gram matrix per bootstrap sample serves every threshold.
    """
    n_features = gram.shape[0]
    active = np.ones(n_features, dtype=bool)
    coefficients = np.zeros(n_features)
    for _ in range(max_iterations):
        indices = np.flatnonzero(active)
        coefficients[:] = 0.0
        if indices.size == 0:
            break
        sub_gram = gram[np.ix_(indices, indices)] + ridge * np.eye(indices.size)
        coefficients[indices] = np.linalg.solve(sub_gram, moment[indices])
        keep = np.abs(coefficients) >= threshold
        if np.array_equal(keep, active):
            break
        active = keep
    coefficients[~active] = 0.0
    return coefficients


class _Candidate:
    """One fitted sparse polynomial (a degree and a threshold) and how well it does."""

    def __init__(
        self,
        degree: int,
        threshold: float,
        powers: np.ndarray,
        coefficients: np.ndarray,
        error: float,
        n_observations: int,
    ) -> None:
        self.degree = int(degree)
        self.threshold = float(threshold)
        self.powers = powers  # (K, n) int
        self.coefficients = coefficients  # (K, m) in action units
        self.n_nonzero = int(np.count_nonzero(coefficients))
        self.error = float(error)  # validation RMS error, normalised action units
        self.n_observations = int(n_observations)
        self.surrogate_return = math.nan  # mean return once scored
        self.shortfall = math.nan  # mean of max(teacher's return - own return, 0)
        self.returns: np.ndarray | None = None  # (episodes,) returns once scored
        self.round = 0  # DAgger round whose states it was fitted on

    def summary(self) -> dict:
        entry = {
            'degree': self.degree,
            'threshold': self.threshold,
            'n_nonzero': self.n_nonzero,
            'validation_rms_error': self.error,
        }
        if math.isfinite(self.surrogate_return):
            entry['surrogate_return'] = self.surrogate_return
            entry['shortfall'] = self.shortfall
        return entry


def distill_sparse_policy(
    teacher: Callable[[np.ndarray], np.ndarray] | NumpyPolicy,
    observations: np.ndarray,
    degree: int = 3,
    thresholds: Sequence[float] = (0.0, 0.005, 0.01, 0.02, 0.05, 0.1),
    n_models: int = 20,
    seed: int = 0,
    error_tolerance: float = 0.02,
    ridge: float = 1e-8,
    censor_iterations: int = 10,
    validation_fraction: float = 0.2,
    max_iterations: int = 20,
    angle_pairs: Sequence[tuple[int, int]] = (),
    saturation: float = 0.95,
    metadata: dict | None = None,
    dagger_env: Any = None,
    dagger_rounds: int = 3,
    dagger_steps: int = 200,
    degrees: Sequence[int] | None = None,
    return_tolerance: float | None = None,
    evaluation_episodes: int = 512,
    max_coefficients: int | None = None,
) -> SparsePolynomialPolicy:
    """Fit a sparse polynomial policy to a teacher's actions (ensemble STLSQ, bagged, median).

    The teacher is queried on the given states (e.g. surrogate or recorded states).  Each
    action channel is normalised to [-1, 1] by the limits and fitted separately.  Because the
    student's output is ``clip(polynomial)``, samples where the teacher sits at a limit only
    require the polynomial to lie beyond that limit (censored regression, a squared hinge
    on those samples): the first fit uses the unsaturated samples; then, for a few
    active-set rounds, saturated samples where the polynomial falls inside the limit count
    with the limit as target.  Saturated regions thus don't bend the polynomial where the
    teacher is in its linear range.

    Sparsity: bagged STLSQ (``n_models`` bootstrap resamples, median coefficients) on features
    scaled to unit RMS, so a threshold is a contribution to the normalised action.  Every
    degree in ``degrees`` and threshold in ``thresholds`` is fitted; one of these candidates
    is kept:

    * by imitation error (default): the sparsest whose validation RMS error (normalised
      action units, after clipping) is within ``error_tolerance`` of the best one;
    * by return (``return_tolerance`` set, needs ``dagger_env``): over the candidates of
      every DAgger round, the sparsest whose *shortfall* to the teacher is at most
      ``return_tolerance`` times the teacher's mean return (the one with the smallest
      shortfall if none is).  The shortfall is the mean, over ``evaluation_episodes``
      episodes of ``dagger_env``, of how much less the student returns than the teacher
      from the same start state; doing better from some starts does not make up for
      doing worse from others (on a surrogate that is often a model error or a start
      the real plant never sees, and it would let a trivial policy through).  A small
      imitation error does not make a good controller: a swing-up policy is mostly
      saturated and its switching curves decide whether the pendulum comes up on this
      swing or the next, so the return on the surrogate is the criterion that matters.
      Each DAgger round then rolls out that round's choice and also adds, with a larger
      weight, the student's and the teacher's states of the 5 % of episodes where the
      student falls furthest behind: those few states decide the lost episodes, and a
      uniform share of the data leaves them to chance.

    Parameters
    ----------
    teacher : NumpyPolicy or callable
        Policy to imitate; ``act_batch`` is used when present.
    observations : ndarray, shape (N, n)
        States where the student must agree with the teacher.
    degree : int
        Maximum total degree of the monomials (bias included), when ``degrees`` is None.
    thresholds : sequence of float
        STLSQ thresholds to search, in normalised-action units.
    n_models : int
        Bootstrap models of the ensemble (1 = plain STLSQ on all samples).
    seed : int
        Seed of the bootstrap, of the validation split and of the environment episodes.
    error_tolerance : float
        Accepted increase of validation RMS error over the best candidate, for sparsity
        (selection by imitation error).
    ridge : float
        Ridge regularisation (relative to unit-RMS features); keeps collinear libraries
        (cos² + sin² = 1) solvable.
    censor_iterations : int
        Maximum active-set rounds (saturated samples counted where the polynomial falls
        inside the limit).
    validation_fraction : float
        Fraction of the states held out to score the thresholds (none when N < 50).
    max_iterations : int
        STLSQ iterations per fit.
    angle_pairs : sequence of (int, int)
        (cos θ, sin θ) observation index pairs; monomials with cos θ squared or higher are
        left out of the library, since on the unit circle they repeat other monomials.
    saturation : float
        A teacher action whose normalised magnitude is at least this is treated as at its
        limit (a tanh-squashed teacher only approaches its limits).
    metadata : dict, optional
        Added to the policy's metadata (distillation metrics are added too).
    dagger_env : SurrogateVecEnv-like, optional
        Batched environment (``reset``/``step``/``reset_done``, e.g. the surrogate;
        ``n_envs`` too, and ``reset(seed)`` drawing the same start states for the same
        seed, to select by return).  With
        it, each of ``dagger_rounds`` rounds rolls the current student out for
        ``dagger_steps`` steps, labels the states it visits with the teacher and refits
        (DAgger): the student is then also right on the states its own errors lead to,
        not only on the teacher's.
    dagger_rounds : int
        Rounds of student rollouts (used only with ``dagger_env``).
    dagger_steps : int
        Batched steps per rollout, and the length of the evaluation episodes (the episode
        length).
    degrees : sequence of int, optional
        Degrees to try (default: ``degree`` only).
    return_tolerance : float, optional
        Select by return on ``dagger_env`` (see above); e.g. 0.01 for 1 %.
    evaluation_episodes : int
        Episodes (rounded up to whole batches of ``dagger_env.n_envs``) over which each
        candidate and the teacher are scored, from the same start states.
    max_coefficients : int, optional
        Candidates with more nonzero coefficients are not chosen (unless none has fewer).

    Returns
    -------
    SparsePolynomialPolicy
        With ``metadata['distillation']`` holding the chosen degree and threshold, the number
        of nonzero coefficients, the validation RMS error, the candidates tried and, when
        selecting by return, the teacher's and the student's returns.
    """
    degrees = (int(degree),) if degrees is None else tuple(sorted({int(d) for d in degrees}))
    if not degrees or min(degrees) < 0:
        raise ValueError(f'degrees must be non-negative integers, got {degrees}')
    if max(degrees) > MAX_POLYNOMIAL_POWER:
        raise ValueError(f'degrees above {MAX_POLYNOMIAL_POWER} are not supported')
    if return_tolerance is not None:
        if dagger_env is None:
            raise ValueError('selecting by return (return_tolerance) needs dagger_env')
        if not return_tolerance >= 0.0:
            raise ValueError(f'return_tolerance must be >= 0, got {return_tolerance}')
    fit_options = {
        'thresholds': thresholds,
        'n_models': n_models,
        'seed': seed,
        'ridge': ridge,
        'censor_iterations': censor_iterations,
        'validation_fraction': validation_fraction,
        'max_iterations': max_iterations,
        'angle_pairs': angle_pairs,
        'saturation': saturation,
    }
    observations = _check_observations(teacher, observations, thresholds, saturation)
    options = {
        'degrees': degrees,
        'fit_options': fit_options,
        'metadata': metadata,
        'max_coefficients': max_coefficients,
    }
    if return_tolerance is not None:
        return _distill_by_return(
            teacher,
            observations,
            env=dagger_env,
            rounds=max(0, int(dagger_rounds)),
            steps=int(dagger_steps),
            tolerance=float(return_tolerance),
            episodes=int(evaluation_episodes),
            seed=seed,
            **options,
        )
    student = _distill_by_error(teacher, observations, error_tolerance, **options)
    if dagger_env is None or dagger_rounds <= 0:
        return student
    errors = [student.metadata['distillation']['validation_rms_error']]
    for round_index in range(dagger_rounds):
        visited = _visited_states(student, dagger_env, dagger_steps, seed + 7919 * round_index)
        observations = np.concatenate([observations, visited])
        student = _distill_by_error(teacher, observations, error_tolerance, **options)
        errors.append(student.metadata['distillation']['validation_rms_error'])
    student.metadata['distillation']['dagger_rounds'] = int(dagger_rounds)
    student.metadata['distillation']['dagger_validation_rms_errors'] = errors
    return student


# Weight of the states of the episodes where the student does worst (see _distill_by_return).
_FOCUS_WEIGHT = 4.0

# DAgger rollouts of a large batched environment are thinned to this many states per round:
# the fit's cost grows with the number of states, and consecutive states add little.
_MAX_DAGGER_STATES_PER_ROUND = 16384


def _visited_states(policy: NumpyPolicy, env: Any, steps: int, seed: int) -> np.ndarray:
    """Finite observations (K, n) visited by a policy in a batched environment."""
    observations = np.asarray(env.reset(seed=seed), dtype=np.float64)
    visited = [observations]
    for _ in range(steps):
        next_observations, _, terminated, truncated = env.step(policy.act_batch(observations))
        next_observations = np.asarray(next_observations, dtype=np.float64)
        finite = np.all(np.isfinite(next_observations), axis=1)
        visited.append(next_observations[finite])
        done = np.asarray(terminated, bool) | np.asarray(truncated, bool) | ~finite
        if done.any():
            observations = np.asarray(env.reset_done(done), dtype=np.float64)
        else:
            observations = next_observations
    states = np.concatenate(visited)
    if len(states) > _MAX_DAGGER_STATES_PER_ROUND:
        keep = np.random.default_rng(seed).choice(
            len(states), _MAX_DAGGER_STATES_PER_ROUND, replace=False
        )
        states = states[np.sort(keep)]
    return states


def _episode_returns(policy: Any, env: Any, steps: int, seeds: Sequence[int]) -> np.ndarray:
    """Returns (len(seeds) * n_envs,) of deterministic episodes, one batch per seed.

    ``env.reset(seed)`` draws the same start states for every policy scored with the same
    seeds, so the returns of a student and of its teacher compare start by start.  Rewards
    after an episode ends (terminated or truncated) are not counted.
    """
    returns = []
    act = policy.act_batch if hasattr(policy, 'act_batch') else None
    for seed in seeds:
        observations = np.asarray(env.reset(seed=seed), dtype=np.float64)
        totals = np.zeros(len(observations))
        alive = np.ones(len(observations), dtype=bool)
        for _ in range(steps):
            if act is not None:
                actions = act(observations)
            else:
                actions = np.array([np.asarray(policy(x), dtype=np.float64) for x in observations])
            observations, rewards, terminated, truncated = env.step(actions)
            totals += np.where(alive, np.asarray(rewards, dtype=np.float64), 0.0)
            alive &= ~(np.asarray(terminated, bool) | np.asarray(truncated, bool))
            if not alive.any():
                break
            observations = np.asarray(observations, dtype=np.float64)
        returns.append(totals)
    return np.concatenate(returns)


def _episode_states(
    policy: Any, env: Any, steps: int, seeds: Sequence[int], episodes: np.ndarray
) -> np.ndarray:
    """States (K, n) of chosen episodes of :func:`_episode_returns` (same seeds, same order)."""
    states = []
    n_envs = int(env.n_envs)
    for batch, seed in enumerate(seeds):
        slots = episodes[(episodes >= batch * n_envs) & (episodes < (batch + 1) * n_envs)]
        slots = slots - batch * n_envs
        if slots.size == 0:
            continue
        observations = np.asarray(env.reset(seed=seed), dtype=np.float64)
        alive = np.zeros(n_envs, dtype=bool)
        alive[slots] = True
        for _ in range(steps):
            states.append(observations[alive])
            observations, _, terminated, truncated = env.step(policy.act_batch(observations))
            observations = np.asarray(observations, dtype=np.float64)
            alive &= ~(np.asarray(terminated, bool) | np.asarray(truncated, bool))
            alive &= np.all(np.isfinite(observations), axis=1)
            if not alive.any():
                break
    return np.concatenate(states)


def _check_observations(
    teacher: Any, observations: Any, thresholds: Sequence[float], saturation: float
) -> np.ndarray:
    observations = np.asarray(observations, dtype=np.float64)
    if observations.ndim != 2 or len(observations) < 2:
        raise ValueError(f'observations must have shape (N >= 2, n), got {observations.shape}')
    if not np.all(np.isfinite(observations)):
        raise ValueError('observations contain non-finite values')
    if not len(thresholds):
        raise ValueError('thresholds must not be empty')
    if not 0.0 < saturation <= 1.0:
        raise ValueError(f'saturation must be in (0, 1], got {saturation}')
    names = getattr(teacher, 'observation_names', None)
    if names is None:
        raise ValueError('teacher must have observation_names, action_names and action limits')
    if len(names) != observations.shape[1]:
        raise ValueError(f'teacher expects {len(names)} observation features')
    return observations


def _teacher_actions(teacher: Any, observations: np.ndarray) -> np.ndarray:
    """Teacher actions (N, m) for states (N, n)."""
    if hasattr(teacher, 'act_batch'):
        actions = np.asarray(teacher.act_batch(observations), dtype=np.float64)
    else:
        actions = np.array([np.array(teacher(x), dtype=np.float64) for x in observations])
    return actions.reshape(len(observations), -1)


def _library(n: int, degree: int, angle_pairs: Sequence[tuple[int, int]]) -> np.ndarray:
    """Monomials (K, n) of the student: all up to ``degree`` but those with cos θ squared."""
    powers = polynomial_powers(n, degree)
    for cos_index, _ in angle_pairs:
        # cos² = 1 - sin² on the unit circle: monomials with cos² duplicate others there,
        # which would spread one term over several collinear ones.
        powers = powers[powers[:, cos_index] < 2]
    return powers


def _fit_candidates(
    teacher: Any,
    observations: np.ndarray,
    degrees: Sequence[int],
    thresholds: Sequence[float],
    n_models: int,
    seed: int,
    ridge: float,
    censor_iterations: int,
    validation_fraction: float,
    max_iterations: int,
    angle_pairs: Sequence[tuple[int, int]],
    saturation: float,
    sample_weights: np.ndarray | None = None,
) -> list[_Candidate]:
    """Censored ensemble-STLSQ fits for every degree and threshold, on fixed states.

    ``sample_weights`` (N,) multiply each state's weight in the least-squares fits.
    """
    low = np.asarray(teacher.action_low, dtype=np.float64)
    high = np.asarray(teacher.action_high, dtype=np.float64)
    center, half_range = 0.5 * (high + low), 0.5 * (high - low)
    actions = _teacher_actions(teacher, observations)
    normalised = np.clip((actions - center) / half_range, -1.0, 1.0)

    rng = np.random.default_rng(seed)
    N = len(observations)
    order = rng.permutation(N)
    n_validation = int(round(validation_fraction * N)) if N >= 50 else 0
    validation, training = order[:n_validation], order[n_validation:]
    if n_validation == 0:
        validation = training
    n_train = len(training)
    # Bagging as multinomial sample weights, so each bootstrap model is a weighted
    # least-squares problem solved from its (K, K) normal equations.
    if n_models <= 1:
        weights = np.ones((1, n_train))
    else:
        draws = [rng.integers(0, n_train, n_train) for _ in range(n_models)]
        weights = np.stack([np.bincount(d, minlength=n_train) for d in draws]).astype(float)
    if sample_weights is not None:
        weights = weights * np.asarray(sample_weights, dtype=np.float64)[training]

    # The library of the highest degree holds every lower one as its first columns
    # (monomials are ordered by degree), so its features serve every degree.
    all_powers = _library(observations.shape[1], max(degrees), angle_pairs)
    all_features = _monomials(observations, all_powers)
    all_scale = np.sqrt(np.mean(all_features[training] ** 2, axis=0))
    all_scale[all_scale < 1e-12] = 1.0  # a feature that is zero on the data stays unused
    all_features /= all_scale
    total_degree = all_powers.sum(axis=1)

    candidates = []
    with _single_threaded_blas():
        for degree in degrees:
            n_features = int(np.count_nonzero(total_degree <= degree))
            features = all_features[:, :n_features]
            scale = all_scale[:n_features]
            fits = _censored_fits(
                features[training],
                normalised[training],
                weights,
                thresholds,
                saturation,
                ridge,
                censor_iterations,
                max_iterations,
            )
            for threshold, coefficients in zip(thresholds, fits, strict=True):
                prediction = np.clip(features[validation] @ coefficients, -1.0, 1.0)
                error = float(np.sqrt(np.mean((prediction - normalised[validation]) ** 2)))
                # Back to raw monomials and action units: a = center + half_range * (Θ/scale) ξ;
                # powers[0] is the constant monomial, which absorbs the centre of the limits.
                action_coefficients = coefficients / scale[:, None] * half_range[None, :]
                action_coefficients[0] += center
                candidates.append(
                    _Candidate(
                        degree, threshold, all_powers[:n_features], action_coefficients, error, N
                    )
                )
    return candidates


def _censored_fits(
    features: np.ndarray,
    normalised: np.ndarray,
    weights: np.ndarray,
    thresholds: Sequence[float],
    saturation: float,
    ridge: float,
    censor_iterations: int,
    max_iterations: int,
) -> list[np.ndarray]:
    """Censored fit per action and threshold: saturated samples only bound the polynomial.

    Parameters
    ----------
    features : ndarray, shape (N, K)
        Unit-RMS monomials of the training states.
    normalised : ndarray, shape (N, m)
        Teacher actions scaled to [-1, 1].
    weights : ndarray, shape (B, N)
        Bootstrap sample weights, one row per ensemble member.

    Returns
    -------
    list of ndarray, shape (K, m)
        Normalised coefficients, one per threshold.
    """
    n_train, n_features = features.shape
    m = normalised.shape[1]
    results = [np.zeros((n_features, m)) for _ in thresholds]
    for j in range(m):
        target = normalised[:, j].copy()
        at_high = target >= saturation
        at_low = target <= -saturation
        target[at_high], target[at_low] = 1.0, -1.0
        unsaturated = ~(at_high | at_low)
        if unsaturated.sum() < n_features:
            unsaturated[:] = True  # too few unsaturated samples: plain clipped fit
        # Normal equations of the unsaturated samples, once per member; the saturated
        # samples that an active-set round adds are few and added on top.
        rows = np.flatnonzero(unsaturated)
        base_features = features[rows]
        base = []
        for w in weights[:, rows]:
            weighted = base_features * w[:, None]
            base.append(
                (weighted.T @ base_features / n_train, weighted.T @ target[rows] / n_train)
            )
        for index, threshold in enumerate(thresholds):
            extra = np.zeros(0, dtype=np.intp)
            best_error = math.inf
            for _ in range(max(1, censor_iterations)):
                extra_features = features[extra]
                members = []
                for (gram, moment), w in zip(base, weights[:, extra], strict=True):
                    if extra.size:
                        weighted = extra_features * w[:, None]
                        gram = gram + weighted.T @ extra_features / n_train
                        moment = moment + weighted.T @ target[extra] / n_train
                    members.append(
                        _stlsq_normal_equations(
                            gram, moment, float(threshold), ridge, max_iterations
                        )
                    )
                candidate = np.median(np.stack(members), axis=0)
                prediction = features @ candidate
                # Keep the round whose clipped output is closest to the teacher (the
                # active set can cycle instead of converging).
                error = np.mean((np.clip(prediction, -1.0, 1.0) - normalised[:, j]) ** 2)
                if error < best_error:
                    best_error = error
                    results[index][:, j] = candidate
                # Active set of the squared-hinge problem: a saturated sample counts
                # (target = its limit) exactly where the polynomial is inside the limit.
                violated = (at_high & (prediction < 1.0)) | (at_low & (prediction > -1.0))
                new_extra = np.flatnonzero(violated & ~unsaturated)
                if np.array_equal(new_extra, extra):
                    break
                extra = new_extra
    return results


def _student(
    teacher: Any, candidate: _Candidate, summary: dict, metadata: dict | None
) -> SparsePolynomialPolicy:
    """The policy of a candidate, with the teacher's metadata and the distillation summary."""
    merged = dict(getattr(teacher, 'metadata', {}) or {})
    merged.update(metadata or {})
    merged['distillation'] = summary
    merged['teacher_kind'] = getattr(teacher, 'kind', type(teacher).__name__)
    return SparsePolynomialPolicy(
        candidate.powers,
        candidate.coefficients,
        teacher.observation_names,
        teacher.action_names,
        teacher.action_low,
        teacher.action_high,
        merged,
    )


def _summary(chosen: _Candidate, fit_options: dict) -> dict:
    if not math.isfinite(chosen.error):
        raise ValueError('distillation produced a non-finite error')
    return {
        'threshold': chosen.threshold,
        'n_nonzero': chosen.n_nonzero,
        'validation_rms_error': chosen.error,
        'degree': chosen.degree,
        'angle_pairs': [[int(i), int(j)] for i, j in fit_options['angle_pairs']],
        'saturation': float(fit_options['saturation']),
        'n_models': int(fit_options['n_models']),
        'n_observations': chosen.n_observations,
    }


def _eligible(candidates: list[_Candidate], max_coefficients: int | None) -> list[_Candidate]:
    """Candidates within the coefficient budget (the sparsest ones if none is)."""
    if max_coefficients is None:
        return candidates
    within = [c for c in candidates if c.n_nonzero <= max_coefficients]
    if within:
        return within
    fewest = min(c.n_nonzero for c in candidates)
    return [c for c in candidates if c.n_nonzero == fewest]


def _distill_by_error(
    teacher: Any,
    observations: np.ndarray,
    error_tolerance: float,
    degrees: Sequence[int],
    fit_options: dict,
    metadata: dict | None,
    max_coefficients: int | None,
) -> SparsePolynomialPolicy:
    """One distillation on fixed states, the candidate chosen by validation error."""
    candidates = _fit_candidates(teacher, observations, degrees, **fit_options)
    eligible = _eligible(candidates, max_coefficients)
    best_error = min(c.error for c in eligible)
    acceptable = [c for c in eligible if c.error <= best_error + error_tolerance]
    chosen = min(acceptable, key=lambda c: (c.n_nonzero, c.error))
    summary = _summary(chosen, fit_options)
    summary['selection'] = 'imitation_error'
    summary['candidates'] = [c.summary() for c in candidates]
    return _student(teacher, chosen, summary, metadata)


def _pick_by_return(
    candidates: list[_Candidate], allowed: float, max_coefficients: int | None
) -> _Candidate:
    """The sparsest candidate whose shortfall is within ``allowed``, else the closest."""
    eligible = _eligible(candidates, max_coefficients)
    acceptable = [c for c in eligible if c.shortfall <= allowed]
    if acceptable:
        return min(acceptable, key=lambda c: (c.n_nonzero, c.shortfall))
    return min(eligible, key=lambda c: (c.shortfall, c.n_nonzero))


def _distill_by_return(
    teacher: Any,
    observations: np.ndarray,
    env: Any,
    rounds: int,
    steps: int,
    tolerance: float,
    episodes: int,
    seed: int,
    degrees: Sequence[int],
    fit_options: dict,
    metadata: dict | None,
    max_coefficients: int | None,
) -> SparsePolynomialPolicy:
    """DAgger rounds; every candidate of every round is scored against the teacher on ``env``.

    A candidate's score is its *shortfall*: the mean over the episodes of how much less
    it returns than the teacher from the same start state (never negative).  Doing
    better than the teacher from some starts does not make up for doing worse from
    others: on the surrogate that is often a model error or a start state the real plant
    never sees, and it would let a trivial policy through.  The rollouts of each round
    use the candidate that round would choose, so the next fit also covers the states
    where that candidate's mistakes lead.
    """
    batches = max(1, math.ceil(max(1, episodes) / int(env.n_envs)))
    evaluation_seeds = [seed + 104_729 * (batch + 1) for batch in range(batches)]
    teacher_returns = _episode_returns(teacher, env, steps, evaluation_seeds)
    teacher_return = float(np.mean(teacher_returns))
    allowed = tolerance * abs(teacher_return)

    def score(candidate: _Candidate, same_as: _Candidate | None = None) -> None:
        if same_as is not None:
            candidate.returns = same_as.returns
        else:
            policy = _student(teacher, candidate, {}, None)
            candidate.returns = _episode_returns(policy, env, steps, evaluation_seeds)
        candidate.surrogate_return = float(np.mean(candidate.returns))
        candidate.shortfall = float(np.mean(np.maximum(teacher_returns - candidate.returns, 0)))

    evaluated: list[_Candidate] = []
    rounds_summary = []
    weights = np.ones(len(observations))
    fewest_acceptable: int | None = None
    for round_index in range(rounds + 1):
        fits = _fit_candidates(
            teacher, observations, degrees, **fit_options, sample_weights=weights
        )
        # Sparsest first: once a candidate is good enough, denser ones can't be chosen
        # any more (in this round or a later one) and need no episodes.
        fits.sort(key=lambda c: (c.n_nonzero, c.degree, c.threshold))
        scored: list[_Candidate] = []
        for candidate in fits:
            candidate.round = round_index
            if fewest_acceptable is not None and candidate.n_nonzero > fewest_acceptable:
                break
            same = next(
                (
                    c
                    for c in scored
                    if c.degree == candidate.degree
                    and np.array_equal(c.coefficients, candidate.coefficients)
                ),
                None,
            )  # e.g. thresholds below every coefficient give the same fit
            score(candidate, same)
            scored.append(candidate)
            within_budget = max_coefficients is None or candidate.n_nonzero <= max_coefficients
            if candidate.shortfall <= allowed and within_budget:
                fewest_acceptable = candidate.n_nonzero
        if not scored:  # nothing sparser than an earlier choice: score the sparsest
            score(fits[0])
            scored.append(fits[0])
        chosen = _pick_by_return(scored, allowed, max_coefficients)
        evaluated.extend(scored)
        rounds_summary.append(
            {
                'n_observations': int(len(observations)),
                'n_nonzero': chosen.n_nonzero,
                'degree': chosen.degree,
                'surrogate_return': chosen.surrogate_return,
                'shortfall': chosen.shortfall,
            }
        )
        if round_index < rounds:
            student = _student(teacher, chosen, {}, None)
            visited = _visited_states(student, env, steps, seed + 7919 * round_index)
            observations = np.concatenate([observations, visited])
            weights = np.concatenate([weights, np.ones(len(visited))])
            # The episodes where the student falls furthest behind the teacher (e.g. one
            # swing more before coming up) hinge on a few states near a switching curve;
            # a uniform share of the data leaves them to chance.  The student's and the
            # teacher's states of those episodes get a larger weight.
            shortfall = teacher_returns - chosen.returns
            worst = np.argsort(-shortfall)[: max(1, len(shortfall) // 20)]
            worst = worst[shortfall[worst] > 0]
            if worst.size:
                focus = np.concatenate(
                    [
                        _episode_states(who, env, steps, evaluation_seeds, worst)
                        for who in (student, teacher)
                    ]
                )
                observations = np.concatenate([observations, focus])
                weights = np.concatenate([weights, np.full(len(focus), _FOCUS_WEIGHT)])
    chosen = _pick_by_return(evaluated, allowed, max_coefficients)
    summary = _summary(chosen, fit_options)
    summary.update(
        {
            'selection': 'shortfall_to_teacher',
            'surrogate_return': chosen.surrogate_return,
            'shortfall': chosen.shortfall,
            'teacher_surrogate_return': teacher_return,
            'allowed_shortfall': allowed,
            'return_tolerance': tolerance,
            'evaluation_episodes': int(batches * env.n_envs),
            'dagger_rounds': int(rounds),
            'chosen_round': chosen.round,
            'rounds': rounds_summary,
            'candidates': [c.summary() for c in evaluated if c.round == chosen.round],
        }
    )
    return _student(teacher, chosen, summary, metadata)
