"""JSON documents for models and policies, validated field by field on load.

Models and policies travel between processes and machines (ROS topics, files on a
robot's disk), so they are plain JSON with a ``format`` string and a ``version``
integer instead of pickles: a pickle can execute code on load and breaks silently
between library versions. Every reader checks what it reads and raises
:class:`FormatError` naming the file and the field at fault, so a corrupt, truncated
or mismatched file is refused instead of producing a half-working model.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
import tempfile
from typing import Any

import numpy as np

__all__ = [
    'FormatError',
    'as_float_array',
    'check_document',
    'document_from_json',
    'load_json_document',
    'require',
    'save_json_document',
]


class FormatError(ValueError):
    """A document is corrupt, truncated, of another format/version or has a bad field.

    The message names where the problem is (file path and/or field), so an operator
    can tell which file to replace.
    """


def _type_names(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return ' or '.join(k.__name__ for k in kinds)


def require(doc: dict, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    """Return ``doc[key]`` after checking that it exists and has the expected type.

    Parameters
    ----------
    doc : dict
        The (sub-)document to read.
    key : str
        Field name.
    kind : type or tuple of types
        Accepted Python types (``bool`` is never accepted where ``int``/``float`` is
        asked for, because JSON ``true`` is not a number).
    where : str
        Location used in the error message, e.g. ``'model.json: library'``.

    Raises
    ------
    FormatError
        If ``doc`` is not a dict, the key is missing or the type is wrong.
    """
    if not isinstance(doc, dict):
        raise FormatError(f'{where}: expected an object, got {type(doc).__name__}')
    if key not in doc:
        raise FormatError(f'{where}: missing field {key!r}')
    value = doc[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        raise FormatError(f'{where}.{key}: expected {_type_names(kind)}, got bool')
    if (
        float in kinds
        and int not in kinds
        and isinstance(value, int)
        and not isinstance(value, bool)
    ):
        # JSON writes 1.0 as 1.0 but humans write 1; both are numbers.
        return float(value)
    if not isinstance(value, kinds):
        raise FormatError(
            f'{where}.{key}: expected {_type_names(kind)}, got {type(value).__name__}'
        )
    if isinstance(value, float) and not math.isfinite(value):
        raise FormatError(f'{where}.{key}: value {value!r} is not finite')
    return value


def as_float_array(value: Any, shape: tuple[int | None, ...] | None, where: str) -> np.ndarray:
    """Convert a JSON (nested) list to a finite float64 array of the expected shape.

    Parameters
    ----------
    value : nested list of numbers
        The JSON value.
    shape : tuple of int or None, or None
        Expected shape; ``None`` entries match any length, ``shape=None`` accepts any
        shape.
    where : str
        Location used in error messages.

    Returns
    -------
    numpy.ndarray
        float64 array, shape ``shape``.

    Raises
    ------
    FormatError
        If the value is not a rectangular numeric array, has the wrong shape or
        holds NaN/Inf.
    """
    if isinstance(value, (str, bytes, dict)) or value is None:
        raise FormatError(f'{where}: expected a numeric array, got {type(value).__name__}')
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise FormatError(f'{where}: not a rectangular numeric array ({error})') from None
    if shape is not None:
        if array.ndim != len(shape) or any(
            expected is not None and expected != actual
            for expected, actual in zip(shape, array.shape)
        ):
            expected_text = '(' + ', '.join('*' if s is None else str(s) for s in shape) + ')'
            raise FormatError(f'{where}: expected shape {expected_text}, got {tuple(array.shape)}')
    if not np.all(np.isfinite(array)):
        raise FormatError(f'{where}: contains NaN or infinite values')
    return array


def check_document(
    doc: Any, expected_format: str, supported_versions: set[int], where: str
) -> dict:
    """Check that a parsed document is an object of the right format and version.

    Parameters
    ----------
    doc : Any
        Parsed JSON value.
    expected_format : str
        Required value of the ``format`` field, e.g. ``'sindyrl_ros/model'``.
    supported_versions : set of int
        Versions this reader understands.
    where : str
        Location for error messages (a file path or ``'<message>'``).

    Returns
    -------
    dict
        ``doc`` itself.
    """
    if not isinstance(doc, dict):
        raise FormatError(f'{where}: top level must be a JSON object, got {type(doc).__name__}')
    doc_format = require(doc, 'format', str, where)
    if doc_format != expected_format:
        raise FormatError(f'{where}.format: expected {expected_format!r}, got {doc_format!r}')
    version = require(doc, 'version', int, where)
    if version not in supported_versions:
        raise FormatError(
            f'{where}.version: unsupported version {version} '
            f'(this reader supports {sorted(supported_versions)})'
        )
    return doc


def document_from_json(
    text: str | bytes, expected_format: str, supported_versions: set[int], where: str
) -> dict:
    """Parse JSON text (e.g. a ROS message payload) and check format and version.

    Raises
    ------
    FormatError
        On malformed/truncated JSON or a format/version mismatch.
    """
    try:
        doc = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise FormatError(f'{where}: not valid JSON (corrupt or truncated?): {error}') from None
    return check_document(doc, expected_format, supported_versions, where)


def load_json_document(
    path: str | os.PathLike, expected_format: str, supported_versions: set[int]
) -> dict:
    """Read a JSON document from disk and check its format and version.

    Parameters
    ----------
    path : path-like
        File to read.
    expected_format : str
        Required ``format`` field.
    supported_versions : set of int
        Accepted ``version`` values.

    Returns
    -------
    dict
        The parsed document.

    Raises
    ------
    FormatError
        If the file cannot be read, is not valid JSON, or has the wrong format or
        version. ``FileNotFoundError`` is left as is so callers can tell "no model
        yet" from "bad model".
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise
    except OSError as error:
        raise FormatError(f'{path}: cannot read file: {error}') from None
    return document_from_json(raw, expected_format, supported_versions, str(path))


def save_json_document(path: str | os.PathLike, document: dict) -> None:
    """Write a JSON document atomically (temporary file + ``os.replace``).

    A reader (another node, a later run) therefore sees either the old or the new
    complete file, never a partially written one, even if this process is killed.

    Parameters
    ----------
    path : path-like
        Destination file; its directory must exist.
    document : dict
        JSON-serialisable object. NaN/Inf are refused (they are not JSON).
    """
    path = Path(path)
    text = json.dumps(document, allow_nan=False, indent=1)
    directory = path.parent if str(path.parent) else Path('.')
    fd, tmp_name = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=directory)
    try:
        with os.fdopen(fd, 'w', encoding='utf-8') as stream:
            stream.write(text)
            stream.write('\n')
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
