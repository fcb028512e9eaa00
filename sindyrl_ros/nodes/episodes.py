"""Episodes node: a robot the package does not own, as a plant the run supervisor can drive.

A ros2_control robot (a ``joint_state_broadcaster`` and a forward command controller) or a
Gazebo world runs on its own clock and offers none of what a training run needs from a
plant: this node provides it, from the observations and the controller's answers.

* ``/sindyrl/episode``: episodes cut at the task's ``episode_length`` or where its
  ``termination`` expression holds, scored with the task's reward (an expression or a
  registered name; a learned reward: the rewards the robot side reports on
  ``/sindyrl/reward``). A step runs from one observation the controller answered to the
  next one it answered (``core.episodes.AnsweredSteps``), so joint states may come at
  any rate above the control rate.
* ``/plant/pause`` (std_srvs/SetBool): true holds the robot, which on a real robot means
  the controller sends its safe command (``/controller/activate`` false) and no step
  counts; false lets the controller drive again. With the ``simulation_interfaces``
  provider the simulator is really paused too (``SetSimulationState``).
* ``/plant/reset`` (std_srvs/Trigger): ends the episode in progress and resets the robot
  through the task file's reset provider (``reset``: ``service``, ``settle``,
  ``operator``, ``simulation_interfaces`` or ``none``; see ``core.resets``), answering
  when it is done (or failed). The operator provider waits for ``std_msgs/Empty`` on
  ``/sindyrl/operator_ready`` (``sindyrl-ros train`` sends it when Enter is pressed).

Whatever the node waits for (the controller's service, the first observation, a reset) is
logged with a ``WAITING:`` prefix after ``wait_report`` seconds and shown in
``/diagnostics``. Decisions live in ``core.episodes`` (``EpisodeLedger``,
``AnsweredSteps``), ``core.episode_control`` (``EpisodeControl``, ``Settle``) and
``core.resets`` (``ResetProvider``, ``ResetRun``); this node translates messages and
services.
"""

from __future__ import annotations

import sys
import time

import numpy as np
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from rclpy.task import Future
from sensor_msgs.msg import JointState
from std_msgs.msg import Empty
from std_srvs.srv import SetBool, Trigger

from sindyrl_ros.core import episode_control as protocol
from sindyrl_ros.core.episode_control import Answer, EpisodeControl, PendingCalls, Settle
from sindyrl_ros.core.episodes import UNKNOWN, AnsweredSteps, EpisodeLedger
from sindyrl_ros.core.mcap_writer import REWARD_NAME
from sindyrl_ros.core.resets import ResetProvider, ResetRun
from sindyrl_ros.core.reward import LEARNED_REWARD
from sindyrl_ros.params.episodes import PARAMETERS
from sindyrl_ros.ros.diagnostics import Diagnostics, EpisodeReporter, Waits
from sindyrl_ros.ros.messages import MessageError, read_vector, stamp_to_ns
from sindyrl_ros.ros.parameters import (
    check_parameter_files,
    configuration_error,
    declare_parameters,
    task_from_parameters,
)
from sindyrl_ros.ros.qos import RELIABLE_QOS, TRANSITION_QOS
from sindyrl_ros.ros.runtime import run_node

FIRST_OBSERVATION = 'the first observation on /sindyrl/observation'


class EpisodesNode(Node):
    """Episodes, holds and resets of a plant on its own clock (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__('episodes')
        self.parameters = declare_parameters(self, PARAMETERS)
        check_parameter_files(self)
        p = self.parameters
        self.task = task_from_parameters(self, p)
        task = self.task
        self.observation_names = list(task.observation_names)
        self.action_names = list(task.action_names)
        learned = task.reward == LEARNED_REWARD
        self.ledger = EpisodeLedger(
            None if learned else task.reward_function(),
            task.episode_length,
            task.name,
            observation_wait=p.observation_wait,
            termination=task.termination_function(),
        )
        self.steps = AnsweredSteps(task.dt, gap_factor=p.gap_factor)
        settle = None
        if p.reset == 'settle':
            try:
                settle = Settle.watching(
                    p.settle_features, self.observation_names, p.settle_tolerance, p.settle_time
                )
            except ValueError as error:
                raise configuration_error(self, 'settle_features', str(error)) from None
        self.provider = ResetProvider(
            p.reset, p.reset_timeout, p.reset_hold, p.reset_service, p.simulation_services, settle
        )
        self.control = EpisodeControl(
            start_paused=p.start_paused,
            reset_after_episode=self.provider.reset_after_episode,
            simulation=self.provider.simulation,
        )

        # Main group: topics, timers, client answers. The run supervisor's service calls run
        # in their own group as coroutines that await what the main group does for them
        # (one executor thread: a waiting service call blocks nothing).
        self._main = main = MutuallyExclusiveCallbackGroup()
        self._answers: list[Answer] = []  # to the run supervisor's requests in progress
        self._latest_observation: np.ndarray | None = None
        self._reset: ResetRun | None = None
        self._reset_waiters: list[Answer] = []
        # Calls whose service is not there yet, by client: (request, outcome).
        self._unsent = PendingCalls()
        self._last_reset = (True, 'reset')

        self.diagnostics = Diagnostics(self, p.diagnostics_period)
        for key in ('steps', 'resets', 'reset_failures', 'operator_resets'):
            self.diagnostics.counters[key] = 0
        self.diagnostics.set('task', task.name)
        self.diagnostics.set('reset_provider', self.provider.kind)
        self.diagnostics.set('state', self.control.state)
        self.waits = Waits(self, self.diagnostics, p.wait_report)
        self.waits.start(FIRST_OBSERVATION)

        self.episodes = EpisodeReporter(self, self.diagnostics)
        topics = [
            ('sindyrl/observation', self._on_observation),
            ('sindyrl/action', self._on_action),
        ]
        if learned:
            topics.append(('sindyrl/reward', self._on_reward))
        for topic, callback in topics:
            self.create_subscription(
                JointState, topic, callback, TRANSITION_QOS, callback_group=main
            )
        self.create_subscription(
            Empty,
            'sindyrl/operator_ready',
            self._on_operator_ready,
            RELIABLE_QOS,
            callback_group=main,
        )
        self._controller = self.create_client(SetBool, p.controller_service, callback_group=main)
        self._reset_client = self._simulation_state = None
        if self.provider.kind == 'service':
            self._reset_client = self.create_client(Trigger, p.reset_service, callback_group=main)
        elif self.provider.simulation:
            self._make_simulation_clients()
        services = MutuallyExclusiveCallbackGroup()
        self.create_service(SetBool, 'plant/pause', self._on_pause, callback_group=services)
        self.create_service(Trigger, 'plant/reset', self._on_reset, callback_group=services)
        steady = Clock(clock_type=ClockType.STEADY_TIME)
        self.create_timer(0.05, self._tick, clock=steady, callback_group=main)
        self._execute(self.control.start())
        self.get_logger().info(
            f'episodes ready: task {task.name}, episodes of {task.episode_length} steps'
            + (f' or until {task.termination!r}' if task.termination else '')
            + f', reset by {self.provider.kind}, '
            + ('held until /plant/pause false' if self.control.paused else 'running')
        )

    def _make_simulation_clients(self) -> None:
        try:
            from simulation_interfaces.srv import ResetSimulation, SetSimulationState
        except ImportError:
            raise configuration_error(
                self,
                'reset',
                'simulation_interfaces is not installed: install the ROS package '
                '(ros-$ROS_DISTRO-simulation-interfaces) or build it into the venv '
                '(tools/build_interfaces.sh)',
            ) from None
        prefix = self.parameters.simulation_services.rstrip('/')
        self._reset_client = self.create_client(
            ResetSimulation, f'{prefix}/reset_simulation', callback_group=self._main
        )
        self._simulation_state = self.create_client(
            SetSimulationState, f'{prefix}/set_simulation_state', callback_group=self._main
        )

    # ------------------------------------------------------------------ inputs (main group)

    def _read(self, message: JointState, names, field: str, topic: str) -> np.ndarray | None:
        """The named vector of a message; None (and counted) when it is refused."""
        try:
            return read_vector(message, names, field)
        except MessageError as error:
            self.diagnostics.reject(f'{topic}_{error.reason}', f'/sindyrl/{topic}: {error.detail}')
            return None

    def _on_observation(self, message: JointState) -> None:
        observation = self._read(message, self.observation_names, 'position', 'observation')
        if observation is None:
            return
        stamp_ns = stamp_to_ns(message.header.stamp)
        self._latest_observation = observation
        self.waits.stop(FIRST_OBSERVATION)
        self.ledger.add_observation(stamp_ns, observation)
        self._count(self.steps.add_observation(stamp_ns, observation))

    def _on_action(self, message: JointState) -> None:
        action = self._read(message, self.action_names, 'effort', 'action')
        if action is None:
            return
        stamp_ns = stamp_to_ns(message.header.stamp)
        mode = message.header.frame_id or UNKNOWN
        self.ledger.add_action(stamp_ns, mode)
        self._count(self.steps.add_action(stamp_ns, action, mode))

    def _on_reward(self, message: JointState) -> None:
        reward = self._read(message, (REWARD_NAME,), 'position', 'reward')
        if reward is not None:
            self.ledger.add_reward(stamp_to_ns(message.header.stamp), float(reward[0]))

    def _on_operator_ready(self, message: Empty) -> None:
        if self._reset is None or not self._reset.operator_ready():
            self.get_logger().info('operator ready, but no reset is waiting for one: ignored')

    def _count(self, steps: list) -> None:
        """Counted steps go to the ledger; an episode end starts a reset."""
        now = time.monotonic()
        for step in steps:
            if not self.control.counting:
                continue
            end = self.ledger.add_step(
                step.start_ns,
                step.end_ns,
                step.action,
                step.start_ns,
                now,
                observation_after=step.observation_after,
            )
            self.diagnostics.counters['steps'] = self.ledger.real_steps
            self.diagnostics.set('episode_step', self.ledger.episode_steps)
            if end:
                self._execute(self.control.episode_ended())

    # ------------------------------------------------------------------ protocol

    def _execute(self, actions: list[str], waiters: list[Answer] | None = None) -> None:
        """Carry out what EpisodeControl decided, in order."""
        for action in actions:
            if action in (protocol.DEACTIVATE, protocol.ACTIVATE):
                self._set_controller(action == protocol.ACTIVATE, waiters)
            elif action in (protocol.PAUSE_SIMULATION, protocol.PLAY_SIMULATION):
                self._set_simulation_paused(action == protocol.PAUSE_SIMULATION, waiters)
            elif action == protocol.RESTART_STEPS:
                self.steps.restart()
            elif action == protocol.END_EPISODE:
                self.ledger.end_episode('reset')
            elif action == protocol.RUN_RESET:
                self._start_reset()
            elif action == protocol.ANSWER_RESETS:
                self._answer_resets()
        self.diagnostics.set('state', self.control.state)

    def _set_controller(self, active: bool, waiters: list[Answer] | None) -> None:
        """Ask the controller to (de)activate; ``waiters`` learn when it answered."""
        what = 'activate' if active else 'deactivate'

        def outcome(response) -> tuple[bool, str]:
            return response.success, f'controller {what}: {response.message}'

        self._send(self._controller, SetBool.Request(data=active), outcome, waiters)

    def _set_simulation_paused(self, paused: bool, waiters: list[Answer] | None) -> None:
        """Pause or play the simulator (simulation_interfaces SetSimulationState)."""
        from simulation_interfaces.msg import SimulationState
        from simulation_interfaces.srv import SetSimulationState

        request = SetSimulationState.Request()
        request.state.state = (
            SimulationState.STATE_PAUSED if paused else SimulationState.STATE_PLAYING
        )

        def outcome(response) -> tuple[bool, str]:
            # Gazebo answers RESULT_OK for the state it is already in, the standard 101.
            result = response.result
            ok = result.result in (
                result.RESULT_OK,
                SetSimulationState.Response.ALREADY_IN_TARGET_STATE,
            )
            done = f'simulation {"paused" if paused else "playing"}'
            return ok, done if ok else f'{done} refused: {result.error_message}'

        self._send(self._simulation_state, request, outcome, waiters)

    def _send(self, client, request, outcome, waiters: list[Answer] | None) -> None:
        """Call ``client`` as soon as its service is there (``core.episode_control.PendingCalls``);
        ``outcome(response)`` reads the answer as (ok, message) for the ``waiters``."""
        self._unsent.add(client, (request, outcome), waiters or [])
        self._send_unsent()

    def _send_unsent(self) -> None:
        for client in self._unsent.services:
            ready = client.service_is_ready()
            self.waits.waiting(f'the service {client.srv_name}', not ready)
            if not ready:
                continue
            (request, outcome), waiters = self._unsent.take(client)
            future = client.call_async(request)

            def done(finished, outcome=outcome, waiters=waiters, name=client.srv_name) -> None:
                response = finished.result()
                ok, message = outcome(response) if response else (False, f'{name}: no answer')
                for answer in waiters:
                    answer.add(ok, message)

            future.add_done_callback(done)

    # ------------------------------------------------------------------ resets

    def _start_reset(self) -> None:
        now = time.monotonic()
        self._reset = self.provider.start(now)
        self.diagnostics.increment('resets')
        self.waits.start(self.provider.waiting_for)
        if self.provider.kind == 'operator':
            self.diagnostics.increment('operator_resets')
            self.diagnostics.warnings['operator'] = (
                'waiting for the operator to reset the robot (Enter, or std_msgs/Empty on '
                '/sindyrl/operator_ready)'
            )
            self.get_logger().warning(
                f'WAITING: operator, please reset the robot for episode '
                f'{self.ledger.episode_number}, then press Enter (or publish std_msgs/Empty on '
                '/sindyrl/operator_ready); the robot holds its safe command meanwhile'
            )
        self._advance_reset(now)

    def _advance_reset(self, now: float) -> None:
        """One step of the reset in progress (called on every tick)."""
        reset = self._reset
        if reset is None:
            return
        outcome = reset.advance(now, self._latest_observation)
        if outcome is not None:
            self._reset_done(*outcome)
        elif reset.needs_call and self._reset_client.service_is_ready():
            self._call_reset_provider(reset)

    def _call_reset_provider(self, reset: ResetRun) -> None:
        """The provider's one call: the robot's Trigger, or the simulator's ResetSimulation."""
        client = self._reset_client
        reset.call_sent()
        if self.provider.kind == 'service':
            request = Trigger.Request()
        else:
            from simulation_interfaces.srv import ResetSimulation

            request = ResetSimulation.Request()
            request.scope = ResetSimulation.Request.SCOPE_DEFAULT

        def done(finished) -> None:
            response = finished.result()
            if response is None:
                reset.answered(False, f'{client.srv_name}: no answer')
            elif self.provider.kind == 'service':
                reset.answered(response.success, f'{client.srv_name}: {response.message}')
            else:
                ok = response.result.result == response.result.RESULT_OK
                refused = f'refused ({response.result.error_message})'
                reset.answered(ok, f'{client.srv_name}: ' + ('reset' if ok else refused))

        client.call_async(request).add_done_callback(done)

    def _reset_done(self, ok: bool, message: str) -> None:
        self.waits.stop(self.provider.waiting_for)
        self._reset = None
        self.diagnostics.warnings.pop('operator', None)
        if ok:
            self.diagnostics.errors.pop('reset', None)
            self.get_logger().info(message)
        else:
            self.diagnostics.increment('reset_failures')
            self.diagnostics.errors['reset'] = message
            self.get_logger().error(f'reset failed: {message}; the robot holds its safe command')
        self._last_reset = (ok, message)
        # A failed reset leaves the robot held: nothing moves unsupervised.
        self._execute(self.control.reset_finished(ok))

    def _answer_resets(self) -> None:
        waiters, self._reset_waiters = self._reset_waiters, []
        for answer in waiters:
            answer.complete(*self._last_reset)

    # ------------------------------------------------------------------ services

    def _answer(self, timeout: float, ok: bool) -> tuple[Answer, Future]:
        """An answer to a request, which the main group completes at most ``timeout`` s on."""
        future = Future()
        answer = Answer(time.monotonic() + timeout, lambda: future.set_result(True), ok=ok)
        self._answers.append(answer)
        return answer, future

    async def _on_pause(self, request: SetBool.Request, response: SetBool.Response):
        hold = bool(request.data)
        answer, future = self._answer(2.0 * self.parameters.service_timeout, ok=True)
        self._execute(self.control.pause(hold), [answer])
        if answer.outstanding == 0:
            answer.complete()  # nothing to wait for (already so, or resetting)
        await future
        response.success = answer.ok
        detail = answer.message
        response.message = ('held' if hold else 'running') + (f' ({detail})' if detail else '')
        self.get_logger().info(
            f'/plant/pause {str(hold).lower()}: {response.message} after '
            f'{self.ledger.real_steps} real steps'
        )
        return response

    async def _on_reset(self, request: Trigger.Request, response: Trigger.Response):
        answer, future = self._answer(self.provider.answer_within, ok=False)
        self._reset_waiters.append(answer)
        self._execute(self.control.request_reset())
        await future
        response.success = answer.ok
        response.message = answer.message or 'reset'
        return response

    # ------------------------------------------------------------------ timer

    def _tick(self) -> None:
        now = time.monotonic()
        self._answers = [answer for answer in self._answers if not answer.expire(now)]
        self._send_unsent()
        self._advance_reset(now)
        _, records = self.ledger.poll(now)
        self.episodes.publish(records)
        self.diagnostics.counters['missing_rewards'] = self.ledger.missing_rewards
        self.waits.check()


def main(args: list[str] | None = None) -> int:
    return run_node(EpisodesNode, args, name='episodes')


if __name__ == '__main__':
    sys.exit(main())
