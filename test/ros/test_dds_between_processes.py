"""Messages cross a real DDS link between two OS processes on the test's own domain."""

from pathlib import Path
import sys

import pytest
from ros_testing import spin_until

pytestmark = pytest.mark.ros

ECHO_NODE = Path(__file__).with_name('echo_node.py')


def test_ping_pong_between_processes(ros_context, start_process):
    from std_msgs.msg import Float64MultiArray

    context, executor = ros_context
    echo = start_process([sys.executable, str(ECHO_NODE)], name='echo')
    assert echo.wait_for_output('echo ready', timeout=30), echo.output()

    import rclpy.node

    node = rclpy.node.Node('pinger', context=context)
    executor.add_node(node)
    replies = []
    node.create_subscription(Float64MultiArray, 'pong', lambda m: replies.append(list(m.data)), 10)
    ping = node.create_publisher(Float64MultiArray, 'ping', 10)

    assert spin_until(executor, lambda: ping.get_subscription_count() > 0, timeout=20), (
        'echo process never subscribed to ping'
    )
    assert spin_until(
        executor, lambda: node.count_publishers('pong') > 0, timeout=20
    ), 'echo publisher never discovered'
    sent = [[float(i), -0.5 * i] for i in range(20)]
    for values in sent:
        ping.publish(Float64MultiArray(data=values))
        spin_until(executor, lambda: False, timeout=0.01)
    assert spin_until(executor, lambda: len(replies) >= len(sent), timeout=20), replies
    assert replies == [[2.0 * v for v in values] for values in sent]
    assert echo.alive(), echo.output()
    node.destroy_node()


def test_separate_domains_do_not_hear_each_other(ros_context, start_process, tmp_path):
    """The per-test domain really isolates: an echo on another domain never answers."""
    from ros_testing import DomainLease, NodeProcess, ros_environment
    from std_msgs.msg import Float64MultiArray

    context, executor = ros_context
    other = DomainLease()
    try:
        echo = NodeProcess(
            [sys.executable, str(ECHO_NODE)], ros_environment(other.domain_id),
            tmp_path / 'other.log'
        )
        try:
            assert echo.wait_for_output('echo ready', timeout=30), echo.output()
            import rclpy.node

            node = rclpy.node.Node('lonely_pinger', context=context)
            executor.add_node(node)
            ping = node.create_publisher(Float64MultiArray, 'ping', 10)
            assert not spin_until(executor, lambda: ping.get_subscription_count() > 0, timeout=3)
            node.destroy_node()
        finally:
            echo.stop()
    finally:
        other.release()
