"""Observation features from joint states, IMU and odometry, without ROS.

Each observation feature is a small spec, one per ``observation_names`` entry::

    cos(pendulum_joint.position)   sin(hinge.position)   wrap(hinge.position)
    slider.position                hinge.velocity        wheel.effort
    imu.roll  imu.pitch  imu.yaw  imu.angular_velocity_x|y|z  imu.linear_acceleration_x|y|z
    odom.x  odom.y  odom.yaw  odom.vx  odom.vy  odom.wz

Specs are parsed by a regular expression (never evaluated). Joints are matched **by
name**: the order of a joint-state message does not matter. :class:`ObservationFeatures`
is what the sensor ingestion node (``nodes/sensor_ingestion.py``) computes per message;
each check returns a reject reason and a detail (the node counts and logs them) instead of
raising, so a malformed message is refused and never forwarded.
"""

from __future__ import annotations

from collections.abc import Sequence
import math
import re

import numpy as np
from transforms3d.euler import quat2euler

__all__ = [
    'FUNCTIONS',
    'IMU_FIELDS',
    'JOINT_FIELDS',
    'ODOMETRY_FIELDS',
    'ObservationFeatures',
    'check_orientation',
    'imu_values',
    'odometry_values',
    'parse_feature',
]

JOINT_FIELDS = ('position', 'velocity', 'effort')
IMU_FIELDS = (
    'roll',
    'pitch',
    'yaw',
    'angular_velocity_x',
    'angular_velocity_y',
    'angular_velocity_z',
    'linear_acceleration_x',
    'linear_acceleration_y',
    'linear_acceleration_z',
)
ODOMETRY_FIELDS = ('x', 'y', 'yaw', 'vx', 'vy', 'wz')
FUNCTIONS = {
    '': lambda x: x,
    'cos': math.cos,
    'sin': math.sin,
    'wrap': lambda x: math.atan2(math.sin(x), math.cos(x)),  # angle to [-pi, pi]
}
_FEATURE = re.compile(
    r'^\s*(?:(?P<function>[a-z]+)\s*\(\s*(?P<inner>[^()\s]+)\s*\)|(?P<plain>[^()\s]+))\s*$'
)


def parse_feature(spec: str) -> tuple[str, str, str, str]:
    """Split a feature spec into (function, source kind, name, field).

    ``source kind`` is ``'joint'``, ``'imu'`` or ``'odom'``.

    Raises
    ------
    ValueError
        Naming what is wrong in the spec and the allowed forms.
    """
    match = _FEATURE.match(spec)
    if match is None:
        raise ValueError(f'{spec!r} is not of the form <name>.<field> or f(<name>.<field>)')
    function = match.group('function') or ''
    if function not in FUNCTIONS:
        raise ValueError(f'{spec!r}: unknown function {function!r}; use cos, sin or wrap')
    source = match.group('inner') or match.group('plain')
    if '.' not in source:
        raise ValueError(f'{spec!r}: {source!r} lacks a field (e.g. {source}.position)')
    name, field = source.rsplit('.', 1)
    if field in JOINT_FIELDS and name:
        return function, 'joint', name, field
    if name == 'imu' and field in IMU_FIELDS:
        return function, 'imu', name, field
    if name == 'odom' and field in ODOMETRY_FIELDS:
        return function, 'odom', name, field
    raise ValueError(
        f'{spec!r}: unknown field {field!r}; joints have {JOINT_FIELDS}, imu has '
        f'{IMU_FIELDS}, odom has {ODOMETRY_FIELDS}'
    )


class ObservationFeatures:
    """The compiled feature specs: joint values read by name, IMU/odometry fused in.

    Parameters
    ----------
    specs : sequence of str
        One feature spec per observation name.
    use_imu, use_odometry : bool
        Whether the node subscribes to those inputs (a spec that needs one otherwise
        raises).

    Raises
    ------
    ValueError
        For a spec that does not parse or needs an input that is off.
    """

    def __init__(self, specs: Sequence[str], use_imu: bool, use_odometry: bool) -> None:
        self.joint_sources: list[tuple[str, str]] = []  # (joint name, field), unique
        self._features: list[tuple] = []
        for spec in specs:
            function, kind, name, field = parse_feature(spec)
            if kind == 'joint':
                if (name, field) not in self.joint_sources:
                    self.joint_sources.append((name, field))
                index = self.joint_sources.index((name, field))
            elif kind == 'imu':
                if not use_imu:
                    raise ValueError(f'{spec!r} needs use_imu: true')
                index = IMU_FIELDS.index(field)
            else:
                if not use_odometry:
                    raise ValueError(f'{spec!r} needs use_odometry: true')
                index = ODOMETRY_FIELDS.index(field)
            self._features.append((FUNCTIONS[function], kind, index))
        self.joints = sorted({name for name, _ in self.joint_sources})
        self.fields = sorted({field for _, field in self.joint_sources})
        self.needs = {
            'imu': any(kind == 'imu' for _, kind, _ in self._features),
            'odometry': any(kind == 'odom' for _, kind, _ in self._features),
        }
        # Preallocated: a message fills these in place.
        self.raw = np.zeros(len(self.joint_sources))
        self.imu = np.zeros(len(IMU_FIELDS))
        self.odometry = np.zeros(len(ODOMETRY_FIELDS))
        self.observation = np.zeros(len(self._features))

    def check_structure(
        self, names: Sequence[str], fields: dict[str, Sequence[float]], allow_extra: bool
    ) -> tuple[dict[str, int] | None, str, str]:
        """Name -> index in the message, or ``(None, reason, detail)`` for a malformed one.

        ``fields`` maps each of :data:`JOINT_FIELDS` to the message's values.
        """
        names = list(names)
        for field in JOINT_FIELDS:
            length = len(fields[field])
            if length and length != len(names):
                return None, 'length_mismatch', f'{len(names)} names but {length} {field} values'
        for field in self.fields:
            if not len(fields[field]):
                return None, 'missing_field', f'no {field} values'
        index = {name: i for i, name in enumerate(names)}
        if len(index) != len(names):
            return None, 'duplicate_joint', f'names {names} repeat a name'
        missing = [name for name in self.joints if name not in index]
        if missing:
            return None, 'missing_joint', f'joints {missing} missing (message has {names})'
        if not allow_extra:
            unknown = [name for name in names if name not in self.joints]
            if unknown:
                return None, 'unknown_joint', f'unknown joints {unknown} (expected {self.joints})'
        return index, '', ''

    def read_joints(self, fields: dict[str, Sequence[float]], index: dict[str, int]) -> str:
        """Fill :attr:`raw` from the message; the non-finite sources named, or ''."""
        raw = self.raw
        for k, (name, field) in enumerate(self.joint_sources):
            raw[k] = fields[field][index[name]]
        if np.all(np.isfinite(raw)):
            return ''
        bad = [
            f'{n}.{f}'
            for (n, f), v in zip(self.joint_sources, raw, strict=True)
            if not math.isfinite(v)
        ]
        return f'non-finite {bad}'

    def fuse(
        self,
        stamp_ns: int,
        source_stamps: dict[str, int | None],
        max_age: float,
        max_future: float,
    ) -> tuple[str, str]:
        """Compute :attr:`observation`; or a reject (reason, detail) for an unfit input.

        Unfit: a needed IMU/odometry value none received yet (``missing_<input>``), more
        than ``max_age`` older (``stale_<input>``) or more than ``max_future`` newer
        (``future_<input>``) than the joint states, so nothing stale or from the future is
        fused. ``max_age`` / ``max_future`` of 0 turn that check off.
        """
        for label in ('imu', 'odometry'):
            if not self.needs[label]:
                continue
            source_stamp = source_stamps.get(label)
            if source_stamp is None:
                return f'missing_{label}', f'no {label} received yet'
            if max_age > 0.0 and (stamp_ns - source_stamp) * 1e-9 > max_age:
                return (
                    f'stale_{label}',
                    f'latest {label} is {(stamp_ns - source_stamp) * 1e-9:.3f} s older '
                    f'(max_age {max_age} s)',
                )
            if max_future > 0.0 and (source_stamp - stamp_ns) * 1e-9 > max_future:
                return (
                    f'future_{label}',
                    f'latest {label} is {(source_stamp - stamp_ns) * 1e-9:.3f} s newer '
                    f'(max_future {max_future} s)',
                )
        sources = {'joint': self.raw, 'imu': self.imu, 'odom': self.odometry}
        for k, (function, kind, index) in enumerate(self._features):
            self.observation[k] = function(sources[kind][index])
        return '', ''


def check_orientation(values: Sequence[float], quaternion: Sequence[float]) -> tuple[str, str]:
    """``('nonfinite' | 'quaternion', detail)`` for an unfit IMU/odometry message, or ``''``."""
    if not all(math.isfinite(v) for v in [*values, *quaternion]):
        return 'nonfinite', 'non-finite values'
    if abs(math.sqrt(sum(q * q for q in quaternion)) - 1.0) > 1e-2:
        return 'quaternion', f'orientation {list(quaternion)} is not a unit quaternion'
    return '', ''


def imu_values(quaternion: Sequence[float], rates: Sequence[float]) -> tuple[float, ...]:
    """IMU fields (:data:`IMU_FIELDS`) from a (w, x, y, z) quaternion and the six rates."""
    roll, pitch, yaw = quat2euler(quaternion, axes='sxyz')
    return (roll, pitch, yaw, *rates)


def odometry_values(
    quaternion: Sequence[float], x: float, y: float, vx: float, vy: float, wz: float
) -> tuple[float, ...]:
    """Odometry fields (:data:`ODOMETRY_FIELDS`): the planar pose and twist."""
    yaw = quat2euler(quaternion, axes='sxyz')[2]
    return (x, y, yaw, vx, vy, wz)
