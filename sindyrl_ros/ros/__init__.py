"""rclpy glue the nodes share: QoS, parameters, diagnostics, messages, the node runner.

Everything that needs no rclpy lives in :mod:`sindyrl_ros.core` and :mod:`sindyrl_ros.params`.
"""
