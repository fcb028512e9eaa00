"""Message codecs of the topic contract: stamps, named vectors, commands."""

from __future__ import annotations

from collections.abc import Sequence
import math
from typing import Any

from builtin_interfaces.msg import Time as TimeMsg
import numpy as np
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray, MultiArrayDimension

__all__ = [
    'MessageError',
    'command_message',
    'command_stamp_ns',
    'ns_to_stamp',
    'read_vector',
    'stamp_to_ns',
    'vector_message',
]

class MessageError(Exception):
    """An incoming message that must not be used: ``reason`` (a counter key) and ``detail``."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f'{reason}: {detail}')
        self.reason = reason
        self.detail = detail


def stamp_to_ns(stamp: TimeMsg) -> int:
    """A message stamp as integer nanoseconds (exact, for comparisons and pairing)."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def ns_to_stamp(nanoseconds: int) -> TimeMsg:
    seconds, nanoseconds = divmod(int(nanoseconds), 1_000_000_000)
    return TimeMsg(sec=seconds, nanosec=nanoseconds)


def vector_message(
    names: Sequence[str], values: Any, stamp: TimeMsg, field: str = 'position'
) -> JointState:
    """A named, stamped vector as a JointState (the /sindyrl/observation and action format).

    Parameters
    ----------
    names : sequence of str, length k
    values : array_like, shape (k,)
    stamp : builtin_interfaces/Time
        Measurement time of the observation (or of the observation an action answers).
    field : {'position', 'velocity', 'effort'}
    """
    message = JointState()
    message.header.stamp = stamp
    message.name = list(names)
    setattr(message, field, [float(v) for v in values])
    return message


def read_vector(
    message: JointState,
    expected_names: Sequence[str],
    field: str = 'position',
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Values of a named vector, ordered as ``expected_names`` (matched by name).

    Extra names are ignored; the message's order does not matter.

    Returns
    -------
    ndarray, shape (len(expected_names),)

    Raises
    ------
    MessageError
        ``length_mismatch``, ``duplicate_name``, ``missing_name`` or ``nonfinite``.
    """
    names = list(message.name)
    values = getattr(message, field)
    if len(values) != len(names):
        raise MessageError(
            'length_mismatch', f'{len(names)} names but {len(values)} {field} values'
        )
    if len(set(names)) != len(names):
        raise MessageError('duplicate_name', f'names {names} repeat a name')
    index = {name: i for i, name in enumerate(names)}
    if out is None:
        out = np.empty(len(expected_names))
    for k, name in enumerate(expected_names):
        i = index.get(name)
        if i is None:
            raise MessageError('missing_name', f'{name!r} not in {names}')
        out[k] = values[i]
    if not np.all(np.isfinite(out)):
        bad = [n for n, v in zip(expected_names, out, strict=True) if not math.isfinite(v)]
        raise MessageError('nonfinite', f'non-finite {field} of {bad}')
    return out


# Commands carry the stamp of the observation they answer in the first dimension's label
# ('stamp_ns=<int>'), so a lockstep plant can tell a late command from a fresh one.
# ros2_control's ForwardCommandController ignores the layout, so the topic stays compatible.
_STAMP_LABEL = 'stamp_ns='


def command_message(
    values: Any, stamp_ns: int | None = None, message: Float64MultiArray | None = None
) -> Float64MultiArray:
    """A command for /<controller>/commands, optionally tagged with the answered stamp.

    Parameters
    ----------
    values : array_like, shape (m,)
    stamp_ns : int, optional
        Stamp of the observation this command answers.
    message : Float64MultiArray, optional
        A message to fill instead of a new one (the controller reuses one per tick).
    """
    if message is None:
        message = Float64MultiArray()
    message.data = (
        values.tolist() if isinstance(values, np.ndarray) else [float(v) for v in values]
    )
    if stamp_ns is None:
        message.layout.dim = []
    else:
        size = len(message.data)
        label = f'{_STAMP_LABEL}{int(stamp_ns)}'
        if len(message.layout.dim) == 1:
            dimension = message.layout.dim[0]
            dimension.label, dimension.size, dimension.stride = label, size, size
        else:
            message.layout.dim = [MultiArrayDimension(label=label, size=size, stride=size)]
    return message


def command_stamp_ns(message: Float64MultiArray) -> int | None:
    """The observation stamp a command answers, or None for an untagged command."""
    if message.layout.dim:
        label = message.layout.dim[0].label
        if label.startswith(_STAMP_LABEL):
            try:
                return int(label[len(_STAMP_LABEL) :])
            except ValueError:
                return None
    return None


# --------------------------------------------------------------------------- running
