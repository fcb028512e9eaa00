"""Observation features from joint states, IMU and odometry (no ROS)."""

import math

import numpy as np
import pytest

from sindyrl_ros.core.features import (
    ObservationFeatures,
    check_orientation,
    imu_values,
    odometry_values,
)


def fields(position, velocity=(), effort=()):
    return {'position': list(position), 'velocity': list(velocity), 'effort': list(effort)}


def test_joints_are_read_by_name_in_any_order_and_functions_applied():
    features = ObservationFeatures(
        ['cos(hinge.position)', 'sin(hinge.position)', 'hinge.velocity', 'wrap(cart.position)'],
        use_imu=False,
        use_odometry=False,
    )
    message = fields(position=[7.0, 0.5], velocity=[0.0, -2.0])
    index, reason, _ = features.check_structure(['cart', 'hinge'], message, allow_extra=False)
    assert reason == '' and index == {'cart': 0, 'hinge': 1}
    assert features.read_joints(message, index) == ''
    assert features.fuse(0, {}, max_age=0.1, max_future=0.1) == ('', '')
    wrapped = math.atan2(math.sin(7.0), math.cos(7.0))
    assert features.observation == pytest.approx([math.cos(0.5), math.sin(0.5), -2.0, wrapped])


@pytest.mark.parametrize(
    ('names', 'message', 'allow_extra', 'reason'),
    [
        (['hinge'], fields([1.0], velocity=[1.0, 2.0]), True, 'length_mismatch'),
        (['hinge'], fields([1.0]), True, 'missing_field'),  # velocity is needed
        (['hinge', 'hinge'], fields([1.0, 1.0], [0.0, 0.0]), True, 'duplicate_joint'),
        (['cart'], fields([1.0], [0.0]), True, 'missing_joint'),
        (['hinge', 'cart'], fields([1.0, 1.0], [0.0, 0.0]), False, 'unknown_joint'),
    ],
)
def test_malformed_joint_states_are_refused_with_a_reason(names, message, allow_extra, reason):
    features = ObservationFeatures(['hinge.position', 'hinge.velocity'], False, False)
    index, got, detail = features.check_structure(names, message, allow_extra)
    assert index is None and got == reason and detail


def test_an_extra_joint_is_ignored_when_allowed_and_non_finite_values_are_named():
    features = ObservationFeatures(['hinge.position'], False, False)
    message = fields([math.nan, 3.0])
    index, reason, _ = features.check_structure(['hinge', 'wheel'], message, allow_extra=True)
    assert reason == ''
    assert features.read_joints(message, index) == "non-finite ['hinge.position']"


def test_specs_that_need_an_input_that_is_off_or_do_not_parse_raise():
    with pytest.raises(ValueError, match='use_imu'):
        ObservationFeatures(['imu.pitch'], use_imu=False, use_odometry=False)
    with pytest.raises(ValueError, match='use_odometry'):
        ObservationFeatures(['odom.vx'], use_imu=True, use_odometry=False)
    with pytest.raises(ValueError, match='unknown function'):
        ObservationFeatures(['tan(hinge.position)'], False, False)
    with pytest.raises(ValueError, match='lacks a field'):
        ObservationFeatures(['hinge'], False, False)


def test_imu_and_odometry_are_fused_only_when_fresh():
    features = ObservationFeatures(['hinge.position', 'imu.pitch', 'odom.vx'], True, True)
    message = fields([0.25])
    index, _, _ = features.check_structure(['hinge'], message, allow_extra=False)
    features.read_joints(message, index)
    second = 1_000_000_000
    assert features.fuse(5 * second, {'imu': None, 'odometry': None}, 0.1, 0.1)[0] == (
        'missing_imu'
    )
    features.imu[:] = imu_values([1.0, 0.0, 0.0, 0.0], [0.0] * 6)
    features.odometry[:] = odometry_values([1.0, 0.0, 0.0, 0.0], 1.0, 2.0, 0.5, 0.0, 0.0)
    stamps = {'imu': 5 * second, 'odometry': 4 * second}
    reason, detail = features.fuse(5 * second, stamps, max_age=0.1, max_future=0.1)
    assert reason == 'stale_odometry' and '1.000 s older' in detail
    stamps['odometry'] = 6 * second
    assert features.fuse(5 * second, stamps, 0.1, 0.1)[0] == 'future_odometry'
    stamps['odometry'] = 5 * second
    assert features.fuse(5 * second, stamps, 0.1, 0.1) == ('', '')
    assert features.observation.tolist() == [0.25, 0.0, 0.5]
    # max_age / max_future of 0 turn the checks off
    stamps['odometry'] = 0
    assert features.fuse(5 * second, stamps, 0.0, 0.0) == ('', '')


def test_orientation_checks_and_euler_angles():
    assert check_orientation([0.0], [1.0, 0.0, 0.0, 0.0]) == ('', '')
    assert check_orientation([math.inf], [1.0, 0.0, 0.0, 0.0])[0] == 'nonfinite'
    assert check_orientation([0.0], [1.0, 0.0, 0.0, math.nan])[0] == 'nonfinite'
    assert check_orientation([0.0], [0.5, 0.0, 0.0, 0.0])[0] == 'quaternion'
    half = math.pi / 8  # a yaw of pi/4 about z
    quaternion = [math.cos(half), 0.0, 0.0, math.sin(half)]
    roll, pitch, yaw, *rates = imu_values(quaternion, [1, 2, 3, 4, 5, 6])
    assert (roll, pitch) == pytest.approx((0.0, 0.0), abs=1e-12)
    assert yaw == pytest.approx(math.pi / 4) and rates == [1, 2, 3, 4, 5, 6]
    planar = odometry_values(quaternion, 1.0, 2.0, 0.1, 0.2, 0.3)
    assert np.allclose(planar, (1.0, 2.0, math.pi / 4, 0.1, 0.2, 0.3))
