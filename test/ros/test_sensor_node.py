"""Sensor ingestion over real DDS: good joint states become observations, bad ones never do."""

import math

import numpy as np
import pytest
from ros_testing import DiagnosticsWatcher, node_command, spin_until, write_params

pytestmark = pytest.mark.ros

FEATURES = {
    'cos_theta': 'cos(hinge.position)',
    'sin_theta': 'sin(hinge.position)',
    'theta_dot': 'hinge.velocity',
    'cart_x': 'slider.position',
    'roll': 'imu.roll',
    'gyro_z': 'imu.angular_velocity_z',
    'odom_vx': 'odom.vx',
    'odom_yaw': 'odom.yaw',
}


class SensorProbe:
    """Publishes raw sensor messages, collects the observations of one sensor node."""

    def __init__(self, node, output_topic: str, prefix: str = '') -> None:
        from nav_msgs.msg import Odometry
        from rosgraph_msgs.msg import Clock
        from sensor_msgs.msg import Imu, JointState

        from sindyrl_ros.ros.qos import RELIABLE_QOS, SENSOR_QOS

        self.node = node
        self.observations: list[tuple[int, list[str], list[float]]] = []
        self.joint_states = node.create_publisher(JointState, f'{prefix}/joint_states', SENSOR_QOS)
        self.imu = node.create_publisher(Imu, '/imu', SENSOR_QOS)
        self.odometry = node.create_publisher(Odometry, '/odom', SENSOR_QOS)
        self.clock = node.create_publisher(Clock, '/clock', 10)
        node.create_subscription(JointState, output_topic, self._on_observation, RELIABLE_QOS)

    def _on_observation(self, message) -> None:
        from sindyrl_ros.ros.messages import stamp_to_ns

        self.observations.append(
            (stamp_to_ns(message.header.stamp), list(message.name), list(message.position))
        )

    def now_ns(self) -> int:
        return self.node.get_clock().now().nanoseconds

    def send_joints(self, stamp_ns, names, positions, velocities) -> None:
        from sensor_msgs.msg import JointState

        from sindyrl_ros.ros.messages import ns_to_stamp

        message = JointState(name=names, position=positions, velocity=velocities)
        message.header.stamp = ns_to_stamp(stamp_ns)
        self.joint_states.publish(message)

    def send_imu(self, stamp_ns, quaternion_wxyz, gyro_z) -> None:
        from sensor_msgs.msg import Imu

        from sindyrl_ros.ros.messages import ns_to_stamp

        message = Imu()
        message.header.stamp = ns_to_stamp(stamp_ns)
        w, x, y, z = quaternion_wxyz
        message.orientation.w, message.orientation.x = w, x
        message.orientation.y, message.orientation.z = y, z
        message.angular_velocity.z = gyro_z
        self.imu.publish(message)

    def send_odometry(self, stamp_ns, vx, yaw) -> None:
        from nav_msgs.msg import Odometry

        from sindyrl_ros.ros.messages import ns_to_stamp

        message = Odometry()
        message.header.stamp = ns_to_stamp(stamp_ns)
        message.twist.twist.linear.x = vx
        message.pose.pose.orientation.w = math.cos(yaw / 2)
        message.pose.pose.orientation.z = math.sin(yaw / 2)
        self.odometry.publish(message)


def _pause(executor, seconds=0.3):
    spin_until(executor, lambda: False, timeout=seconds)


def test_sensor_fuses_joints_imu_odometry_and_refuses_bad_input(
    ros_context, start_process, tmp_path
):
    import rclpy.node

    context, executor = ros_context
    params = write_params(
        tmp_path / 'sensor.yaml',
        {
            '/**': {'diagnostics_period': 0.2},
            'sensor_ingestion': {
                'observation_names': list(FEATURES),
                'observation_features': list(FEATURES.values()),
                'use_imu': True,
                'use_odometry': True,
                'max_age': 2.0,
            },
            # Second instance: strict about joint names, on sim time.
            'sensor_strict': {
                'observation_names': ['theta', 'theta_dot'],
                'observation_features': ['wrap(hinge.position)', 'hinge.velocity'],
                'allow_extra_joints': False,
                'use_sim_time': True,
                'max_age': 1.0,
            },
        },
    )
    node = rclpy.node.Node('sensor_probe', context=context)
    executor.add_node(node)
    probe = SensorProbe(node, '/sindyrl/observation')
    strict = SensorProbe(node, '/strict/observation', prefix='/strict')
    watcher = DiagnosticsWatcher(node)
    sensor = start_process(node_command('sensor_ingestion', params), name='sensor')
    start_process(
        node_command(
            'sensor_ingestion',
            params,
            '-r',
            '__node:=sensor_strict',
            '-r',
            'sindyrl/observation:=/strict/observation',
            '-r',
            'joint_states:=/strict/joint_states',
        ),
        name='strict',
    )
    assert spin_until(
        executor,
        lambda: (
            probe.joint_states.get_subscription_count() >= 1
            and strict.joint_states.get_subscription_count() >= 1
            and probe.imu.get_subscription_count() >= 1
            and probe.odometry.get_subscription_count() >= 1
            and node.count_publishers('/strict/observation') >= 1
            and node.count_publishers('/sindyrl/observation') >= 1
        ),
        timeout=30,
    ), sensor.output()
    _pause(executor, 0.5)

    def counter(key, name='/sensor_ingestion'):
        return watcher.count(name, key)

    # Older than max_age by the node clock: stale. No IMU yet: refused.
    now = probe.now_ns()
    probe.send_joints(now - 5_000_000_000, ['hinge', 'slider'], [0.1, 0.2], [0.3, 0.4])
    probe.send_joints(now, ['hinge', 'slider'], [0.1, 0.2], [0.3, 0.4])
    assert spin_until(
        executor,
        lambda: counter('rejected.missing_imu') == 1 and counter('rejected.stale') == 1,
        timeout=20,
    ), watcher.latest.get('/sensor_ingestion')

    # Good messages: joints by name in any order, extra joints ignored.
    roll = 0.3
    probe.send_imu(now, (math.cos(roll / 2), math.sin(roll / 2), 0.0, 0.0), gyro_z=0.7)
    probe.send_odometry(now, vx=1.5, yaw=-0.4)
    _pause(executor)
    good = [
        (now + 1_000_000, ['slider', 'wheel', 'hinge'], [0.25, 9.0, 2.0], [0.0, 0.0, -1.5]),
        (now + 2_000_000, ['hinge', 'slider'], [-3.0, -0.5], [4.0, 0.1]),
    ]
    for stamp, names, positions, velocities in good:
        probe.send_joints(stamp, names, positions, velocities)
        _pause(executor, 0.1)
    assert spin_until(executor, lambda: len(probe.observations) == 2, timeout=20)
    for (stamp, names, positions, velocities), (out_stamp, out_names, values) in zip(
        good, probe.observations, strict=True
    ):
        hinge = positions[names.index('hinge')]
        expected = [
            math.cos(hinge),
            math.sin(hinge),
            velocities[names.index('hinge')],
            positions[names.index('slider')],
            roll,
            0.7,
            1.5,
            -0.4,
        ]
        assert out_stamp == stamp and out_names == list(FEATURES)
        np.testing.assert_allclose(values, expected, atol=1e-12)

    # Bad joint states: each refused under its own reason, none forwarded.
    last = now + 2_000_000
    bad = [
        ('nonfinite', (last + 10, ['hinge', 'slider'], [float('nan'), 0.0], [0.0, 0.0])),
        ('nonfinite', (last + 11, ['hinge', 'slider'], [0.0, 0.0], [float('inf'), 0.0])),
        ('missing_joint', (last + 12, ['slider'], [0.0], [0.0])),
        ('length_mismatch', (last + 13, ['hinge', 'slider'], [0.0], [0.0, 0.0])),
        ('length_mismatch', (last + 14, ['hinge', 'slider'], [0.0, 0.0], [0.0, 0.0, 0.0])),
        ('missing_field', (last + 15, ['hinge', 'slider'], [0.0, 0.0], [])),
        ('duplicate_joint', (last + 16, ['hinge', 'hinge', 'slider'], [0.0] * 3, [0.0] * 3)),
        ('out_of_order', (now + 1_500_000, ['hinge', 'slider'], [0.0, 0.0], [0.0, 0.0])),
        ('duplicate_stamp', (last, ['hinge', 'slider'], [1.0, 1.0], [1.0, 1.0])),
    ]
    expected_counts: dict[str, int] = {'stale': 1, 'missing_imu': 1}
    for reason, message in bad:
        probe.send_joints(*message)
        expected_counts[reason] = expected_counts.get(reason, 0) + 1
        _pause(executor, 0.05)
    # Bad IMU / odometry messages are refused too.
    probe.send_imu(now + 5, (float('nan'), 0.0, 0.0, 0.0), gyro_z=0.0)
    probe.send_imu(now + 6, (2.0, 0.0, 0.0, 0.0), gyro_z=0.0)
    probe.send_odometry(now - 1_000_000_000, vx=0.0, yaw=0.0)
    expected_counts.update(imu_nonfinite=1, imu_quaternion=1, odometry_out_of_order=1)
    assert spin_until(
        executor,
        lambda: all(counter(f'rejected.{r}') == c for r, c in expected_counts.items()),
        timeout=20,
    ), (expected_counts, watcher.latest.get('/sensor_ingestion'))
    assert len(probe.observations) == 2 and counter('observations') == 2

    # A retransmission (same stamp, same values) is forwarded again, not refused.
    probe.send_joints(*good[1])
    assert spin_until(executor, lambda: counter('retransmitted') == 1, timeout=20)
    assert spin_until(executor, lambda: len(probe.observations) == 3, timeout=20)
    assert probe.observations[2] == probe.observations[1]
    assert sensor.alive(), sensor.output()

    # Strict node on sim time: unknown joints refused; age by the node clock (/clock).
    sim_now = 100_000_000_000
    from rosgraph_msgs.msg import Clock

    from sindyrl_ros.ros.messages import ns_to_stamp

    def clock_seen():
        probe.clock.publish(Clock(clock=ns_to_stamp(sim_now)))
        strict.send_joints(sim_now - 50_000_000, ['hinge'], [4.0], [1.0])
        return len(strict.observations) > 0

    assert spin_until(executor, clock_seen, timeout=20)
    _pause(executor, 0.3)
    assert strict.observations[0][0] == sim_now - 50_000_000
    np.testing.assert_allclose(strict.observations[0][2], [4.0 - 2 * math.pi, 1.0])
    count = len(strict.observations)
    strict.send_joints(sim_now - 10_000_000, ['hinge', 'slider'], [0.0, 0.0], [0.0, 0.0])
    _pause(executor, 0.05)
    strict.send_joints(sim_now - 20_000_000 + 60_000_000, ['hinge'], [0.0], [0.0])  # accepted
    _pause(executor, 0.05)
    for _ in range(5):
        probe.clock.publish(Clock(clock=ns_to_stamp(sim_now + 10_000_000_000)))
        _pause(executor, 0.1)
    strict.send_joints(sim_now + 5_000_000_000, ['hinge'], [0.0], [0.0])  # 5 s old: stale
    assert spin_until(
        executor,
        lambda: (
            counter('rejected.unknown_joint', '/sensor_strict') == 1
            and counter('rejected.stale', '/sensor_strict') == 1
        ),
        timeout=20,
    ), watcher.latest.get('/sensor_strict')
    assert len(strict.observations) == count + 1


def test_sensor_refuses_stamps_outside_the_window_without_locking_out(
    ros_context, start_process, tmp_path
):
    """Future, stale and malformed stamps are refused and counted; none of them becomes the
    reference of the order check, so the next valid state passes; a backwards step of the
    node clock restarts the order check instead of locking every state out."""
    import rclpy.node
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import JointState

    from sindyrl_ros.ros.messages import ns_to_stamp

    context, executor = ros_context
    params = write_params(
        tmp_path / 'sensor.yaml',
        {
            '/**': {'diagnostics_period': 0.2},
            'sensor_ingestion': {
                'observation_names': ['theta', 'theta_dot'],
                'observation_features': ['hinge.position', 'hinge.velocity'],
                'use_sim_time': True,  # the test owns the node clock
                'max_age': 1.0,  # max_future: the default (0.1 s)
            },
        },
    )
    node = rclpy.node.Node('sensor_window_probe', context=context)
    executor.add_node(node)
    probe = SensorProbe(node, '/sindyrl/observation')
    watcher = DiagnosticsWatcher(node)
    sensor = start_process(node_command('sensor_ingestion', params), name='sensor')
    assert spin_until(
        executor,
        lambda: (
            probe.joint_states.get_subscription_count() >= 1
            and node.count_publishers('/sindyrl/observation') >= 1
        ),
        timeout=30,
    ), sensor.output()
    second = 1_000_000_000
    clock_ns = 1000 * second

    def set_clock(stamp_ns):
        nonlocal clock_ns
        clock_ns = stamp_ns
        for _ in range(3):
            probe.clock.publish(Clock(clock=ns_to_stamp(stamp_ns)))
            _pause(executor, 0.1)

    def send(sec, nanosec, position):
        message = JointState(name=['hinge'], position=[position], velocity=[0.0])
        message.header.stamp.sec, message.header.stamp.nanosec = sec, nanosec
        probe.joint_states.publish(message)
        _pause(executor, 0.1)

    def send_ns(stamp_ns, position):
        stamp = ns_to_stamp(stamp_ns)
        send(stamp.sec, stamp.nanosec, position)

    def clock_seen():
        probe.clock.publish(Clock(clock=ns_to_stamp(clock_ns)))
        probe.send_joints(clock_ns, ['hinge'], [0.1], [0.0])
        return len(probe.observations) > 0

    assert spin_until(executor, clock_seen, timeout=20), sensor.output()
    _pause(executor, 0.5)
    refused = {
        reason: watcher.count('/sensor_ingestion', f'rejected.{reason}')
        for reason in ('future_stamp', 'stale', 'invalid_stamp', 'out_of_order')
    }
    accepted = []

    def expect(reason=None, count=1):
        """Wait for `reason` to have been counted `count` more times, or for an observation."""
        if reason is None:
            ok = spin_until(executor, lambda: len(probe.observations) > len(accepted), 10)
            assert ok, (watcher.latest.get('/sensor_ingestion'), sensor.output()[-2000:])
            accepted.append(probe.observations[-1])
            return
        refused[reason] += count
        assert spin_until(
            executor,
            lambda: watcher.count('/sensor_ingestion', f'rejected.{reason}') == refused[reason],
            timeout=10,
        ), (reason, watcher.latest.get('/sensor_ingestion'))

    del probe.observations[:]
    # An hour ahead: refused, and the next valid state (40 ms ahead: within max_future) passes.
    send_ns(clock_ns + 3600 * second, 0.2)
    expect('future_stamp')
    send_ns(clock_ns + 40_000_000, 0.3)
    expect()
    assert accepted[-1][0] == clock_ns + 40_000_000 and accepted[-1][2][0] == 0.3
    # Stale (5 s behind the node clock, yet newer than the last accepted): refused, then a
    # valid state passes.
    set_clock(clock_ns + 10 * second)
    send_ns(clock_ns - 5 * second, 0.4)
    expect('stale')
    send_ns(clock_ns, 0.5)
    expect()
    # Seconds that do not fit a time: int32 max (year 2038) is an hour ahead and more;
    # 2**31 s wrapped to int32 is negative; nanoseconds of a whole second or more.
    send(2**31 - 1, 0, 0.6)
    expect('future_stamp')
    send(-(2**31), 0, 0.7)
    send(-1, 999_999_999, 0.7)
    send(clock_ns // second, 1_500_000_000, 0.7)
    expect('invalid_stamp', 3)
    send_ns(clock_ns + 1_000_000, 0.8)
    expect()
    # The node clock steps back 900 s (a restarted simulator, an NTP step): states on the
    # new clock pass instead of being refused as out of order until the clock catches up.
    set_clock(clock_ns - 900 * second)
    send_ns(clock_ns, 0.9)
    expect()
    send_ns(clock_ns + 50_000_000, 1.0)
    expect()
    assert [a[2][0] for a in accepted] == [0.3, 0.5, 0.8, 0.9, 1.0]
    assert spin_until(
        executor, lambda: watcher.count('/sensor_ingestion', 'clock_steps_back') == 1, 10
    ), watcher.latest.get('/sensor_ingestion')
    assert 'node clock went back' in sensor.output()
    assert watcher.count('/sensor_ingestion', 'rejected.out_of_order') == refused['out_of_order']
    assert sensor.alive(), sensor.output()


def test_sensor_refuses_imu_and_odometry_outside_the_window_without_locking_out(
    ros_context, start_process, tmp_path
):
    """An IMU / odometry message stamped an hour ahead is refused and counted, never becomes
    the reference of their order check, and is never fused: the valid messages after it
    keep being accepted and the observations carry their values. Stale and malformed
    IMU / odometry stamps are refused too, and an IMU / odometry value newer than the
    joint states by more than max_future is not fused into them."""
    import rclpy.node

    context, executor = ros_context
    features = {
        'theta': 'hinge.position',
        'roll': 'imu.roll',
        'gyro_z': 'imu.angular_velocity_z',
        'odom_vx': 'odom.vx',
        'odom_yaw': 'odom.yaw',
    }
    params = write_params(
        tmp_path / 'sensor.yaml',
        {
            '/**': {'diagnostics_period': 0.2},
            'sensor_ingestion': {
                'observation_names': list(features),
                'observation_features': list(features.values()),
                'use_imu': True,
                'use_odometry': True,
                'max_age': 2.0,  # max_future: the default (0.1 s); the wall clock
            },
        },
    )
    node = rclpy.node.Node('sensor_sources_probe', context=context)
    executor.add_node(node)
    probe = SensorProbe(node, '/sindyrl/observation')
    watcher = DiagnosticsWatcher(node)
    sensor = start_process(node_command('sensor_ingestion', params), name='sensor')
    assert spin_until(
        executor,
        lambda: (
            probe.joint_states.get_subscription_count() >= 1
            and probe.imu.get_subscription_count() >= 1
            and probe.odometry.get_subscription_count() >= 1
            and node.count_publishers('/sindyrl/observation') >= 1
        ),
        timeout=30,
    ), sensor.output()
    _pause(executor, 0.5)
    second = 1_000_000_000
    counted: dict[str, int] = {}

    def counter(key):
        return watcher.count('/sensor_ingestion', key)

    def expect_refused(**reasons):
        counted.update({r: counted.get(r, 0) + c for r, c in reasons.items()})
        assert spin_until(
            executor,
            lambda: all(counter(f'rejected.{r}') == c for r, c in counted.items()),
            timeout=20,
        ), (counted, watcher.latest.get('/sensor_ingestion'), sensor.output()[-2000:])

    def imu(stamp_ns, k):
        roll = 0.1 * k
        probe.send_imu(
            stamp_ns, (math.cos(roll / 2), math.sin(roll / 2), 0.0, 0.0), gyro_z=float(k)
        )

    def odometry(stamp_ns, k):
        probe.send_odometry(stamp_ns, vx=0.5 * k, yaw=-0.1 * k)

    # Before any valid one: malformed (negative seconds) and stale stamps are refused.
    now = probe.now_ns()
    imu(-5, 9)  # sec -1: a wrapped int32
    odometry(-5, 9)
    imu(now - 5 * second, 9)
    odometry(now - 5 * second, 9)
    expect_refused(imu_invalid_stamp=1, odometry_invalid_stamp=1, imu_stale=1, odometry_stale=1)

    # Valid IMU and odometry, then joint states: each observation fuses the latest values.
    # In the middle, one IMU and one odometry message stamped an hour ahead.
    expected = []
    for k in range(6):
        if k == 3:
            stamp = probe.now_ns() + 3600 * second
            imu(stamp, 12)
            odometry(stamp, 12)
            expect_refused(imu_future_stamp=1, odometry_future_stamp=1)
        stamp = probe.now_ns()
        imu(stamp, k)
        odometry(stamp, k)
        _pause(executor, 0.1)
        probe.send_joints(stamp + 1_000_000, ['hinge'], [0.25 * k], [0.0])
        expected.append((stamp + 1_000_000, [0.25 * k, 0.1 * k, float(k), 0.5 * k, -0.1 * k]))
        assert spin_until(
            executor, lambda: len(probe.observations) == len(expected), timeout=20
        ), (
            k,
            watcher.latest.get('/sensor_ingestion'),
            sensor.output()[-2000:],
        )
    for (stamp, values), (out_stamp, names, out_values) in zip(
        expected, probe.observations, strict=True
    ):
        assert out_stamp == stamp and names == list(features)
        np.testing.assert_allclose(out_values, values, atol=1e-12)

    # An IMU value newer than the joint states by more than max_future (0.1 s) is not
    # fused into them (it is within max_future of the node clock, so the IMU is accepted).
    _pause(executor, 0.3)
    stamp = probe.now_ns()
    imu(stamp + 60_000_000, 6)
    odometry(stamp, 6)
    _pause(executor, 0.1)
    probe.send_joints(stamp - 100_000_000, ['hinge'], [9.0], [0.0])
    expect_refused(future_imu=1)
    # Likewise odometry (the IMU is within max_future of these joint states).
    _pause(executor, 0.3)
    stamp = probe.now_ns()
    imu(stamp, 7)
    odometry(stamp + 60_000_000, 7)
    _pause(executor, 0.1)
    probe.send_joints(stamp - 80_000_000, ['hinge'], [9.0], [0.0])
    expect_refused(future_odometry=1)
    # A joint state no older than them fuses both.
    probe.send_joints(stamp + 70_000_000, ['hinge'], [1.75], [0.0])
    assert spin_until(executor, lambda: len(probe.observations) == 7, timeout=20)
    out_stamp, _, out_values = probe.observations[-1]
    assert out_stamp == stamp + 70_000_000
    np.testing.assert_allclose(out_values, [1.75, 0.7, 7.0, 3.5, -0.7], atol=1e-12)

    # Nothing valid was refused as out of order behind the stamps an hour ahead.
    _pause(executor, 0.5)
    assert counter('rejected.imu_out_of_order') == 0
    assert counter('rejected.odometry_out_of_order') == 0
    assert all(counter(f'rejected.{r}') == c for r, c in counted.items()), (
        counted,
        watcher.latest.get('/sensor_ingestion'),
    )
    assert counter('observations') == 7
    assert sensor.alive(), sensor.output()
