"""Sensor ingestion: joint states (+ optional IMU and odometry) -> the observation vector.

Each observation feature is configured by a small spec, one per ``observation_names``
entry (``observation_features``)::

    cos(pendulum_joint.position)   sin(hinge.position)   wrap(hinge.position)
    slider.position                hinge.velocity        wheel.effort
    imu.roll  imu.pitch  imu.yaw  imu.angular_velocity_x|y|z  imu.linear_acceleration_x|y|z
    odom.x  odom.y  odom.yaw  odom.vx  odom.vy  odom.wz

Specs are parsed by a regular expression (never evaluated). Joints are matched **by
name**: the order of ``/joint_states`` does not matter and joints no feature uses are
ignored (unless ``allow_extra_joints`` is false).

A ``/joint_states`` message drives one observation, stamped with the joint states' stamp;
the latest IMU / odometry values are fused in. A message that must not reach the model or
the controller is refused, counted in /diagnostics under ``rejected.<reason>`` and logged
(throttled), never forwarded:

``nonfinite``, ``length_mismatch`` (position/velocity/effort length != name length),
``missing_field`` (a needed field is empty), ``duplicate_joint``, ``missing_joint``,
``unknown_joint``, ``out_of_order`` (older than the last accepted), ``duplicate_stamp``
(same stamp, other values), ``stale`` (older than ``max_age`` by the node clock, which
follows /clock under ``use_sim_time``), ``future_stamp`` (ahead of the node clock by more
than ``max_future``), ``invalid_stamp`` (negative seconds, as a stamp past 2**31 - 1 s
wraps to, or nanoseconds of 10**9 or more), ``missing_imu`` / ``missing_odometry`` (none
received yet), ``stale_imu`` / ``stale_odometry`` (the latest one is more than ``max_age``
older than the joint states), ``future_imu`` / ``future_odometry`` (the latest one is more
than ``max_future`` newer than the joint states: after a clock step back, say), and for
the IMU / odometry messages themselves ``imu_nonfinite``, ``imu_quaternion``,
``imu_invalid_stamp``, ``imu_future_stamp``, ``imu_out_of_order``, ``imu_stale`` and the
same with ``odometry_``.

Every input has its own stamp window (:class:`sindyrl_ros.core.stamps.StampWindow`) with
the same rules: only an accepted stamp becomes the reference of its order check, so one
stamp an hour ahead is refused instead of locking every valid message out for that hour,
and the reference is dropped when the node clock goes back (counted once, as
``clock_steps_back``, when the joint states notice it). An IMU / odometry message with
the stamp of the last accepted one replaces its values.

The same joint-state stamp with the same values is a retransmission (a lockstep plant
re-publishes a state whose command never came): the observation is published again and
counted as ``retransmitted``, so a lost message cannot stall the loop.
"""

from __future__ import annotations

import math
import re
import sys

from builtin_interfaces.msg import Time as TimeMsg
from nav_msgs.msg import Odometry
import numpy as np
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from rclpy.parameter import Parameter
from sensor_msgs.msg import Imu, JointState
from transforms3d.euler import quat2euler

from sindyrl_ros.core.stamps import StampWindow, describe_stamp
from sindyrl_ros.nodes.common import (
    RELIABLE_QOS,
    SENSOR_QOS,
    SHARED_PARAMETERS,
    WAIT_REPORT_PARAMETER,
    Diagnostics,
    ParamSpec,
    Waits,
    check_parameter_files,
    configuration_error,
    declare_parameters,
    run_node,
    stamp_to_ns,
)

SENSOR_PARAMETERS = [
    ParamSpec(
        'observation_features',
        [],
        'One feature spec per observation name, e.g. '
        "'cos(pendulum_joint.position)', 'slider.velocity', 'imu.roll', 'odom.vx'",
        read_only=True,
        type=Parameter.Type.STRING_ARRAY,
    ),
    ParamSpec(
        'use_imu', False, 'Subscribe to imu (sensor_msgs/Imu) for imu.* features', read_only=True
    ),
    ParamSpec(
        'use_odometry',
        False,
        'Subscribe to odom (nav_msgs/Odometry) for odom.* features',
        read_only=True,
    ),
    ParamSpec(
        'allow_extra_joints',
        True,
        'Ignore joints no feature uses; false: refuse joint states that name unknown joints',
        read_only=True,
    ),
    ParamSpec(
        'max_age',
        0.5,
        'Seconds (node clock) after which a joint state, IMU or odometry message is stale, '
        'and by which the fused IMU / odometry may be older than the joint states; '
        '0 = no age check',
        range=(0.0, 3600.0),
    ),
    ParamSpec(
        'max_future',
        0.1,
        'Seconds a joint state, IMU or odometry stamp may be ahead of the node clock (clock '
        'offsets between machines, a message that overtakes its own /clock tick under '
        'use_sim_time), and by which the fused IMU / odometry may be newer than the joint '
        'states; a stamp further ahead is refused (future_stamp, imu_future_stamp, '
        'odometry_future_stamp) and never becomes the reference of the order check; '
        '0 = no future check',
        range=(0.0, 3600.0),
    ),
    ParamSpec(
        'diagnostics_period',
        1.0,
        'Seconds between /diagnostics messages',
        range=(0.01, 3600.0),
        read_only=True,
    ),
    WAIT_REPORT_PARAMETER,
]
# Everything this node declares (what a parameter file may set for it).
PARAMETERS = SHARED_PARAMETERS + SENSOR_PARAMETERS

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


class SensorIngestionNode(Node):
    """Turns raw robot measurements into the validated, stamped observation vector."""

    def __init__(self) -> None:
        super().__init__('sensor_ingestion')
        self.parameters = declare_parameters(self, PARAMETERS, on_change=self._on_parameter)
        check_parameter_files(self)
        p = self.parameters
        self.observation_names = list(p.observation_names)
        if not self.observation_names:
            raise configuration_error(self, 'observation_names', 'name the observation features')
        if len(p.observation_features) != len(self.observation_names):
            raise configuration_error(
                self,
                'observation_features',
                f'expected one spec per observation name '
                f'({len(self.observation_names)}), got {len(p.observation_features)}',
            )
        self._compile(p.observation_features)

        n = len(self.observation_names)
        self._raw = np.zeros(len(self._joint_sources))  # joint values the features read
        self._last_raw = np.full(len(self._joint_sources), np.nan)
        self._observation = np.zeros(n)
        # One stamp window per input: each has its own order reference.
        self._windows = {
            label: StampWindow(p.max_future, p.max_age)
            for label in ('joint_states', 'imu', 'odometry')
        }
        self._imu = np.zeros(len(IMU_FIELDS))
        self._imu_stamp_ns: int | None = None
        self._odometry = np.zeros(len(ODOMETRY_FIELDS))
        self._odometry_stamp_ns: int | None = None
        self._message = JointState(name=list(self.observation_names))

        self.diagnostics = Diagnostics(self, p.diagnostics_period)
        for key in ('joint_states', 'observations', 'retransmitted'):
            self.diagnostics.counters[key] = 0
        self.waits = Waits(self, self.diagnostics, p.wait_report)
        self.create_timer(1.0, self.waits.check, clock=Clock(clock_type=ClockType.STEADY_TIME))
        self._publisher = self.create_publisher(JointState, 'sindyrl/observation', RELIABLE_QOS)
        # Topic names after remapping, for the messages that say where a refusal came from.
        self._topics = {
            'joint_states': self.create_subscription(
                JointState, 'joint_states', self._on_joint_states, SENSOR_QOS
            ).topic_name
        }
        if p.use_imu:
            self._topics['imu'] = self.create_subscription(
                Imu, 'imu', self._on_imu, SENSOR_QOS
            ).topic_name
        if p.use_odometry:
            self._topics['odometry'] = self.create_subscription(
                Odometry, 'odom', self._on_odometry, SENSOR_QOS
            ).topic_name
        self._first_joint_state = f'the first joint state on {self._topics["joint_states"]}'
        self.waits.start(self._first_joint_state)
        self.get_logger().info(
            f'sensor ingestion ready: {dict(zip(self.observation_names, p.observation_features))}'
        )

    def _on_parameter(self, name: str, value) -> None:
        if name in ('max_future', 'max_age'):
            for window in self._windows.values():
                setattr(window, name, value)

    def _compile(self, specs: list[str]) -> None:
        """Feature specs -> (function, kind, index) with joint (name, field) pairs indexed."""
        p = self.parameters
        self._joint_sources: list[tuple[str, str]] = []  # (joint name, field), unique
        self._features: list[tuple] = []
        for spec in specs:
            try:
                function, kind, name, field = parse_feature(spec)
            except ValueError as error:
                raise configuration_error(self, 'observation_features', str(error)) from None
            if kind == 'joint':
                if (name, field) not in self._joint_sources:
                    self._joint_sources.append((name, field))
                index = self._joint_sources.index((name, field))
            elif kind == 'imu':
                if not p.use_imu:
                    raise configuration_error(
                        self, 'observation_features', f'{spec!r} needs use_imu: true'
                    )
                index = IMU_FIELDS.index(field)
            else:
                if not p.use_odometry:
                    raise configuration_error(
                        self, 'observation_features', f'{spec!r} needs use_odometry: true'
                    )
                index = ODOMETRY_FIELDS.index(field)
            self._features.append((FUNCTIONS[function], kind, index))
        self._joints = sorted({name for name, _ in self._joint_sources})
        self._fields = sorted({field for _, field in self._joint_sources})
        self._needs_imu = any(kind == 'imu' for _, kind, _ in self._features)
        self._needs_odometry = any(kind == 'odom' for _, kind, _ in self._features)

    # ------------------------------------------------------------------ joint states

    def _check_structure(self, message: JointState, where: str) -> dict[str, int] | None:
        """Name -> index in the message, or None after refusing a malformed message."""
        names = list(message.name)
        for field in JOINT_FIELDS:
            length = len(getattr(message, field))
            if length and length != len(names):
                self.diagnostics.reject(
                    'length_mismatch', f'{where}: {len(names)} names but {length} {field} values'
                )
                return None
        for field in self._fields:
            if not len(getattr(message, field)):
                self.diagnostics.reject('missing_field', f'{where}: no {field} values')
                return None
        index = {name: i for i, name in enumerate(names)}
        if len(index) != len(names):
            self.diagnostics.reject('duplicate_joint', f'{where}: names {names} repeat a name')
            return None
        missing = [name for name in self._joints if name not in index]
        if missing:
            self.diagnostics.reject(
                'missing_joint', f'{where}: joints {missing} missing (message has {names})'
            )
            return None
        if not self.parameters.allow_extra_joints:
            unknown = [name for name in names if name not in self._joints]
            if unknown:
                self.diagnostics.reject(
                    'unknown_joint', f'{where}: unknown joints {unknown} (expected {self._joints})'
                )
                return None
        return index

    def _on_joint_states(self, message: JointState) -> None:
        if not self.diagnostics.counters['joint_states']:
            self.waits.stop(self._first_joint_state)
        self.diagnostics.increment('joint_states')
        stamp_ns = stamp_to_ns(message.header.stamp)
        where = f'{self._topics["joint_states"]} stamp {describe_stamp(stamp_ns)}'
        index = self._check_structure(message, where)
        if index is None:
            return
        raw = self._raw
        for k, (name, field) in enumerate(self._joint_sources):
            raw[k] = getattr(message, field)[index[name]]
        if not np.all(np.isfinite(raw)):
            bad = [
                f'{n}.{f}'
                for (n, f), v in zip(self._joint_sources, raw, strict=True)
                if not math.isfinite(v)
            ]
            self.diagnostics.reject('nonfinite', f'{where}: non-finite {bad}')
            return
        if not self._check_time(message.header.stamp, where):
            return
        if not self._fuse(stamp_ns, where):
            return
        self._windows['joint_states'].accept(stamp_ns)
        self._last_raw[:] = raw
        self._publish(message)

    def _check_time(self, stamp: TimeMsg, where: str) -> bool:
        """The joint-state stamp window (see :mod:`sindyrl_ros.core.stamps`).

        A retransmission (same stamp, same values) is re-published here.
        """
        window = self._windows['joint_states']
        verdict = window.check(stamp.sec, stamp.nanosec, self.get_clock().now().nanoseconds)
        if window.clock_step_back_ns:
            # Every window drops its reference on its own; this one reports it, once a step.
            self.get_logger().warning(
                f'node clock went back {window.clock_step_back_ns * 1e-9:.3f} s: the order '
                'check starts again from the next accepted joint state'
            )
            self.diagnostics.increment('clock_steps_back')
        if verdict.repeated:
            if np.array_equal(self._raw, self._last_raw):
                self.diagnostics.increment('retransmitted')
                self._publisher.publish(self._message)
            else:
                self.diagnostics.reject(
                    'duplicate_stamp', f'{where}: same stamp as the last state, other values'
                )
            return False
        if verdict.refused:
            self.diagnostics.reject(verdict.reason, f'{where}: {verdict.detail}')
            return False
        return True

    def _fuse(self, stamp_ns: int, where: str) -> bool:
        """Compute the features; False (refused) when a needed IMU/odometry value is unfit.

        Unfit: none received yet, more than ``max_age`` older or more than ``max_future``
        newer than the joint states (so nothing stale or from the future is fused).
        """
        max_age, max_future = self.parameters.max_age, self.parameters.max_future
        for needed, source_stamp, label in (
            (self._needs_imu, self._imu_stamp_ns, 'imu'),
            (self._needs_odometry, self._odometry_stamp_ns, 'odometry'),
        ):
            if not needed:
                continue
            if source_stamp is None:
                self.diagnostics.reject(f'missing_{label}', f'{where}: no {label} received yet')
                return False
            if max_age > 0.0 and (stamp_ns - source_stamp) * 1e-9 > max_age:
                self.diagnostics.reject(
                    f'stale_{label}',
                    f'{where}: latest {label} is '
                    f'{(stamp_ns - source_stamp) * 1e-9:.3f} s older (max_age {max_age} s)',
                )
                return False
            if max_future > 0.0 and (source_stamp - stamp_ns) * 1e-9 > max_future:
                self.diagnostics.reject(
                    f'future_{label}',
                    f'{where}: latest {label} is {(source_stamp - stamp_ns) * 1e-9:.3f} s '
                    f'newer (max_future {max_future} s)',
                )
                return False
        sources = {'joint': self._raw, 'imu': self._imu, 'odom': self._odometry}
        for k, (function, kind, index) in enumerate(self._features):
            self._observation[k] = function(sources[kind][index])
        return True

    def _publish(self, joint_states: JointState) -> None:
        message = self._message
        message.header.stamp = joint_states.header.stamp
        message.header.frame_id = joint_states.header.frame_id
        message.position = self._observation.tolist()
        self._publisher.publish(message)
        self.diagnostics.increment('observations')

    # ------------------------------------------------------------------ IMU and odometry

    def _accept_source(
        self,
        label: str,
        stamp: TimeMsg,
        stamp_ns: int,
        values: list[float],
        quaternion: list[float],
    ) -> bool:
        """Finite values, a unit quaternion and a stamp within the input's window."""
        where = f'{self._topics[label]} stamp {describe_stamp(stamp_ns)}'
        if not all(math.isfinite(v) for v in values + quaternion):
            self.diagnostics.reject(f'{label}_nonfinite', f'{where}: non-finite values')
            return False
        if abs(math.sqrt(sum(q * q for q in quaternion)) - 1.0) > 1e-2:
            self.diagnostics.reject(
                f'{label}_quaternion',
                f'{where}: orientation {quaternion} is not a unit quaternion',
            )
            return False
        window = self._windows[label]
        verdict = window.check(stamp.sec, stamp.nanosec, self.get_clock().now().nanoseconds)
        if verdict.refused:
            self.diagnostics.reject(f'{label}_{verdict.reason}', f'{where}: {verdict.detail}')
            return False
        window.accept(stamp_ns)
        return True

    def _on_imu(self, message: Imu) -> None:
        stamp_ns = stamp_to_ns(message.header.stamp)
        o, w, a = message.orientation, message.angular_velocity, message.linear_acceleration
        quaternion = [o.w, o.x, o.y, o.z]  # transforms3d order: w first
        rates = [w.x, w.y, w.z, a.x, a.y, a.z]
        if not self._accept_source('imu', message.header.stamp, stamp_ns, rates, quaternion):
            return
        roll, pitch, yaw = quat2euler(quaternion, axes='sxyz')
        self._imu[:] = (roll, pitch, yaw, *rates)
        self._imu_stamp_ns = stamp_ns

    def _on_odometry(self, message: Odometry) -> None:
        stamp_ns = stamp_to_ns(message.header.stamp)
        pose, twist = message.pose.pose, message.twist.twist
        o = pose.orientation
        quaternion = [o.w, o.x, o.y, o.z]
        values = [
            pose.position.x,
            pose.position.y,
            twist.linear.x,
            twist.linear.y,
            twist.angular.z,
        ]
        if not self._accept_source('odometry', message.header.stamp, stamp_ns, values, quaternion):
            return
        yaw = quat2euler(quaternion, axes='sxyz')[2]
        x, y, vx, vy, wz = values
        self._odometry[:] = (x, y, yaw, vx, vy, wz)
        self._odometry_stamp_ns = stamp_ns


def main(args: list[str] | None = None) -> int:
    return run_node(SensorIngestionNode, args, name='sensor_ingestion')


if __name__ == '__main__':
    sys.exit(main())
