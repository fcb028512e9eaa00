"""Simulated plant: a gymnasium environment presented to the graph as a robot.

It publishes ``/joint_states`` (joints by name, built from the environment's observation),
applies ``/<controller_name>/commands`` and publishes ``/clock`` with simulated time, so the
sensor, controller and model nodes cannot tell it from a real robot driven by ros2_control.

Two modes:

``lockstep`` (deterministic, faster than real time)
    State k is published and the plant waits; the first valid command answering state k
    is applied, the environment steps, state k+1 is published. A command tagged with an
    older state's stamp is counted as ``late_commands`` and never applied. Without a
    command within ``lockstep_timeout`` (wall clock) state k is published again (same
    stamp) and ``lockstep_timeouts`` is counted.
``realtime``
    A wall-clock timer steps the environment every control period with the latest
    command; without a command for ``command_timeout`` the zero command (clipped into the
    limits) is applied and ``missing_commands`` is counted.

Pause (``~/pause``, std_srvs/SetBool: true = hold, false = resume) lets a learning run
hold the plant while it waits for a new policy, so that no real step is spent while the
model is refitted and the policy retrained (SINDy-RL's synchronous Dyna loop):

* lockstep: the answer to the state already published is still applied (that step
  completes, and the action the model updater recorded for it is the one applied), then
  the next state is held: nothing is published, not even by the lockstep timeout, and
  commands are counted as ``commands_while_paused``. On resume the held state is
  published; if the answer never came, the waiting state is published again (same stamp
  and values: the sensor node passes it on as a retransmission) so the loop restarts.
* realtime: the environment is not stepped and nothing is published; a simulated plant
  can freeze time. A physical rig cannot: it keeps moving under the last command, and
  the serial bridge holds the safe command while its controller gets no observations.

A reset while paused starts the next episode but holds its first state until resume.
``start_paused`` holds the very first state, so that a training run's supervisor decides
when the first real step happens (a plant that starts on its own spends real steps before
the supervisor is even listening).
Paused steps are never counted: ``steps`` counts env.step calls only.

Episodes end when the environment terminates or truncates, when the task's
``termination`` expression holds on the state after a step, or after ``episode_length``
steps (the bookkeeping and scoring is ``core.episodes.EpisodeLedger``, shared with the
serial bridge and the episodes node); the terminal state is published (its answer is
consumed, not applied), then the environment resets and simulated time jumps by
``reset_time_gap`` so that downstream pairing by time stamp sees the reset as a gap, not as
a transition.

Joint mapping: ``joint_names[i]`` gets position ``joint_positions[i]`` and velocity
``joint_velocities[i]``, each an observation name of the task (e.g. ``cart_x``) or, for
an angle observed as a (cos, sin) pair, ``atan2(sin_theta, cos_theta)``.
"""

from __future__ import annotations

import math
import re
import sys
import time

import numpy as np
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from rclpy.parameter import Parameter
from rosgraph_msgs.msg import Clock as ClockMsg
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray
from std_srvs.srv import SetBool, Trigger

from sindyrl_ros.core.episodes import EpisodeLedger
from sindyrl_ros.nodes.common import (
    RELIABLE_QOS,
    SHARED_PARAMETERS,
    TRANSITION_QOS,
    Diagnostics,
    EpisodeReporter,
    ParamSpec,
    check_parameter_files,
    command_stamp_ns,
    configuration_error,
    declare_parameters,
    ns_to_stamp,
    run_node,
    stamp_to_ns,
    task_from_parameters,
    vector_message,
)

PLANT_PARAMETERS = [
    ParamSpec(
        'mode',
        'lockstep',
        'lockstep: step when the command for the latest state '
        'arrives (deterministic); realtime: step on a wall-clock timer',
        read_only=True,
        choices=('lockstep', 'realtime'),
    ),
    ParamSpec(
        'seed',
        0,
        'Seed of the first environment reset (episodes follow from it)',
        range=(0, 2**31 - 1),
        read_only=True,
    ),
    ParamSpec(
        'controller_name',
        'effort_controller',
        'Commands are read from /<controller_name>/commands',
        read_only=True,
    ),
    ParamSpec(
        'joint_names',
        [],
        'Joint names published on /joint_states',
        read_only=True,
        type=Parameter.Type.STRING_ARRAY,
    ),
    ParamSpec(
        'joint_positions',
        [],
        'Per joint: the observation name giving its position, or '
        'atan2(<sin name>, <cos name>) for an angle seen as cos/sin',
        read_only=True,
        type=Parameter.Type.STRING_ARRAY,
    ),
    ParamSpec(
        'joint_velocities',
        [],
        'Per joint: the observation name giving its velocity '
        '(empty list: no velocities published)',
        read_only=True,
        type=Parameter.Type.STRING_ARRAY,
    ),
    ParamSpec(
        'lockstep_timeout',
        1.0,
        'Lockstep: wall seconds without a command before the state is published again',
        range=(0.01, 3600.0),
    ),
    ParamSpec(
        'wait_for_controller',
        True,
        'Lockstep: publish the first state only once '
        '/joint_states has a subscriber and the commands topic a publisher',
        read_only=True,
    ),
    ParamSpec(
        'start_paused',
        False,
        'Start held, as after /plant/pause true: the first state is published on resume '
        '(for a run supervisor that resumes the plant when it is ready)',
        read_only=True,
    ),
    ParamSpec(
        'command_timeout',
        0.0,
        'Realtime: wall seconds after which the last command is '
        'considered missing (zero command applied); 0 = two control periods',
        range=(0.0, 3600.0),
    ),
    ParamSpec(
        'reset_time_gap',
        1.0,
        'Simulated seconds added at each reset, so episodes are separated by a time gap',
        range=(0.0, 1e6),
        read_only=True,
    ),
    ParamSpec(
        'diagnostics_period',
        1.0,
        'Seconds between /diagnostics messages',
        range=(0.01, 3600.0),
        read_only=True,
    ),
]
# Everything this node declares (what a parameter file may set for it).
PARAMETERS = SHARED_PARAMETERS + PLANT_PARAMETERS

# Episode records are a log: a supervisor that joins late still gets the recent ones
# (volatile subscribers stay compatible and just get no history).
_ATAN2 = re.compile(r'^\s*atan2\(\s*([^,()\s]+)\s*,\s*([^,()\s]+)\s*\)\s*$')


class PlantNode(Node):
    """A gymnasium environment as a robot on the ROS graph (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__('plant')
        self.parameters = declare_parameters(self, PARAMETERS)
        check_parameter_files(self)
        p = self.parameters
        self._configure_task()
        self._compile_joint_mapping()

        self._action_dim = len(self.action_names)
        self._dt_ns = int(round(self.dt * 1e9))
        self._gap_ns = int(round(p.reset_time_gap * 1e9))
        self._zero_command = np.clip(np.zeros(self._action_dim), self.action_low, self.action_high)

        # Episode bookkeeping: the ledger counts every env.step call since start-up.
        self._ledger = EpisodeLedger(
            None,  # the simulator gives each step's reward
            self.episode_length,
            self.task.name,
            termination=self.task.termination_function(),
        )
        self._episode_end = ''  # why the episode ends at the state just published
        self._time_ns = 0
        self._observation = np.zeros(len(self.observation_names))
        self._state_stamp_ns = 0
        self._waiting = False  # lockstep: a state is out and its command not yet applied
        self._started = False
        self._paused = p.start_paused
        self._held = False  # paused: the current state is ready but not published yet
        self._paused_at = time.monotonic()
        self._held_seconds = 0.0
        self._published_at = 0.0
        self._latest_command = self._zero_command.copy()
        self._latest_command_at = -math.inf
        self._latest_command_stamp: int | None = None

        self.diagnostics = Diagnostics(self, p.diagnostics_period)
        for key in (
            'steps',
            'episodes',
            'late_commands',
            'lockstep_timeouts',
            'missing_commands',
            'clipped_commands',
            'commands_while_paused',
        ):
            self.diagnostics.counters[key] = 0
        self.diagnostics.set('mode', p.mode)
        self.diagnostics.set('paused', self._paused)
        self.diagnostics.counters['pauses'] = int(self._paused)
        self.diagnostics.set('held_seconds', 0.0)
        self.diagnostics.set('task', self.task.name)
        self.diagnostics.set('last_return', 'none')

        self._clock_publisher = self.create_publisher(ClockMsg, '/clock', 10)
        self._joint_publisher = self.create_publisher(JointState, 'joint_states', RELIABLE_QOS)
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

        self.env = self.task.make_env(seed=p.seed)
        observation, _ = self.env.reset(seed=p.seed)
        self._begin_episode(observation)

        steady = Clock(clock_type=ClockType.STEADY_TIME)
        if p.mode == 'lockstep':
            period = min(0.05, p.lockstep_timeout / 4.0)
            self.create_timer(period, self._lockstep_watch, clock=steady)
        else:
            self._started = True
            self._publish_or_hold()
            self.create_timer(self.dt, self._realtime_tick, clock=steady)
        self.get_logger().info(
            f'plant ready: task {self.task.name}, {p.mode}, dt {self.dt} s, joints '
            f'{list(p.joint_names)}, commands on {self._commands_topic}'
            + (', paused until /plant/pause false' if self._paused else '')
        )

    # ------------------------------------------------------------------ configuration

    def _configure_task(self) -> None:
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
        task = self.task
        self.observation_names = list(task.observation_names)
        self.action_names = list(task.action_names)
        for key, expected in (
            ('observation_names', self.observation_names),
            ('action_names', self.action_names),
        ):
            if p[key] and list(p[key]) != expected:
                raise configuration_error(
                    self, key, f'{list(p[key])} differs from task {task.name}: {expected}'
                )
        self.action_low = np.array(task.action_low, dtype=np.float64)
        self.action_high = np.array(task.action_high, dtype=np.float64)
        m = len(self.action_names)
        for key in ('action_low', 'action_high'):
            if p[key] and len(p[key]) != m:
                raise configuration_error(self, key, f'expected {m} values, got {len(p[key])}')
        # Limits from the parameters may be tighter than the environment's (safety margin).
        if p.action_low:
            self.action_low = np.maximum(self.action_low, p.action_low)
        if p.action_high:
            self.action_high = np.minimum(self.action_high, p.action_high)
        if np.any(self.action_low >= self.action_high):
            raise configuration_error(self, 'action_low', 'must be below action_high')
        self.dt = task.dt
        self.episode_length = task.episode_length  # the shared episode_length, if given

    def _compile_joint_mapping(self) -> None:
        """Turn the joint specs into observation indices: (index,) or (sin, cos) for atan2."""
        p = self.parameters
        if not p.joint_names:
            raise configuration_error(self, 'joint_names', 'name at least one joint')
        if len(set(p.joint_names)) != len(p.joint_names):
            raise configuration_error(self, 'joint_names', 'joint names must be unique')
        index = {name: i for i, name in enumerate(self.observation_names)}

        def compile_spec(key: str, spec: str, allow_angle: bool) -> tuple[int, ...]:
            match = _ATAN2.match(spec)
            names = match.groups() if (match and allow_angle) else (spec.strip(),)
            for name in names:
                if name not in index:
                    raise configuration_error(
                        self,
                        key,
                        f'{spec!r}: {name!r} is not an observation of task '
                        f'{self.task.name} {self.observation_names}',
                    )
            return tuple(index[name] for name in names)

        for key in ('joint_positions', 'joint_velocities'):
            if p[key] and len(p[key]) != len(p.joint_names):
                raise configuration_error(
                    self,
                    key,
                    f'expected one entry per joint ({len(p.joint_names)}), got {len(p[key])}',
                )
        if not p.joint_positions:
            raise configuration_error(self, 'joint_positions', 'give one entry per joint')
        self._position_sources = [
            compile_spec('joint_positions', s, True) for s in p.joint_positions
        ]
        self._velocity_sources = [
            compile_spec('joint_velocities', s, False) for s in p.joint_velocities
        ]
        self._joint_message = JointState(name=list(p.joint_names))

    # ------------------------------------------------------------------ state publication

    def _publish_state(self) -> None:
        """Publish /clock and /joint_states for the current state (stamp = sim time)."""
        observation = self._observation
        positions = [
            float(math.atan2(observation[s[0]], observation[s[1]]))
            if len(s) == 2
            else float(observation[s[0]])
            for s in self._position_sources
        ]
        velocities = [float(observation[s[0]]) for s in self._velocity_sources]
        stamp = ns_to_stamp(self._time_ns)
        self._clock_publisher.publish(ClockMsg(clock=stamp))
        message = self._joint_message
        message.header.stamp = stamp
        message.position = positions
        message.velocity = velocities
        self._joint_publisher.publish(message)
        self._state_stamp_ns = self._time_ns
        self._published_at = time.monotonic()
        self._waiting = True
        self.diagnostics.set('sim_time', f'{self._time_ns * 1e-9:.6f}')

    def _publish_or_hold(self) -> None:
        """Publish the current state, or keep it for the resume while paused."""
        if self._paused:
            self._held = True
            self._waiting = False
        else:
            self._publish_state()

    @property
    def real_steps(self) -> int:
        """Every env.step call since start-up."""
        return self._ledger.real_steps

    def _begin_episode(self, observation: np.ndarray) -> None:
        self._observation = np.asarray(observation, dtype=np.float64).reshape(-1)
        self._episode_end = ''
        self._time_ns += self._gap_ns  # the first state is at reset_time_gap, never 0
        self.diagnostics.set('episode_step', 0)

    def _finish_episode(self, reason: str) -> None:
        """Publish the finished episode (if it had steps), reset the environment."""
        self._ledger.end_episode(reason)  # nothing when a step already ended it
        _, records = self._ledger.poll(time.monotonic())
        self._episodes.publish(records)
        observation, _ = self.env.reset()
        self._begin_episode(observation)

    def _step(self, action: np.ndarray) -> None:
        """One env.step with an action inside the limits; marks the episode end if any."""
        observation, reward, terminated, truncated, _ = self.env.step(action.copy())
        self._reward_message.header.stamp = ns_to_stamp(self._state_stamp_ns)
        self._reward_message.position[0] = float(reward)
        self._reward_publisher.publish(self._reward_message)
        self._observation = np.asarray(observation, dtype=np.float64).reshape(-1)
        start_ns = self._state_stamp_ns
        self._time_ns += self._dt_ns
        end = 'terminated' if terminated else ('truncated' if truncated else None)
        self._episode_end = (
            self._ledger.add_step(
                start_ns,
                self._time_ns,
                action,
                start_ns,
                time.monotonic(),
                reward=float(reward),
                end=end,
                observation_after=self._observation,
            )
            or ''
        )
        self.diagnostics.counters['steps'] = self.real_steps
        self.diagnostics.set('episode_step', self._ledger.episode_steps)

    # ------------------------------------------------------------------ commands

    def _valid_command(self, message: Float64MultiArray) -> np.ndarray | None:
        """The command clipped into the limits, or None (refused and counted)."""
        values = np.asarray(message.data, dtype=np.float64)
        if values.shape != (self._action_dim,):
            self.diagnostics.reject(
                'command_length',
                f'{self._commands_topic}: {values.size} values, expected {self._action_dim}',
            )
            return None
        if not np.all(np.isfinite(values)):
            self.diagnostics.reject(
                'command_nonfinite', f'{self._commands_topic}: {values.tolist()}'
            )
            return None
        clipped = np.clip(values, self.action_low, self.action_high)
        if not np.array_equal(clipped, values):
            self.diagnostics.increment('clipped_commands')
        return clipped

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
        if not self._waiting or (stamp is not None and stamp < self._state_stamp_ns):
            # While paused the controller's watchdog answers the last state with its safe
            # command: expected, so counted apart from late answers.
            self.diagnostics.increment(
                'commands_while_paused' if self._paused else 'late_commands'
            )
            return
        if stamp is not None and stamp > self._state_stamp_ns:
            self.diagnostics.reject(
                'command_stamp',
                f'command answers {stamp} ns, newest state is {self._state_stamp_ns} ns',
            )
            return
        self._waiting = False
        if self._episode_end:
            # The answer to a terminal state is consumed; the next episode starts.
            self._finish_episode(self._episode_end)
        else:
            self._step(command)
        self._publish_or_hold()

    def _on_action(self, message: JointState) -> None:
        """The controller's mode (explore/evaluate/safe) for the episode record."""
        self._ledger.add_action(stamp_to_ns(message.header.stamp), message.header.frame_id)

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response):
        self._finish_episode('reset')
        # The answer to the previous episode's last state is late from now on.
        self._waiting = False
        if self._started:
            self._publish_or_hold()
        response.success = True
        response.message = f'episode {self._episodes.episodes + 1} started' + (
            ' (its first state is held until resume)' if self._paused else ''
        )
        return response

    def _on_pause(self, request: SetBool.Request, response: SetBool.Response):
        """Hold (true) or resume (false) the plant; see the module docstring."""
        response.success = True
        if request.data == self._paused:
            response.message = 'already paused' if self._paused else 'not paused'
            return response
        now = time.monotonic()
        if request.data:
            self._paused = True
            self._paused_at = now
            self.diagnostics.increment('pauses')
            response.message = f'paused after {self.real_steps} real steps'
        else:
            self._paused = False
            self._held_seconds += now - self._paused_at
            self.diagnostics.set('held_seconds', round(self._held_seconds, 3))
            if self._held:
                self._held = False
                self._publish_state()
            elif self._waiting and self.parameters.mode == 'lockstep':
                # The answer to the waiting state never came: send it again to restart.
                self._publish_state()
            response.message = f'resumed after {now - self._paused_at:.3f} s'
        self.diagnostics.set('paused', self._paused)
        self.get_logger().info(f'{response.message} (episode step {self._ledger.episode_steps})')
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
        if self._paused:
            return  # the held state is published on resume, never by the timeout
        if self._waiting and time.monotonic() - self._published_at > (
            self.parameters.lockstep_timeout
        ):
            self.diagnostics.increment('lockstep_timeouts')
            self._publish_state()

    def _realtime_tick(self) -> None:
        if self._paused:
            return  # simulated time stands still
        if self._episode_end:
            self._finish_episode(self._episode_end)
            self._publish_state()
            return
        timeout = self.parameters.command_timeout or 2.0 * self.dt
        if time.monotonic() - self._latest_command_at > timeout:
            self.diagnostics.increment('missing_commands')
            command = self._zero_command
        else:
            command = self._latest_command
        self._step(command)
        self._publish_state()

    def on_shutdown(self) -> None:
        self.env.close()


def main(args: list[str] | None = None) -> int:
    return run_node(PlantNode, args, name='plant')


if __name__ == '__main__':
    sys.exit(main())
