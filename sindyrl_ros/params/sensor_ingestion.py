"""Parameters of the sensor_ingestion node.

What the node does with them: :mod:`sindyrl_ros.nodes.sensor_ingestion`.
"""

from __future__ import annotations

from sindyrl_ros.params import (
    DIAGNOSTICS_PERIOD_PARAMETER,
    SHARED_PARAMETERS,
    WAIT_REPORT_PARAMETER,
    ParamSpec,
)

__all__ = ['PARAMETERS', 'SENSOR_PARAMETERS']

SENSOR_PARAMETERS = [
    ParamSpec(
        'observation_features',
        [],
        'One feature spec per observation name, e.g. '
        "'cos(pendulum_joint.position)', 'slider.velocity', 'imu.roll', 'odom.vx'",
        read_only=True,
        type='STRING_ARRAY',
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
    DIAGNOSTICS_PERIOD_PARAMETER,
    WAIT_REPORT_PARAMETER,
]

# Everything this node declares (what a parameter file may set for it).
PARAMETERS = SHARED_PARAMETERS + SENSOR_PARAMETERS
