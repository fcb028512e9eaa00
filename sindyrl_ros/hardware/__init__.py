"""The serial hardware path, without rclpy: a microcontroller rig behind a serial port.

* :mod:`~sindyrl_ros.hardware.protocol`: frames (COBS, CRC-32), messages and their codecs,
  the reference implementation of ``docs/rig_protocol.md``;
* :mod:`~sindyrl_ros.hardware.link`: the host's end of the port (reader thread, reconnects,
  frame handling, the rig clock mapped onto the host's);
* :mod:`~sindyrl_ros.hardware.bridge`: the serial bridge's rules (commands and their
  sequence numbers, resets, pause, steps and episodes), which ``nodes/serial_bridge.py``
  translates to and from ROS;
* :mod:`~sindyrl_ros.hardware.emulator` and :mod:`~sindyrl_ros.hardware.ports`: a rig
  emulated on a pseudo-terminal, and the ports both ends use.
"""
