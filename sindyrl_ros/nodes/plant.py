"""Simulated plant: a gymnasium environment presented to the graph as a robot.

It publishes ``/joint_states`` (joints by name, built from the environment's observation),
applies ``/<controller_name>/commands`` and publishes ``/clock`` with simulated time, so the
sensor, controller and model nodes cannot tell it from a real robot driven by ros2_control.

Modes: ``lockstep`` (deterministic, faster than real time: state k is published and the
plant waits for the command answering it; without one within ``lockstep_timeout`` the state
is published again, same stamp) and ``realtime`` (a wall-clock timer steps every control
period with the latest command, or the zero command after ``command_timeout``).
Pause (``~/pause``, std_srvs/SetBool: true = hold, false = resume) holds the plant while a
learning run refits and retrains (SINDy-RL's synchronous Dyna loop); ``~/reset``
(std_srvs/Trigger) starts the next episode; ``start_paused`` holds the very first state so
that a training run's supervisor decides when the first real step happens. A simulated
plant can freeze time; a physical rig cannot (the serial bridge holds the safe command).
The rules (answers, holds, episode ends, time gaps at resets, joint mapping) are
:mod:`sindyrl_ros.core.simulated_plant`; the episodes are scored by
``core.episodes.EpisodeLedger``, shared with the serial bridge and the episodes node.

Counters on /diagnostics: ``steps`` (env.step calls only; paused steps never count),
``episodes``, ``late_commands``, ``lockstep_timeouts``, ``missing_commands``,
``clipped_commands``, ``commands_while_paused``, ``pauses``; rejects ``command_length``,
``command_nonfinite``, ``command_stamp``.
"""

from __future__ import annotations

import math
import sys
import time

import numpy as np
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from rosgraph_msgs.msg import Clock as ClockMsg
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray
from std_srvs.srv import SetBool, Trigger

from sindyrl_ros.core.episodes import EpisodeLedger
from sindyrl_ros.core.simulated_plant import JointMapping, SimulatedPlant, checked_command
from sindyrl_ros.params import ParameterError
from sindyrl_ros.params.plant import PARAMETERS
from sindyrl_ros.ros.diagnostics import Diagnostics, EpisodeReporter
from sindyrl_ros.ros.messages import command_stamp_ns, ns_to_stamp, stamp_to_ns, vector_message
from sindyrl_ros.ros.parameters import (
    check_parameter_files,
    configuration_error,
    declare_parameters,
    task_from_parameters,
)
from sindyrl_ros.ros.qos import RELIABLE_QOS, TRANSITION_QOS
from sindyrl_ros.ros.runtime import run_node

_COUNTERS = (
    'steps',
    'episodes',
    'late_commands',
    'lockstep_timeouts',
    'missing_commands',
    'clipped_commands',
    'commands_while_paused',
)


class PlantNode(Node):
    """A gymnasium environment as a robot on the ROS graph (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__('plant')
        self.parameters = declare_parameters(self, PARAMETERS)
        check_parameter_files(self)
        p = self.parameters
        task = self._configure_task()
        try:
            self.joints = JointMapping(
                p.joint_names, p.joint_positions, p.joint_velocities, task.observation_names
            )
        except ParameterError as error:
            raise configuration_error(self, error.parameter, error.problem) from None

        self.diagnostics = Diagnostics(self, p.diagnostics_period)
        for key in _COUNTERS:
            self.diagnostics.counters[key] = 0
        self.diagnostics.set('mode', p.mode)
        self.diagnostics.set('paused', p.start_paused)
        self.diagnostics.counters['pauses'] = int(p.start_paused)
        self.diagnostics.set('held_seconds', 0.0)
        self.diagnostics.set('task', task.name)
        self.diagnostics.set('last_return', 'none')

        env = task.make_env(seed=p.seed)
        observation, _ = env.reset(seed=p.seed)
        # Episode bookkeeping: the ledger counts every env.step call since start-up.
        ledger = EpisodeLedger(
            None,  # the simulator gives each step's reward
            task.episode_length,
            task.name,
            termination=task.termination_function(),
        )
        self.plant = SimulatedPlant(
            env,
            observation,
            ledger,
            task.action_low,
            task.action_high,
            task.dt,
            int(round(p.reset_time_gap * 1e9)),
            paused=p.start_paused,
        )
        self.diagnostics.set('episode_step', 0)
        self._started = False
        self._paused_at = time.monotonic()
        self._held_seconds = 0.0
        self._published_at = 0.0
        self._latest_command = self.plant.zero_command.copy()
        self._latest_command_at = -math.inf
        self._latest_command_stamp: int | None = None

        self._clock_publisher = self.create_publisher(ClockMsg, '/clock', 10)
        self._joint_publisher = self.create_publisher(JointState, 'joint_states', RELIABLE_QOS)
        self._joint_message = JointState(name=list(p.joint_names))
        self._episodes = EpisodeReporter(self, self.diagnostics)
        # The reward the simulator measured for each step, stamped with the state the step
        # started from: what a task with a learned reward is fitted on.
        self._reward_publisher = self.create_publisher(
            JointState, 'sindyrl/reward', TRANSITION_QOS
        )
        self._reward_message = vector_message(('reward',), (0.0,), ns_to_stamp(0))
        commands = self.create_subscription(
            Float64MultiArray, f'/{p.controller_name}/commands', self._on_command, RELIABLE_QOS
        )
        self._commands_topic = commands.topic_name  # after remapping
        self.create_subscription(JointState, 'sindyrl/action', self._on_action, RELIABLE_QOS)
        self.create_service(Trigger, '~/reset', self._on_reset)
        self.create_service(SetBool, '~/pause', self._on_pause)

        steady = Clock(clock_type=ClockType.STEADY_TIME)
        if p.mode == 'lockstep':
            period = min(0.05, p.lockstep_timeout / 4.0)
            self.create_timer(period, self._lockstep_watch, clock=steady)
        else:
            self._started = True
            self._publish_or_hold()
            self.create_timer(task.dt, self._realtime_tick, clock=steady)
        self.get_logger().info(
            f'plant ready: task {task.name}, {p.mode}, dt {task.dt} s, joints '
            f'{list(p.joint_names)}, commands on {self._commands_topic}'
            + (', paused until /plant/pause false' if p.start_paused else '')
        )

    def _configure_task(self):
        """The task of the shared parameters (narrowed limits; names checked there)."""
        from sindyrl_ros.core.tasks import TASKS  # gymnasium: only the plant needs it

        p = self.parameters
        if not p.task:
            raise configuration_error(self, 'task', 'the plant needs a task name')
        # A registered task, or one defined in the parameter file (env_id, reward, ...).
        self.task = task_from_parameters(self, p)
        registered = TASKS.get(p.task)
        if registered is not None and not p.env_id and abs(self.task.dt - registered.dt) > 1e-9:
            raise configuration_error(
                self,
                'control_period',
                f'{self.task.dt} s differs from the simulator step {registered.dt} s',
            )
        return self.task

    # ------------------------------------------------------------------ state publication

    def _publish_state(self) -> None:
        """Publish /clock and /joint_states for the current state (stamp = sim time)."""
        plant = self.plant
        stamp = ns_to_stamp(plant.time_ns)
        self._clock_publisher.publish(ClockMsg(clock=stamp))
        message = self._joint_message
        message.header.stamp = stamp
        message.position = self.joints.positions(plant.observation)
        message.velocity = self.joints.velocities(plant.observation)
        self._joint_publisher.publish(message)
        plant.published()
        self._published_at = time.monotonic()
        self.diagnostics.set('sim_time', f'{plant.time_ns * 1e-9:.6f}')

    def _publish_or_hold(self) -> None:
        """Publish the current state, or keep it for the resume while paused."""
        if self.plant.publish_or_hold():
            self._publish_state()

    def _episodes_done(self, records) -> None:
        self._episodes.publish(list(records))
        self.diagnostics.set('episode_step', 0)

    def _stepped(self, reward: float) -> None:
        """Publish the step's reward (stamped with the state it started from) and counts."""
        self._reward_message.header.stamp = ns_to_stamp(self.plant.state_stamp_ns)
        self._reward_message.position[0] = reward
        self._reward_publisher.publish(self._reward_message)
        self.diagnostics.counters['steps'] = self.plant.real_steps
        self.diagnostics.set('episode_step', self.plant.ledger.episode_steps)

    # ------------------------------------------------------------------ commands

    def _valid_command(self, message: Float64MultiArray) -> np.ndarray | None:
        """The command clipped into the limits, or None (refused and counted)."""
        command, reason, detail = checked_command(
            message.data, self.plant.action_low, self.plant.action_high
        )
        if command is None:
            self.diagnostics.reject(reason, f'{self._commands_topic}: {detail}')
        elif reason == 'clipped':
            self.diagnostics.increment('clipped_commands')
        return command

    def _on_command(self, message: Float64MultiArray) -> None:
        command = self._valid_command(message)
        if command is None:
            return
        stamp = command_stamp_ns(message)
        if self.parameters.mode == 'realtime':
            if (
                stamp is not None
                and self._latest_command_stamp is not None
                and stamp < self._latest_command_stamp
            ):
                self.diagnostics.increment('late_commands')
                return
            self._latest_command = command
            self._latest_command_at = time.monotonic()
            self._latest_command_stamp = stamp
            return
        # Lockstep: only the answer to the state just published may move the plant.
        answer = self.plant.answer(command, stamp, time.monotonic())
        if answer.outcome in ('late', 'while_paused'):
            # While paused the controller's watchdog answers the last state with its safe
            # command: expected, so counted apart from late answers.
            self.diagnostics.increment(
                'commands_while_paused' if answer.outcome == 'while_paused' else 'late_commands'
            )
            return
        if answer.outcome == 'future':
            self.diagnostics.reject(
                'command_stamp',
                f'command answers {stamp} ns, newest state is {self.plant.state_stamp_ns} ns',
            )
            return
        if answer.outcome == 'episode_started':
            self._episodes_done(answer.records)
        else:
            self._stepped(answer.reward)
        self._publish_or_hold()

    def _on_action(self, message: JointState) -> None:
        """The controller's mode (explore/evaluate/safe) for the episode record."""
        self.plant.ledger.add_action(
            stamp_to_ns(message.header.stamp), message.header.frame_id
        )

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response):
        self._episodes_done(self.plant.reset(time.monotonic()))
        if self._started:
            self._publish_or_hold()
        response.success = True
        response.message = f'episode {self._episodes.episodes + 1} started' + (
            ' (its first state is held until resume)' if self.plant.paused else ''
        )
        return response

    def _on_pause(self, request: SetBool.Request, response: SetBool.Response):
        """Hold (true) or resume (false) the plant; see the module docstring."""
        response.success = True
        plant = self.plant
        if request.data == plant.paused:
            response.message = 'already paused' if plant.paused else 'not paused'
            return response
        now = time.monotonic()
        publish = plant.pause(request.data, self.parameters.mode == 'lockstep')
        if request.data:
            self._paused_at = now
            self.diagnostics.increment('pauses')
            response.message = f'paused after {plant.real_steps} real steps'
        else:
            self._held_seconds += now - self._paused_at
            self.diagnostics.set('held_seconds', round(self._held_seconds, 3))
            if publish:
                self._publish_state()
            response.message = f'resumed after {now - self._paused_at:.3f} s'
        self.diagnostics.set('paused', plant.paused)
        self.get_logger().info(f'{response.message} (episode step {plant.ledger.episode_steps})')
        return response

    # ------------------------------------------------------------------ timers

    def _lockstep_watch(self) -> None:
        """Start once the graph is connected; re-publish a state whose command never came."""
        if not self._started:
            if self.parameters.wait_for_controller and (
                self.count_subscribers(self._joint_publisher.topic_name) == 0
                or self.count_publishers(self._commands_topic) == 0
            ):
                return
            self._started = True
            self._publish_or_hold()
            return
        if self.plant.timed_out(
            self._published_at, time.monotonic(), self.parameters.lockstep_timeout
        ):
            self.diagnostics.increment('lockstep_timeouts')
            self._publish_state()

    def _realtime_tick(self) -> None:
        plant = self.plant
        if plant.paused:
            return  # simulated time stands still
        now = time.monotonic()
        if plant.episode_end:
            self._episodes_done(plant.finish_episode(plant.episode_end, now))
            self._publish_state()
            return
        timeout = self.parameters.command_timeout or 2.0 * self.task.dt
        command, missing = plant.realtime_command(
            self._latest_command, self._latest_command_at, now, timeout
        )
        if missing:
            self.diagnostics.increment('missing_commands')
        self._stepped(plant.step(command, now))
        self._publish_state()

    def on_shutdown(self) -> None:
        self.plant.env.close()


def main(args: list[str] | None = None) -> int:
    return run_node(PlantNode, args, name='plant')


if __name__ == '__main__':
    sys.exit(main())
