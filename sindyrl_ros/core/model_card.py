"""The model card of a dynamics model: its JSON form, and a model rebuilt from one.

A :class:`~sindyrl_ros.core.dynamics.SindyDynamics` travels (``/sindyrl/model``) and is
saved (``models/model_<v>.json``) as a JSON document of format :data:`MODEL_FORMAT`: names,
library, coefficients, ensemble members, validation metrics and readable equations.
:func:`model_from_dict` checks every field of such a document before it becomes a model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from sindyrl_ros.core.dynamics_fit import EnsembleConfig
from sindyrl_ros.core.library import LibraryConfig, Term
from sindyrl_ros.core.serialization import FormatError, as_float_array, check_document, require

if TYPE_CHECKING:
    from sindyrl_ros.core.dynamics import SindyDynamics

__all__ = ['MODEL_FORMAT', 'MODEL_VERSION', 'model_from_dict', 'model_to_dict']

MODEL_FORMAT = 'sindyrl_ros/model'
MODEL_VERSION = 1


def model_to_dict(dynamics: SindyDynamics) -> dict[str, Any]:
    """JSON-ready model card: names, library, coefficients, members, metrics, equations."""
    return {
        'format': MODEL_FORMAT,
        'version': MODEL_VERSION,
        'model_version': int(dynamics.model_version),
        'observation_names': list(dynamics.observation_names),
        'action_names': list(dynamics.action_names),
        'dt': dynamics.dt,
        'angle_pairs': [list(pair) for pair in dynamics.angle_pairs],
        'action_low': None if dynamics.action_low is None else dynamics.action_low.tolist(),
        'action_high': None if dynamics.action_high is None else dynamics.action_high.tolist(),
        'saturation': {name: list(limits) for name, limits in dynamics.saturation.items()},
        'library': dynamics.library.to_dict(),
        'ensemble': dynamics.ensemble.to_dict(),
        'terms': [
            {
                'powers': list(term.powers),
                'trig': None if term.trig is None else list(term.trig),
            }
            for term in dynamics.terms
        ],
        'feature_names': dynamics.feature_names(),
        'coefficients': dynamics.coefficients.tolist(),
        'member_coefficients': dynamics.member_coefficients.tolist(),
        'observation_scale': dynamics.observation_scale.tolist(),
        'n_nonzero': dynamics.n_nonzero,
        'equations': dynamics.equations(),
        'validation': dynamics.validation,
        'fit_info': dict(dynamics.fit_info),
    }


def model_from_dict(
    model_type: type[SindyDynamics], doc: dict[str, Any], where: str = 'model'
) -> SindyDynamics:
    """Rebuild a model from :func:`model_to_dict` output, validating every field.

    Parameters
    ----------
    model_type : type
        :class:`~sindyrl_ros.core.dynamics.SindyDynamics` or a subclass: what is built.
    doc : dict
        The model card.
    where : str
        Where the card came from (a file path), to start error messages with.

    Returns
    -------
    SindyDynamics

    Raises
    ------
    FormatError
        Naming the field that is missing, mistyped, non-finite or of the wrong
        shape.
    """
    check_document(doc, MODEL_FORMAT, {MODEL_VERSION}, where)
    observation_names = _names(
        require(doc, 'observation_names', list, where), where, 'observation_names'
    )
    action_names = _names(require(doc, 'action_names', list, where), where, 'action_names')
    n, m = len(observation_names), len(action_names)
    dt = require(doc, 'dt', float, where)
    angle_pairs_doc = require(doc, 'angle_pairs', list, where)
    try:
        library = LibraryConfig.from_dict(require(doc, 'library', dict, where))
    except (TypeError, ValueError) as error:
        raise FormatError(f'{where}.library: {error}') from None
    try:
        ensemble = EnsembleConfig.from_dict(require(doc, 'ensemble', dict, where))
    except (TypeError, ValueError) as error:
        raise FormatError(f'{where}.ensemble: {error}') from None
    angle_pairs = []
    for index, pair in enumerate(angle_pairs_doc):
        if (
            not isinstance(pair, list)
            or len(pair) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair)
        ):
            raise FormatError(f'{where}.angle_pairs[{index}]: expected [cos index, sin index]')
        angle_pairs.append((pair[0], pair[1]))
    limits = {}
    saturation_doc = doc.get('saturation') or {}
    if not isinstance(saturation_doc, dict):
        raise FormatError(f'{where}.saturation: expected an object')
    saturation = {
        name: tuple(as_float_array(value, (2,), f'{where}.saturation.{name}'))
        for name, value in saturation_doc.items()
    }
    for key in ('action_low', 'action_high'):
        value = doc.get(key)
        limits[key] = None if value is None else as_float_array(value, (m,), f'{where}.{key}')
    try:
        model = model_type(
            observation_names,
            action_names,
            dt,
            angle_pairs=angle_pairs,
            library=library,
            ensemble=ensemble,
            action_low=limits['action_low'],
            action_high=limits['action_high'],
            saturation=saturation,
        )
    except ValueError as error:
        raise FormatError(f'{where}: {error}') from None
    terms = _terms_from_doc(require(doc, 'terms', list, where), n + m, where)
    if terms != model.terms:
        raise FormatError(
            f'{where}.terms: stored library terms do not match the library configuration '
            f'({len(terms)} stored, {len(model.terms)} from the configuration)'
        )
    n_terms = len(terms)
    model.coefficients = as_float_array(
        require(doc, 'coefficients', list, where), (n, n_terms), f'{where}.coefficients'
    )
    members = require(doc, 'member_coefficients', list, where)
    if members:
        model.member_coefficients = as_float_array(
            members, (None, n, n_terms), f'{where}.member_coefficients'
        )
    scale = as_float_array(
        require(doc, 'observation_scale', list, where), (n,), f'{where}.observation_scale'
    )
    if np.any(scale <= 0):
        raise FormatError(f'{where}.observation_scale: values must be positive')
    model.observation_scale = scale
    model.model_version = require(doc, 'model_version', int, where)
    validation = doc.get('validation')
    if validation is not None and not isinstance(validation, dict):
        raise FormatError(f'{where}.validation: expected an object or null')
    model.validation = validation
    fit_info = doc.get('fit_info', {})
    model.fit_info = fit_info if isinstance(fit_info, dict) else {}
    model._prepare_evaluation()
    return model


def _names(values: list, where: str, key: str) -> list[str]:
    if not values or not all(isinstance(v, str) and v for v in values):
        raise FormatError(f'{where}.{key}: expected a non-empty list of non-empty strings')
    return values


def _terms_from_doc(values: list, n_inputs: int, where: str) -> list[Term]:
    terms = []
    for index, entry in enumerate(values):
        at = f'{where}.terms[{index}]'
        powers = require(entry, 'powers', list, at)
        if len(powers) != n_inputs or not all(
            isinstance(p, int) and not isinstance(p, bool) and p >= 0 for p in powers
        ):
            raise FormatError(f'{at}.powers: expected {n_inputs} non-negative integers')
        trig = entry.get('trig')
        if trig is not None:
            if (
                not isinstance(trig, list)
                or len(trig) != 3
                or not isinstance(trig[0], int)
                or not 0 <= trig[0] < n_inputs
                or not isinstance(trig[1], int)
                or trig[1] < 1
                or trig[2] not in ('sin', 'cos')
            ):
                raise FormatError(f"{at}.trig: expected [input index, frequency, 'sin'|'cos']")
            trig = (trig[0], trig[1], trig[2])
        terms.append(Term(tuple(powers), trig))
    return terms
