"""JSON documents for models and policies, validated field by field on load.

Models and policies travel between processes and machines (ROS topics, files on a
robot's disk), so they are plain JSON with a ``format`` string and a ``version``
integer instead of pickles: a pickle can execute code on load and breaks silently
between library versions. Every reader checks what it reads and raises
:class:`FormatError` naming the file and the field at fault, so a corrupt, truncated
or mismatched file is refused instead of producing a half-working model.

Parsing is total: whatever bytes arrive (a topic anyone on the network can publish on, a
file an operator points at), the answer is a document or a :class:`FormatError`, never
another exception, because a controller that dies on a message is restarted into the
same latched message and dies again. So, before :func:`json.loads` runs, the text is
capped at :data:`MAX_DOCUMENT_BYTES`, must be UTF-8 and may nest at most
:data:`MAX_NESTING_DEPTH` levels (deeper JSON raises ``RecursionError`` in the parser);
integers longer than :data:`MAX_INTEGER_DIGITS` digits (which overflow a float, or hit
Python's 4,300-digit conversion limit) and ``NaN``/``Infinity``/overflowing literals
are refused naming the field that holds them. Files are read only if they are regular
files (never ``/dev/zero``, a FIFO, a directory or a serial port), at most the cap.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
import re
import stat
import tempfile
from typing import Any

import numpy as np

__all__ = [
    'MAX_DOCUMENT_BYTES',
    'MAX_INTEGER_DIGITS',
    'MAX_NESTING_DEPTH',
    'FormatError',
    'as_float_array',
    'check_document',
    'document_from_json',
    'load_json_document',
    'parse_json_text',
    'read_document_file',
    'require',
    'save_json_document',
]


MAX_DOCUMENT_BYTES = 8 * 1024 * 1024
"""Largest policy/model/reward JSON document, as a message or a file, in bytes (8 MiB).

Generous: a 256x256x2 MLP policy is about 1.5 MB of JSON and a model card tens of kB. The
cap is checked before parsing, so a 1 GB message or ``/dev/zero`` costs nothing.
"""

MAX_NESTING_DEPTH = 32
"""Deepest nesting of arrays/objects accepted; real documents nest fewer than 8 levels."""

MAX_INTEGER_DIGITS = 300
"""Longest integer literal accepted: every shorter one converts to a finite float."""

_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_SURROGATE_ESCAPE = re.compile(r'\\u[dD][89a-fA-F]')
_MESSAGE_CHARACTERS = 400  # longest quoted excerpt of an offending input in an error


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
    except (TypeError, ValueError, OverflowError) as error:
        # OverflowError: a Python int beyond float range (JSON input is capped before).
        raise FormatError(
            f'{where}: not a rectangular numeric array ({_excerpt(str(error))})'
        ) from None
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


def _excerpt(text: str) -> str:
    """``text`` cut to a readable length: error messages quote inputs, not megabytes."""
    if len(text) <= _MESSAGE_CHARACTERS:
        return text
    return f'{text[:_MESSAGE_CHARACTERS]}... ({len(text)} characters)'


def _nesting_depth(text: str) -> int:
    """How deep arrays/objects nest in JSON ``text``, found without recursion.

    Brackets inside strings do not count, so strings are removed first; what remains is
    a running sum over the brackets (numpy, so a few MiB take milliseconds).
    """
    skeleton = _JSON_STRING.sub('""', text).encode('utf-8', 'surrogatepass')
    codes = np.frombuffer(skeleton, dtype=np.uint8)
    opening = (codes == ord('[')) | (codes == ord('{'))
    closing = (codes == ord(']')) | (codes == ord('}'))
    brackets = np.flatnonzero(opening | closing)
    if brackets.size == 0:
        return 0
    steps = np.where(opening[brackets], 1, -1).astype(np.int64)
    return int(np.cumsum(steps).max())


def _first_non_finite(document: Any) -> str | None:
    """Field path (``layers[0].bias[2]``) of the first NaN/Inf float in ``document``.

    Iterative, so it cannot recurse; called only when the parser saw such a literal.
    """
    stack: list[tuple[Any, str]] = [(document, '')]
    while stack:
        value, path = stack.pop()
        if isinstance(value, float) and not math.isfinite(value):
            return path
        if isinstance(value, dict):
            items = [(v, f'{path}.{k}' if path else str(k)) for k, v in value.items()]
        elif isinstance(value, list):
            items = [(v, f'{path}[{i}]') for i, v in enumerate(value)]
        else:
            continue
        stack.extend(reversed(items))  # document order: the first offender is reported
    return None


def parse_json_text(text: Any, where: str) -> Any:
    """Parse JSON ``text`` (str or UTF-8 bytes) within the caps; never raises but FormatError.

    Parameters
    ----------
    text : str or bytes
        The JSON text (a ROS message payload, a file's bytes).
    where : str
        Location for error messages (a file path or ``'<message>'``).

    Returns
    -------
    Any
        The parsed value; every float in it is finite, every integer has at most
        :data:`MAX_INTEGER_DIGITS` digits and every string is valid Unicode.

    Raises
    ------
    FormatError
        Over :data:`MAX_DOCUMENT_BYTES`, not UTF-8, nested deeper than
        :data:`MAX_NESTING_DEPTH`, not JSON, or holding NaN, Infinity, a number that
        overflows a float or a string with an unpaired surrogate; the message names
        the field where one can be named.
    """
    if isinstance(text, (bytes, bytearray, memoryview)):
        if len(text) > MAX_DOCUMENT_BYTES:
            raise FormatError(
                f'{where}: {len(text)} bytes, larger than the {MAX_DOCUMENT_BYTES}-byte cap '
                'on a JSON document'
            )
        try:
            text = bytes(text).decode('utf-8')
        except UnicodeDecodeError as error:
            raise FormatError(
                f'{where}: not valid JSON: not UTF-8 text (byte {error.start}: {error.reason})'
            ) from None
    elif not isinstance(text, str):
        raise FormatError(f'{where}: expected JSON text, got {type(text).__name__}')
    # A character is at least one byte: count characters first, bytes only when it may fit.
    if len(text) > MAX_DOCUMENT_BYTES or (
        len(text) * 4 > MAX_DOCUMENT_BYTES
        and len(text.encode('utf-8', 'surrogatepass')) > MAX_DOCUMENT_BYTES
    ):
        raise FormatError(
            f'{where}: {len(text)} characters, larger than the {MAX_DOCUMENT_BYTES}-byte cap '
            'on a JSON document'
        )
    depth = _nesting_depth(text)
    if depth > MAX_NESTING_DEPTH:
        raise FormatError(
            f'{where}: arrays/objects nested {depth} deep, more than {MAX_NESTING_DEPTH}'
        )

    problems: list[str] = []  # why each non-finite number is non-finite, in document order

    def parse_int(literal: str) -> int | float:
        digits = len(literal.lstrip('-'))
        if digits > MAX_INTEGER_DIGITS:
            problems.append(
                f'integer {literal[:12]}... has {digits} digits (at most {MAX_INTEGER_DIGITS})'
            )
            return math.inf
        return int(literal)

    def parse_float(literal: str) -> float:
        value = float(literal)
        if not math.isfinite(value):
            problems.append(f'number {_excerpt(literal)} overflows a float')
        return value

    def parse_constant(literal: str) -> float:
        problems.append(f'{literal} is not a JSON number')
        return float(literal)

    try:
        document = json.loads(
            text, parse_int=parse_int, parse_float=parse_float, parse_constant=parse_constant
        )
    except json.JSONDecodeError as error:
        raise FormatError(f'{where}: not valid JSON (corrupt or truncated?): {error}') from None
    except (RecursionError, ValueError, MemoryError) as error:
        # Should not happen after the checks above; refused all the same.
        raise FormatError(f'{where}: not usable JSON ({type(error).__name__})') from None
    if problems:
        path = _first_non_finite(document)
        raise FormatError(f'{where}.{path}: {problems[0]}' if path else f'{where}: {problems[0]}')
    if _SURROGATE_ESCAPE.search(text):
        # An escaped lone surrogate parses, then breaks whoever encodes the string
        # (a ROS message, a log line). Checked only when such an escape is present.
        try:
            json.dumps(document, ensure_ascii=False).encode('utf-8')
        except UnicodeEncodeError:
            raise FormatError(f'{where}: a string holds an unpaired UTF-16 surrogate') from None
    return document


def document_from_json(
    text: str | bytes, expected_format: str, supported_versions: set[int], where: str
) -> dict:
    """Parse JSON text (e.g. a ROS message payload) and check format and version.

    Raises
    ------
    FormatError
        On malformed/truncated/oversized JSON (see :func:`parse_json_text`) or a
        format/version mismatch.
    """
    doc = parse_json_text(text, where)
    return check_document(doc, expected_format, supported_versions, where)


def _file_kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, 'a directory'),
        (stat.S_ISFIFO, 'a FIFO'),
        (stat.S_ISCHR, 'a character device'),
        (stat.S_ISBLK, 'a block device'),
        (stat.S_ISSOCK, 'a socket'),
    ):
        if test(mode):
            return name
    return 'not a regular file'


def read_document_file(path: str | os.PathLike, limit: int = MAX_DOCUMENT_BYTES) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes.

    Refuses anything else before reading: ``/dev/zero`` would be read until memory runs
    out, a FIFO blocks until a writer comes, and opening a serial port can reset the
    microcontroller behind it. The type is checked before opening and again on the
    opened descriptor (a path can be swapped in between); the open is non-blocking, and
    at most ``limit + 1`` bytes are read whatever the file claims its size is.

    Raises
    ------
    FileNotFoundError
        If there is no such file (callers tell "no model yet" from "bad model").
    FormatError
        Not a regular file, larger than ``limit``, or unreadable; names the path.
    """
    try:
        kind = os.stat(path).st_mode
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as error:  # ValueError: a NUL in the path
        raise FormatError(f'{path}: cannot read file: {error}') from None
    if not stat.S_ISREG(kind):
        raise FormatError(f'{path}: {_file_kind(kind)}, not a regular file')
    flags = os.O_RDONLY | getattr(os, 'O_NONBLOCK', 0) | getattr(os, 'O_NOCTTY', 0)
    try:
        fd = os.open(path, flags | getattr(os, 'O_CLOEXEC', 0))
    except FileNotFoundError:
        raise
    except OSError as error:
        raise FormatError(f'{path}: cannot read file: {error.strerror or error}') from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise FormatError(f'{path}: {_file_kind(info.st_mode)}, not a regular file')
        if info.st_size > limit:
            raise FormatError(
                f'{path}: {info.st_size} bytes, larger than the {limit}-byte cap on a '
                'JSON document'
            )
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, min(limit + 1 - size, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise FormatError(f'{path}: larger than the {limit}-byte cap on a JSON document')
        return b''.join(chunks)
    except OSError as error:
        raise FormatError(f'{path}: cannot read file: {error.strerror or error}') from None
    finally:
        os.close(fd)


def load_json_document(
    path: str | os.PathLike, expected_format: str, supported_versions: set[int]
) -> dict:
    """Read a JSON document from disk and check its format and version.

    Parameters
    ----------
    path : path-like
        File to read: a regular file of at most :data:`MAX_DOCUMENT_BYTES`.
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
        If the file is not a regular file, is too large, cannot be read, is not valid
        JSON, or has the wrong format or version. ``FileNotFoundError`` is left as is so
        callers can tell "no model yet" from "bad model".
    """
    raw = read_document_file(path)
    return document_from_json(raw, expected_format, supported_versions, str(Path(path)))


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


def highest_version(directory: Path, prefix: str) -> int:
    """The largest version of the files ``<prefix><version>.json`` in ``directory``, or 0."""
    versions = [0]
    for path in Path(directory).glob(f'{prefix}*.json'):
        suffix = path.stem[len(prefix) :]
        if suffix.isdigit():
            versions.append(int(suffix))
    return max(versions)


def json_safe(value: Any) -> Any:
    """Metrics with NaN/inf replaced by None (JSON has no NaN) and numpy scalars as Python."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value
