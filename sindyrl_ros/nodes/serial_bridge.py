"""Serial rig bridge: a microcontroller rig on a serial port presented as a ROS robot.

It plays the part the simulated plant plays in simulation: publishes ``/joint_states``
(each valid STATE of the rig, stamped with the rig's clock mapped onto ROS time) and
applies ``/<controller_name>/commands`` (checked, clipped, sent as COMMAND frames). It talks
to the rig through the framed, checksummed, versioned protocol of
:mod:`sindyrl_ros.hardware.protocol` (``docs/rig_protocol.md``); a lost port is reopened,
and /diagnostics reports ERROR meanwhile while no joint state is published, so the
controller's watchdog switches to its safe command. The driver is
:class:`sindyrl_ros.hardware.link.SerialLink`.

For a training run it is also the plant the run supervisor drives (the simulated plant's
interface, for a rig that cannot stop time): ``/plant/reset`` (std_srvs/Trigger) ends the
episode and resets the rig, answering once the rig is at its start state; ``/plant/pause``
(std_srvs/SetBool) holds the rig on the zero command; ``/sindyrl/episode`` (String JSON)
and ``/sindyrl/reward`` (each step's reward, stamped with the state it started from) score
the steps the rig took, reading ``/sindyrl/observation`` and ``/sindyrl/action``. The rules
are :class:`sindyrl_ros.hardware.bridge.RigBridge`.
"""

from __future__ import annotations

import sys

from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray
from std_srvs.srv import SetBool, Trigger

from sindyrl_ros.core.episodes import EpisodeLedger
from sindyrl_ros.hardware.bridge import RigBridge, command_limits, within_task
from sindyrl_ros.hardware.protocol import State
from sindyrl_ros.params import ParameterError
from sindyrl_ros.params.serial_bridge import PARAMETERS
from sindyrl_ros.ros.diagnostics import Diagnostics, EpisodeReporter
from sindyrl_ros.ros.messages import (
    MessageError,
    command_stamp_ns,
    ns_to_stamp,
    read_vector,
    stamp_to_ns,
    vector_message,
)
from sindyrl_ros.ros.parameters import (
    check_parameter_files,
    configuration_error,
    declare_parameters,
    task_from_parameters,
)
from sindyrl_ros.ros.qos import LEDGER_QOS, RELIABLE_QOS, SENSOR_QOS, TRANSITION_QOS
from sindyrl_ros.ros.runtime import run_node

_OBSERVATION_REJECTS = tuple(
    f'observation_{reason}'
    for reason in ('length_mismatch', 'duplicate_name', 'missing_name', 'nonfinite')
)


class SerialBridgeNode(Node):
    """The rig behind a serial port as a robot and, for training, a plant (module docstring)."""

    def __init__(self) -> None:
        super().__init__('serial_bridge')
        self.parameters = declare_parameters(self, PARAMETERS)
        check_parameter_files(self)
        p = self.parameters
        if not p.joint_names:
            raise configuration_error(self, 'joint_names', 'name at least one joint')
        if len(set(p.joint_names)) != len(p.joint_names):
            raise configuration_error(self, 'joint_names', 'joint names must be unique')
        self.joint_names = list(p.joint_names)
        low, high = self._checked(
            command_limits,
            p.command_low,
            p.command_high,
            p.action_low,
            p.action_high,
            p.action_names,
        )
        if p.reconnect_min > p.reconnect_max:
            raise configuration_error(self, 'reconnect_min', 'must not exceed reconnect_max')
        task = task_from_parameters(self, p) if p.task else None
        if task is not None:
            low, high = self._checked(within_task, low, high, task)
        ledger = self._make_ledger(task)

        self.diagnostics = Diagnostics(self, p.diagnostics_period)
        for reason in _OBSERVATION_REJECTS:
            self.diagnostics.counters[f'rejected.{reason}'] = 0
        self._joint_publisher = self.create_publisher(JointState, 'joint_states', SENSOR_QOS)
        commands = self.create_subscription(
            Float64MultiArray, f'/{p.controller_name}/commands', self._on_command, RELIABLE_QOS
        )
        # The simulated plant's interface for a run supervisor (relative names: /plant/...).
        self.create_service(Trigger, 'plant/reset', self._on_reset)
        self.create_service(SetBool, 'plant/pause', self._on_pause)
        self.bridge = RigBridge(
            p,
            self.joint_names,
            low,
            high,
            ledger,
            (task.dt if task is not None else p.control_period) * 1e6,
            self.diagnostics,
            self.get_logger(),
            self._publish_state,
            lambda: self.get_clock().now().nanoseconds,
            commands.topic_name,
        )
        if ledger is not None:
            self._episodes = EpisodeReporter(self, self.diagnostics)
            self._reward_publisher = self.create_publisher(
                JointState, 'sindyrl/reward', TRANSITION_QOS
            )
            self.create_subscription(
                JointState, 'sindyrl/observation', self._on_observation, LEDGER_QOS
            )
            self.create_subscription(JointState, 'sindyrl/action', self._on_action, LEDGER_QOS)

        steady = Clock(clock_type=ClockType.STEADY_TIME)
        self.create_timer(min(0.05, p.link_timeout / 4.0), self._watch, clock=steady)
        self.bridge.start()
        episodes = (
            f', episodes of {ledger.episode_length} steps'
            + (' (reset after each)' if p.reset_each_episode else '')
            if ledger is not None
            else ''
        )
        self.get_logger().info(
            f'serial bridge: port {p.port} at {p.baud} baud, joints {self.joint_names}, '
            f'{p.command_mode} commands from {commands.topic_name} in '
            f'[{low.tolist()}, {high.tolist()}]{episodes}'
            + (', paused until /plant/pause false' if self.bridge.paused else '')
        )

    def _checked(self, check, *args):
        """``check(*args)``, a ParameterError raised as the error naming the parameter's file."""
        try:
            return check(*args)
        except ParameterError as error:
            raise configuration_error(self, error.parameter, error.problem) from None

    def _make_ledger(self, task) -> EpisodeLedger | None:
        """Episode accounting for the task's reward, or None for a bare driver (no task)."""
        self.observation_names = list(task.observation_names) if task is not None else []
        if task is None:
            return None
        try:
            reward = task.reward_function()
        except ValueError as error:  # a learned reward: only the plant's sensors know it
            self.get_logger().warning(f'episode returns are not computed: {error}')
            reward = None
        return EpisodeLedger(
            reward, task.episode_length, task.name, self.parameters.observation_wait
        )

    # ------------------------------------------------------------------ rig (reader thread)

    def _publish_state(self, state: State, stamp_ns: int) -> None:
        message = JointState(name=self.joint_names)
        message.header.stamp = ns_to_stamp(stamp_ns)
        message.position = list(state.positions)
        message.velocity = list(state.velocities)
        message.effort = list(state.efforts)
        self._joint_publisher.publish(message)

    # ------------------------------------------------------------------ executor

    def _on_command(self, message: Float64MultiArray) -> None:
        self.bridge.command(message.data, command_stamp_ns(message))

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response):
        """End the episode, reset the rig and answer once it is at its start state.

        Blocks this node's executor while the rig resets (at most ``reset_timeout``): the
        reader thread goes on reading frames and sending heartbeats meanwhile.
        """
        response.success, response.message = self.bridge.reset_and_wait('/plant/reset')
        return response

    def _on_pause(self, request: SetBool.Request, response: SetBool.Response):
        """Hold (true) or resume (false) the rig."""
        response.success = True
        response.message = self.bridge.pause(bool(request.data))
        return response

    def _on_observation(self, message: JointState) -> None:
        try:
            observation = read_vector(message, self.observation_names, 'position')
        except MessageError as error:
            self.diagnostics.reject(
                f'observation_{error.reason}', f'/sindyrl/observation: {error.detail}'
            )
            return
        self.bridge.add_observation(stamp_to_ns(message.header.stamp), observation)
        self._poll_ledger()

    def _on_action(self, message: JointState) -> None:
        self.bridge.add_action(stamp_to_ns(message.header.stamp), message.header.frame_id)

    def _poll_ledger(self) -> None:
        """Publish the rewards of scored steps and the records of finished episodes."""
        rewards, records = self.bridge.poll_ledger()
        for start_ns, reward in rewards:
            self._reward_publisher.publish(
                vector_message(('reward',), (reward,), ns_to_stamp(start_ns))
            )
        if records:
            self._episodes.publish(records)

    def _watch(self) -> None:
        """Episodes, the real-time contract and the link state for /diagnostics."""
        self._poll_ledger()
        self.bridge.watch()

    # ------------------------------------------------------------------ shutdown

    def on_shutdown(self) -> None:
        """Leave the rig at rest: the zero command (clipped into the limits)."""
        self.bridge.shutdown()

    def destroy_node(self) -> None:
        self.bridge.stop()
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    return run_node(SerialBridgeNode, args, name='serial_bridge')


if __name__ == '__main__':
    sys.exit(main())
