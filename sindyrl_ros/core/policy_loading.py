"""Reading policy documents: validated policies or a refusal that says what is wrong.

:func:`policy_from_dict`, :func:`policy_from_json` and :func:`load_policy` turn a
``sindyrl_ros/policy`` document (see :mod:`sindyrl_ros.core.policies`) into an
:class:`~sindyrl_ros.core.policies.MLPPolicy` or a
:class:`~sindyrl_ros.core.policies.SparsePolynomialPolicy`.  They are total: whatever a file
or a ``/sindyrl/policy`` message holds, the result is a policy or a :class:`FormatError`
naming the field, so a controller can refuse it and keep running.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sindyrl_ros.core.policies import (
    POLICY_FORMAT,
    SUPPORTED_POLICY_VERSIONS,
    MLPPolicy,
    NumpyPolicy,
    SparsePolynomialPolicy,
    check_names,
)
from sindyrl_ros.core.serialization import (
    FormatError,
    as_float_array,
    check_document,
    document_from_json,
    load_json_document,
    require,
)

__all__ = ['policy_from_dict', 'policy_from_json', 'load_policy']


def _check_expected_names(
    names: tuple[str, ...], expected: Sequence[str] | None, where: str
) -> None:
    """Refuse a policy whose signal names differ from what the robot provides."""
    if expected is not None and tuple(expected) != tuple(names):
        raise FormatError(f'{where}: policy has {list(names)}, expected {list(expected)}')


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
    observation_names = check_names(
        require(document, 'observation_names', list, where), None, f'{where}.observation_names'
    )
    action_names = check_names(
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
