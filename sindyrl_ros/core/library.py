"""Candidate feature library Θ(x, u) for SINDy with control, and its fast numpy evaluation.

The library is described once, as a list of *terms* over the joint input
z = (observation, action):

* a monomial ``prod_j z_j ** powers[j]`` (the constant term has all powers zero), or
* a Fourier term ``sin(f z_j)`` / ``cos(f z_j)``.

Two things are built from that description:

* a pysindy feature library (``PolynomialLibrary`` subclass + ``FourierLibrary``
  in a ``GeneralizedLibrary``) used to *fit* the model, whose column order is
  checked against the term list;
* :class:`FeatureEvaluator`, a batched numpy evaluation used to *run* the model
  thousands of times per second (surrogate environment, validation rollouts),
  because pysindy's ``predict`` costs milliseconds per call.

Angles observed as (cos θ, sin θ) satisfy cos² + sin² = 1, which makes a full
polynomial library collinear on any data (1, cos², sin² are dependent), so the
sparse regression cannot find the sparse equation. With ``circle_reduction`` the
library keeps sin θ only to the first power per angle pair (sin² = 1 - cos²), which
removes exactly that redundancy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
import functools
from typing import Any

import numpy as np

__all__ = [
    'CONTROL_MODES',
    'FeatureEvaluator',
    'LibraryConfig',
    'Term',
    'build_terms',
    'format_term',
    'make_pysindy_library',
]

CONTROL_MODES = ('full', 'affine', 'linear', 'none')


@dataclass
class LibraryConfig:
    """Which candidate terms the dynamics may use.

    Attributes
    ----------
    degree : int
        Maximum total polynomial degree in (observation, action).
    include_bias : bool
        Include the constant term.
    control : {'full', 'affine', 'linear', 'none'}
        How actions enter: ``'full'`` all monomials of (x, u) up to ``degree``
        (state ⊗ control products and powers of u); ``'affine'`` f(x) + g(x) u (each
        term at most linear in the actions, so the model is control-affine, as
        mechanical systems driven by torque/force are); ``'linear'`` f(x) + B u;
        ``'none'`` the actions are not used.
    circle_reduction : bool
        For every (cos, sin) angle pair, keep sin only to the first power
        (sin² = 1 - cos²), removing the collinearity of polynomial libraries on
        angle data.
    fourier_frequencies : int
        Number of harmonics ``sin(k z), cos(k z)``, k = 1..fourier_frequencies, added
        for each feature named in ``fourier_features``. The polynomial part keeps the
        linear term of such a feature (a raw angle θ enters θ[k+1] = θ[k] + ...).
    fourier_features : list of str
        Observation or action names given Fourier terms.
    """

    degree: int = 3
    include_bias: bool = True
    control: str = 'affine'
    circle_reduction: bool = True
    fourier_frequencies: int = 0
    fourier_features: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not isinstance(self.degree, int) or isinstance(self.degree, bool) or self.degree < 1:
            raise ValueError(f'degree must be an integer >= 1, got {self.degree!r}')
        if self.control not in CONTROL_MODES:
            raise ValueError(f'control must be one of {CONTROL_MODES}, got {self.control!r}')
        if self.fourier_frequencies < 0:
            raise ValueError('fourier_frequencies must be >= 0')
        self.fourier_features = list(self.fourier_features)
        if self.fourier_features and self.fourier_frequencies == 0:
            raise ValueError('fourier_features given but fourier_frequencies is 0')

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of the configuration."""
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> LibraryConfig:
        """Inverse of :meth:`to_dict`; raises ``ValueError``/``TypeError`` on bad fields."""
        known = {'degree', 'include_bias', 'control', 'circle_reduction'}
        known |= {'fourier_frequencies', 'fourier_features'}
        unknown = set(doc) - known
        if unknown:
            raise ValueError(f'unknown library fields {sorted(unknown)}')
        return cls(**doc)


@dataclass(frozen=True)
class Term:
    """One library column.

    Attributes
    ----------
    powers : tuple of int, length n + m
        Exponent of each input (observation then action) in a monomial term; all
        zero for the constant term and for Fourier terms.
    trig : tuple (input index, frequency, 'sin' | 'cos') or None
        The Fourier factor, for Fourier terms.
    """

    powers: tuple[int, ...]
    trig: tuple[int, int, str] | None = None

    @property
    def degree(self) -> int:
        """Total polynomial degree (0 for Fourier terms and the constant)."""
        return int(sum(self.powers))


def _allowed_monomial(
    combo: Sequence[int],
    n_observations: int,
    n_actions: int,
    control: str,
    sine_inputs: Sequence[int],
) -> bool:
    """Whether a monomial (given as sorted input indices with repetition) is in the library."""
    action_degree = sum(1 for index in combo if index >= n_observations)
    if action_degree:
        if control == 'none':
            return False
        if control == 'linear' and len(combo) > 1:
            return False
        if control == 'affine' and action_degree > 1:
            return False
    for index in sine_inputs:
        if combo.count(index) > 1:
            return False
    return True


def _monomial_combinations(
    n_inputs: int, degree: int, include_bias: bool
) -> list[tuple[int, ...]]:
    """All sorted index tuples of length 0..degree, in sklearn/pysindy order."""
    from sklearn.preprocessing import PolynomialFeatures

    return list(
        PolynomialFeatures._combinations(
            n_features=n_inputs,
            min_degree=int(not include_bias),
            max_degree=degree,
            interaction_only=False,
            include_bias=include_bias,
        )
    )


def _fourier_inputs(config: LibraryConfig, input_names: Sequence[str]) -> list[int]:
    indices = []
    for name in config.fourier_features:
        if name not in input_names:
            raise ValueError(
                f'fourier feature {name!r} is not an observation or action name '
                f'{list(input_names)}'
            )
        indices.append(list(input_names).index(name))
    if len(set(indices)) != len(indices):
        raise ValueError(f'duplicate fourier features {config.fourier_features}')
    return indices


def build_terms(
    config: LibraryConfig,
    observation_names: Sequence[str],
    action_names: Sequence[str],
    angle_pairs: Sequence[tuple[int, int]],
) -> list[Term]:
    """List the library's terms in the column order of the pysindy library.

    Parameters
    ----------
    config : LibraryConfig
    observation_names, action_names : sequence of str
        n and m names.
    angle_pairs : sequence of (cos index, sin index)
        Observation indices of angle pairs (used by ``circle_reduction``).

    Returns
    -------
    list of Term
    """
    n, m = len(observation_names), len(action_names)
    sine_inputs = [int(pair[1]) for pair in angle_pairs] if config.circle_reduction else []
    terms = []
    for combo in _monomial_combinations(n + m, config.degree, config.include_bias):
        if _allowed_monomial(combo, n, m, config.control, sine_inputs):
            terms.append(Term(tuple(int(p) for p in np.bincount(combo, minlength=n + m))))
    fourier_inputs = _fourier_inputs(config, list(observation_names) + list(action_names))
    zero = tuple([0] * (n + m))
    for frequency in range(1, config.fourier_frequencies + 1):
        for index in fourier_inputs:
            terms.append(Term(zero, (index, frequency, 'sin')))
            terms.append(Term(zero, (index, frequency, 'cos')))
    return terms


def format_term(
    term: Term, input_names: Sequence[str], suffix: str = '[k]', pysindy_style: bool = False
) -> str:
    """Readable name of a term, e.g. ``'sin[k] u[k]'``, ``'cos[k]^2'``, ``'sin(2 th[k])'``.

    ``pysindy_style`` reproduces pysindy's own names (``'sin(1 th)'``), used to check
    that the pysindy library's columns are the terms in the same order.
    """
    if term.trig is not None:
        index, frequency, kind = term.trig
        factor = '' if frequency == 1 and not pysindy_style else f'{frequency} '
        return f'{kind}({factor}{input_names[index]}{suffix})'
    parts = []
    for index, power in enumerate(term.powers):
        if power == 1:
            parts.append(f'{input_names[index]}{suffix}')
        elif power > 1:
            parts.append(f'{input_names[index]}{suffix}^{power}')
    return ' '.join(parts) if parts else '1'


def make_pysindy_library(
    config: LibraryConfig,
    observation_names: Sequence[str],
    action_names: Sequence[str],
    angle_pairs: Sequence[tuple[int, int]],
):
    """Build the pysindy feature library whose columns are :func:`build_terms`.

    Returns
    -------
    pysindy.feature_library.BaseFeatureLibrary
    """
    import pysindy as ps

    n, m = len(observation_names), len(action_names)
    sine_inputs = tuple(int(pair[1]) for pair in angle_pairs) if config.circle_reduction else ()
    polynomial = _constrained_library_class()(
        degree=config.degree,
        include_bias=config.include_bias,
        n_observations=n,
        n_actions=m,
        control=config.control,
        sine_inputs=sine_inputs,
    )
    fourier_inputs = _fourier_inputs(config, list(observation_names) + list(action_names))
    if not fourier_inputs:
        return polynomial
    fourier = ps.FourierLibrary(n_frequencies=config.fourier_frequencies)
    return ps.GeneralizedLibrary(
        [polynomial, fourier], inputs_per_library=[list(range(n + m)), fourier_inputs]
    )


@functools.cache
def _constrained_library_class():
    """The pysindy library subclass, created on first use (importing pysindy takes ~1 s)."""
    import pysindy as ps

    class ConstrainedPolynomialLibrary(ps.PolynomialLibrary):
        """pysindy ``PolynomialLibrary`` restricted to the monomials :func:`build_terms` keeps.

        Overriding ``_combinations`` is enough: pysindy's ``fit``, ``transform``,
        ``powers_`` and ``get_feature_names`` all enumerate terms through it.
        """

        def __init__(
            self,
            degree=2,
            include_interaction=True,
            interaction_only=False,
            include_bias=True,
            order='C',
            n_observations=0,
            n_actions=0,
            control='full',
            sine_inputs=(),
        ):
            super().__init__(
                degree=degree,
                include_interaction=include_interaction,
                interaction_only=interaction_only,
                include_bias=include_bias,
                order=order,
            )
            self.n_observations = n_observations
            self.n_actions = n_actions
            self.control = control
            self.sine_inputs = sine_inputs

        def _combinations(
            self, n_features, degree, include_interaction, interaction_only, include_bias
        ):
            combos = ps.PolynomialLibrary._combinations(
                n_features, degree, include_interaction, interaction_only, include_bias
            )
            return (
                combo
                for combo in combos
                if _allowed_monomial(
                    tuple(combo),
                    self.n_observations,
                    self.n_actions,
                    self.control,
                    self.sine_inputs,
                )
            )

    return ConstrainedPolynomialLibrary


class FeatureEvaluator:
    """Batched numpy evaluation of the active columns of a library.

    Only the terms with a nonzero coefficient in some model are evaluated (plus the
    lower-degree monomials they are built from), so sparse models are cheap. Each
    monomial of degree d is computed as (its degree d-1 prefix) × (one input), with
    all monomials of one degree in a single vectorised operation, into preallocated
    buffers: no per-step allocation for a fixed batch size.

    Parameters
    ----------
    terms : list of Term
        Library columns.
    active : sequence of int
        Indices into ``terms`` to evaluate.
    n_inputs : int
        n + m.

    Attributes
    ----------
    n_rows : int
        Rows of the evaluation buffer (active terms + helper monomials).
    term_rows : numpy.ndarray of int, shape (len(active),)
        Buffer row holding each active term.
    """

    def __init__(self, terms: Sequence[Term], active: Sequence[int], n_inputs: int) -> None:
        self.n_inputs = int(n_inputs)
        active = [int(i) for i in active]
        monomials: dict[tuple[int, ...], int] = {}
        # Row 0: constant; rows 1..n_inputs: the inputs themselves.
        order: list[tuple[int, ...]] = [()]
        order += [(j,) for j in range(self.n_inputs)]
        needed: set[tuple[int, ...]] = set()
        trig_terms: list[tuple[int, int, str]] = []
        for index in active:
            term = terms[index]
            if term.trig is not None:
                if term.trig not in trig_terms:
                    trig_terms.append(term.trig)
                continue
            combo = tuple(j for j, p in enumerate(term.powers) for _ in range(p))
            while len(combo) > 1:
                needed.add(combo)
                combo = combo[:-1]
        # Sines first, then cosines, so each kind fills one contiguous block of rows.
        trig_terms.sort(key=lambda t: (t[2] != 'sin', t[0], t[1]))
        by_degree: dict[int, list[tuple[int, ...]]] = {}
        for combo in needed:
            by_degree.setdefault(len(combo), []).append(combo)
        self._degree_steps = []
        for degree in sorted(by_degree):
            combos = sorted(by_degree[degree])
            start = len(order)
            order += combos
            self._degree_steps.append((start, start + len(combos), combos))
        for row, combo in enumerate(order):
            monomials[combo] = row
        # Resolve parent/input rows now that every row index is known.
        steps = []
        for start, stop, combos in self._degree_steps:
            parents = np.array([monomials[c[:-1]] for c in combos], dtype=np.intp)
            inputs = np.array([1 + c[-1] for c in combos], dtype=np.intp)
            steps.append((start, stop, parents, inputs))
        self._degree_steps = steps
        self._trig_start = len(order)
        self._trig_inputs = np.array([1 + t[0] for t in trig_terms], dtype=np.intp)
        self._trig_frequencies = np.array([t[1] for t in trig_terms], dtype=np.float64)
        self._n_sin = sum(1 for t in trig_terms if t[2] == 'sin')
        self.n_rows = self._trig_start + len(trig_terms)
        rows = []
        for index in active:
            term = terms[index]
            if term.trig is not None:
                rows.append(self._trig_start + trig_terms.index(term.trig))
            else:
                combo = tuple(j for j, p in enumerate(term.powers) for _ in range(p))
                rows.append(monomials[combo])
        self.term_rows = np.array(rows, dtype=np.intp)
        self._batch = -1
        self._buffers: dict[str, np.ndarray] = {}

    def expand_coefficients(self, coefficients: np.ndarray, active: Sequence[int]) -> np.ndarray:
        """Scatter coefficients of the active terms onto buffer rows.

        Parameters
        ----------
        coefficients : numpy.ndarray, shape (..., n_out, n_terms)
            Coefficients over all library terms.
        active : sequence of int
            The same active term indices given to the constructor.

        Returns
        -------
        numpy.ndarray, shape (..., n_out, n_rows)
        """
        coefficients = np.asarray(coefficients, dtype=np.float64)
        expanded = np.zeros(coefficients.shape[:-1] + (self.n_rows,))
        expanded[..., self.term_rows] = coefficients[..., list(active)]
        return np.ascontiguousarray(expanded)

    def _ensure_buffers(self, batch: int) -> None:
        if batch == self._batch:
            return
        self._batch = batch
        self._buffers = {'rows': np.empty((self.n_rows, batch))}
        self._buffers['rows'][0] = 1.0
        for start, stop, _, _ in self._degree_steps:
            width = stop - start
            self._buffers[f'parent{start}'] = np.empty((width, batch))
            self._buffers[f'input{start}'] = np.empty((width, batch))
        if self._trig_inputs.size:
            self._buffers['trig'] = np.empty((self._trig_inputs.size, batch))

    def evaluate(self, inputs: np.ndarray) -> np.ndarray:
        """Evaluate the buffer rows for a batch of inputs.

        Parameters
        ----------
        inputs : numpy.ndarray, shape (N, n + m)
            Observation and action side by side.

        Returns
        -------
        numpy.ndarray, shape (n_rows, N)
            Internal buffer (overwritten by the next call with the same N).
        """
        batch = inputs.shape[0]
        self._ensure_buffers(batch)
        rows = self._buffers['rows']
        rows[1 : 1 + self.n_inputs] = inputs.T
        for start, stop, parents, input_rows in self._degree_steps:
            parent = self._buffers[f'parent{start}']
            factor = self._buffers[f'input{start}']
            np.take(rows, parents, axis=0, out=parent)
            np.take(rows, input_rows, axis=0, out=factor)
            np.multiply(parent, factor, out=rows[start:stop])
        if self._trig_inputs.size:
            trig = self._buffers['trig']
            np.take(rows, self._trig_inputs, axis=0, out=trig)
            trig *= self._trig_frequencies[:, None]
            split = self._trig_start + self._n_sin
            np.sin(trig[: self._n_sin], out=rows[self._trig_start : split])
            np.cos(trig[self._n_sin :], out=rows[split:])
        return rows
