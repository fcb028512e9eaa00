"""Numpy-only policies for the real-time controller, and their JSON format.

The runtime is numpy because the controller's path never imports torch and must not allocate
per tick: both policy kinds keep preallocated buffers and evaluate one observation with a
handful of ufunc calls that write into those buffers.  Fitting a sparse policy to a trained
network is in :mod:`sindyrl_ros.core.distillation`.

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
Reading and validating a document is :mod:`sindyrl_ros.core.policy_loading`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import itertools
import json
from pathlib import Path
import time
from typing import Any

import numpy as np

from sindyrl_ros.core.serialization import (
    FormatError,
    as_float_array,
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
    'monomials',
    'check_names',
    'measure_policy_latency',
]


def check_names(names: Any, expected_length: int | None, where: str) -> tuple[str, ...]:
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
        self.observation_names = check_names(list(observation_names), None, 'observation_names')
        self.action_names = check_names(list(action_names), None, 'action_names')
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
        return monomials(observations, self.powers)

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


def monomials(observations: np.ndarray, powers: np.ndarray) -> np.ndarray:
    """Monomials of a batch: (N, n) observations, (K, n) powers -> (N, K) features."""
    max_power = int(powers.max()) if powers.size else 0
    table = np.ones((max_power + 1,) + observations.shape)  # table[p, i, j] = x_ij ** p
    for power in range(1, max_power + 1):
        table[power] = table[power - 1] * observations
    features = np.ones((len(observations), len(powers)))
    for j in range(observations.shape[1]):
        features *= table[powers[:, j], :, j].T
    return features


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
