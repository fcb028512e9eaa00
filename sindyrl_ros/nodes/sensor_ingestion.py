"""Sensor ingestion: joint states (+ optional IMU and odometry) -> the observation vector.

Each observation feature is configured by a small spec, one per ``observation_names``
entry (``observation_features``), e.g. ``cos(hinge.position)``, ``slider.velocity``,
``imu.pitch``, ``odom.vx`` (the forms and the rules: :mod:`sindyrl_ros.core.features`).
Joints are matched **by name**; joints no feature uses are ignored (unless
``allow_extra_joints`` is false).

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

import sys

from builtin_interfaces.msg import Time as TimeMsg
from nav_msgs.msg import Odometry
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from sensor_msgs.msg import Imu, JointState

from sindyrl_ros.core.features import (
    ObservationFeatures,
    check_orientation,
    imu_values,
    odometry_values,
)
from sindyrl_ros.core.stamps import StampWindow, describe_stamp
from sindyrl_ros.params.sensor_ingestion import PARAMETERS
from sindyrl_ros.ros.diagnostics import Diagnostics, Waits
from sindyrl_ros.ros.messages import stamp_to_ns
from sindyrl_ros.ros.parameters import (
    check_parameter_files,
    configuration_error,
    declare_parameters,
)
from sindyrl_ros.ros.qos import RELIABLE_QOS, SENSOR_QOS
from sindyrl_ros.ros.runtime import run_node


def _fields(message: JointState) -> dict:
    return {'position': message.position, 'velocity': message.velocity, 'effort': message.effort}


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
        try:
            self.features = ObservationFeatures(
                p.observation_features, p.use_imu, p.use_odometry
            )
        except ValueError as error:
            raise configuration_error(self, 'observation_features', str(error)) from None
        self._last_raw = self.features.raw.copy()
        self._last_raw[:] = float('nan')
        # One stamp window per input: each has its own order reference.
        self._windows = {
            label: StampWindow(p.max_future, p.max_age)
            for label in ('joint_states', 'imu', 'odometry')
        }
        self._source_stamps: dict[str, int | None] = {'imu': None, 'odometry': None}
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

    # ------------------------------------------------------------------ joint states

    def _on_joint_states(self, message: JointState) -> None:
        if not self.diagnostics.counters['joint_states']:
            self.waits.stop(self._first_joint_state)
        self.diagnostics.increment('joint_states')
        stamp_ns = stamp_to_ns(message.header.stamp)
        where = f'{self._topics["joint_states"]} stamp {describe_stamp(stamp_ns)}'
        features = self.features
        fields = _fields(message)
        index, reason, detail = features.check_structure(
            message.name, fields, self.parameters.allow_extra_joints
        )
        if index is None:
            self.diagnostics.reject(reason, f'{where}: {detail}')
            return
        problem = features.read_joints(fields, index)
        if problem:
            self.diagnostics.reject('nonfinite', f'{where}: {problem}')
            return
        if not self._check_time(message.header.stamp, where):
            return
        p = self.parameters
        reason, detail = features.fuse(stamp_ns, self._source_stamps, p.max_age, p.max_future)
        if reason:
            self.diagnostics.reject(reason, f'{where}: {detail}')
            return
        self._windows['joint_states'].accept(stamp_ns)
        self._last_raw[:] = features.raw
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
            if (self.features.raw == self._last_raw).all():
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

    def _publish(self, joint_states: JointState) -> None:
        message = self._message
        message.header.stamp = joint_states.header.stamp
        message.header.frame_id = joint_states.header.frame_id
        message.position = self.features.observation.tolist()
        self._publisher.publish(message)
        self.diagnostics.increment('observations')

    # ------------------------------------------------------------------ IMU and odometry

    def _accept_source(
        self, label: str, stamp: TimeMsg, values: list[float], quaternion: list[float]
    ) -> bool:
        """Finite values, a unit quaternion and a stamp within the input's window."""
        stamp_ns = stamp_to_ns(stamp)
        where = f'{self._topics[label]} stamp {describe_stamp(stamp_ns)}'
        reason, detail = check_orientation(values, quaternion)
        if not reason:
            window = self._windows[label]
            verdict = window.check(stamp.sec, stamp.nanosec, self.get_clock().now().nanoseconds)
            reason, detail = (verdict.reason, verdict.detail) if verdict.refused else ('', '')
        if reason:
            self.diagnostics.reject(f'{label}_{reason}', f'{where}: {detail}')
            return False
        window.accept(stamp_ns)
        self._source_stamps[label] = stamp_ns
        return True

    def _on_imu(self, message: Imu) -> None:
        o, w, a = message.orientation, message.angular_velocity, message.linear_acceleration
        quaternion = [o.w, o.x, o.y, o.z]  # transforms3d order: w first
        rates = [w.x, w.y, w.z, a.x, a.y, a.z]
        if self._accept_source('imu', message.header.stamp, rates, quaternion):
            self.features.imu[:] = imu_values(quaternion, rates)

    def _on_odometry(self, message: Odometry) -> None:
        pose, twist = message.pose.pose, message.twist.twist
        o = pose.orientation
        quaternion = [o.w, o.x, o.y, o.z]
        x, y = pose.position.x, pose.position.y
        vx, vy, wz = twist.linear.x, twist.linear.y, twist.angular.z
        if self._accept_source('odometry', message.header.stamp, [x, y, vx, vy, wz], quaternion):
            self.features.odometry[:] = odometry_values(quaternion, x, y, vx, vy, wz)


def main(args: list[str] | None = None) -> int:
    return run_node(SensorIngestionNode, args, name='sensor_ingestion')


if __name__ == '__main__':
    sys.exit(main())
