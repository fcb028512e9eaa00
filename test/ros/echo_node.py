"""A node for DDS tests: answers every Float64MultiArray on `ping` with the values doubled."""

import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from std_msgs.msg import Float64MultiArray


class EchoNode(Node):
    def __init__(self) -> None:
        super().__init__('echo')
        self._pong = self.create_publisher(Float64MultiArray, 'pong', 10)
        self.create_subscription(Float64MultiArray, 'ping', self._on_ping, 10)
        self.get_logger().info('echo ready')

    def _on_ping(self, message: Float64MultiArray) -> None:
        self._pong.publish(Float64MultiArray(data=[2.0 * value for value in message.data]))


def main() -> None:
    rclpy.init()
    node = EchoNode()
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == '__main__':
    main()
