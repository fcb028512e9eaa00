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
  through the task file's reset provider, answering when it is done (or failed).

Reset providers (``reset``), each bounded by ``reset_timeout``:

``service``
    Calls the robot's own ``std_srvs/Trigger`` (``reset_service``): its homing routine.
``settle``
    Holds the safe command until the ``settle_features`` stay within
    ``±settle_tolerance`` for ``settle_time`` seconds (a pendulum hanging still).
``operator``
    A person resets the robot; the run waits and says so (terminal, ``/diagnostics``)
    until ``std_msgs/Empty`` on ``/sindyrl/operator_ready`` (``sindyrl-ros train`` sends
    it when Enter is pressed).
``simulation_interfaces``
    The ROS 2 standard simulator services (Gazebo's ros_gz_sim, Isaac Sim, O3DE):
    ``ResetSimulation`` to reset, ``SetSimulationState`` to pause and play.
``none``
    The plant resets itself; the node only holds the safe command for ``reset_hold``
    seconds (0: not at all) at each reset, and episode ends come from the termination
    expression and the episode length.

Every provider holds the safe command ``reset_hold`` seconds more after it is done. After
every episode the robot is reset the same way (not with ``none`` and no ``reset_hold``), so
each episode starts like a simulator's. Whatever the node waits for (the controller's
service, the first observation, a reset) is logged with a ``WAITING:`` prefix after
``wait_report`` seconds and shown in ``/diagnostics``.

Decisions live in ``core.episodes`` (``EpisodeLedger``, ``AnsweredSteps``,
``EpisodeControl``, ``Settle``); this node translates messages and services.
"""

from __future__ import annotations

import sys
import time

import numpy as np
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.task import Future
from sensor_msgs.msg import JointState
from std_msgs.msg import Empty
from std_srvs.srv import SetBool, Trigger

from sindyrl_ros.core import episodes as protocol
from sindyrl_ros.core.episodes import AnsweredSteps, EpisodeControl, EpisodeLedger, Settle
from sindyrl_ros.core.mcap_log import REWARD_NAME
from sindyrl_ros.core.reward import LEARNED_REWARD
from sindyrl_ros.nodes.common import (
    RELIABLE_QOS,
    SHARED_PARAMETERS,
    TRANSITION_QOS,
    WAIT_REPORT_PARAMETER,
    Diagnostics,
    EpisodeReporter,
    MessageError,
    ParamSpec,
    Waits,
    check_parameter_files,
    configuration_error,
    declare_parameters,
    read_vector,
    run_node,
    stamp_to_ns,
    task_from_parameters,
)

FIRST_OBSERVATION = 'the first observation on /sindyrl/observation'
PROVIDERS = ('service', 'settle', 'operator', 'simulation_interfaces', 'none')

EPISODES_PARAMETERS = [
    ParamSpec(
        'reset',
        'operator',
        'How the robot is reset after each episode and on /plant/reset: service (its own '
        'std_srvs/Trigger, reset_service), settle (hold the safe command until '
        'settle_features are still), operator (a person; Enter or /sindyrl/operator_ready), '
        'simulation_interfaces (the simulator standard services), none (it resets itself)',
        read_only=True,
        choices=PROVIDERS,
    ),
    ParamSpec(
        'reset_service',
        '/reset',
        'reset service: the std_srvs/Trigger service that resets (homes) the robot',
        read_only=True,
    ),
    ParamSpec(
        'simulation_services',
        '',
        'simulation_interfaces reset: namespace of the simulator services (reset_simulation, '
        "set_simulation_state); '' = the root namespace, e.g. /gzserver for ros_gz_sim",
        read_only=True,
    ),
    ParamSpec(
        'reset_timeout',
        30.0,
        'Seconds a reset may take before it fails (and the run ends with an error); 0 = no '
        'limit (the operator provider waits for a person)',
        range=(0.0, 86400.0),
        read_only=True,
    ),
    ParamSpec(
        'reset_hold',
        0.0,
        'Seconds the safe command is held after a reset (a plant that resets itself while '
        'its host is idle, or one that must come to rest)',
        range=(0.0, 3600.0),
        read_only=True,
    ),
    ParamSpec(
        'settle_features',
        [],
        'settle reset: observation names whose absolute value must stay below '
        'settle_tolerance (e.g. [theta_dot])',
        read_only=True,
        type=Parameter.Type.STRING_ARRAY,
    ),
    ParamSpec(
        'settle_tolerance',
        0.05,
        'settle reset: largest absolute value of each settle feature that counts as still',
        range=(1e-9, 1e9),
        read_only=True,
    ),
    ParamSpec(
        'settle_time',
        1.0,
        'settle reset: seconds the settle features must stay still',
        range=(0.0, 3600.0),
        read_only=True,
    ),
    ParamSpec(
        'start_paused',
        True,
        'Hold the robot (the controller on its safe command) until the run supervisor resumes it',
        read_only=True,
    ),
    ParamSpec(
        'observation_wait',
        1.0,
        'Seconds a step waits for its observations (and a reported reward) before its '
        'reward counts as missing',
        range=(0.01, 3600.0),
        read_only=True,
    ),
    ParamSpec(
        'gap_factor',
        1.5,
        'A step longer than gap_factor control periods is no step (a silent sensor or '
        'controller breaks the episode data)',
        range=(1.0, 100.0),
        read_only=True,
    ),
    ParamSpec(
        'controller_service',
        '/controller/activate',
        'The controller std_srvs/SetBool that deactivates (safe command) and activates it',
        read_only=True,
    ),
    ParamSpec(
        'service_timeout',
        5.0,
        'Seconds to wait for the controller or simulator to answer a call',
        range=(0.1, 3600.0),
        read_only=True,
    ),
    WAIT_REPORT_PARAMETER,
    ParamSpec(
        'diagnostics_period',
        1.0,
        'Seconds between /diagnostics messages',
        range=(0.01, 3600.0),
        read_only=True,
    ),
]
PARAMETERS = SHARED_PARAMETERS + EPISODES_PARAMETERS


class _Reset:
    """A reset in progress: its provider's stage and deadline."""

    def __init__(self, provider: str, started: float, timeout: float) -> None:
        self.provider = provider
        self.started = started
        self.deadline = started + timeout if timeout > 0 else float('inf')
        self.stage = 'provider'  # provider -> hold -> done
        self.hold_until = 0.0
        self.calling = False
        self.result: tuple[bool, str] | None = None  # a service provider's answer


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
        self.provider = p.reset
        self.control = EpisodeControl(
            start_paused=p.start_paused,
            reset_after_episode=self.provider != 'none' or p.reset_hold > 0.0,
        )
        self.settle: Settle | None = None
        if self.provider == 'settle':
            unknown = [n for n in p.settle_features if n not in self.observation_names]
            if not p.settle_features or unknown:
                raise configuration_error(
                    self,
                    'settle_features',
                    f'name the observations to watch, out of {self.observation_names}'
                    + (f' ({unknown} are not observations)' if unknown else ''),
                )
            indices = [self.observation_names.index(n) for n in p.settle_features]
            self.settle = Settle(indices, p.settle_tolerance, p.settle_time)

        # Main group: topics, timers, client answers. The run supervisor's service calls run
        # in their own group as coroutines that await what the main group does for them
        # (one executor thread: a waiting service call blocks nothing).
        self._main = MutuallyExclusiveCallbackGroup()
        self._service_group = MutuallyExclusiveCallbackGroup()
        self._deadlines: list[tuple[float, Future, dict]] = []
        self._latest_observation: np.ndarray | None = None
        self._reset: _Reset | None = None
        self._reset_waiters: list[tuple[Future, dict]] = []
        # Calls whose service is not there yet: (client, request, outcome, waiters).
        self._unsent: list[tuple] = []
        self._last_reset = (True, 'reset')
        # What the simulator was last asked (simulation_interfaces; None: nothing yet).
        self._simulation_paused: bool | None = None
        self._operator_ready = False

        self.diagnostics = Diagnostics(self, p.diagnostics_period)
        for key in ('steps', 'resets', 'reset_failures', 'operator_resets'):
            self.diagnostics.counters[key] = 0
        self.diagnostics.set('task', task.name)
        self.diagnostics.set('reset_provider', self.provider)
        self.diagnostics.set('state', self.control.state)
        self.waits = Waits(self, self.diagnostics, p.wait_report)
        self.waits.start(FIRST_OBSERVATION)

        main = self._main
        self.episodes = EpisodeReporter(self, self.diagnostics)
        self.create_subscription(
            JointState,
            'sindyrl/observation',
            self._on_observation,
            TRANSITION_QOS,
            callback_group=main,
        )
        self.create_subscription(
            JointState, 'sindyrl/action', self._on_action, TRANSITION_QOS, callback_group=main
        )
        if learned:
            self.create_subscription(
                JointState,
                'sindyrl/reward',
                self._on_reward,
                TRANSITION_QOS,
                callback_group=main,
            )
        self.create_subscription(
            Empty,
            'sindyrl/operator_ready',
            self._on_operator_ready,
            RELIABLE_QOS,
            callback_group=main,
        )
        self._controller = self.create_client(SetBool, p.controller_service, callback_group=main)
        self._reset_client = None
        self._simulation_reset = self._simulation_state = None
        if self.provider == 'service':
            self._reset_client = self.create_client(Trigger, p.reset_service, callback_group=main)
        elif self.provider == 'simulation_interfaces':
            self._make_simulation_clients()
        self.create_service(
            SetBool, 'plant/pause', self._on_pause, callback_group=self._service_group
        )
        self.create_service(
            Trigger, 'plant/reset', self._on_reset, callback_group=self._service_group
        )
        steady = Clock(clock_type=ClockType.STEADY_TIME)
        self.create_timer(0.05, self._tick, clock=steady, callback_group=main)
        self._execute(self.control.start())
        self.get_logger().info(
            f'episodes ready: task {task.name}, episodes of {task.episode_length} steps'
            + (f' or until {task.termination!r}' if task.termination else '')
            + f', reset by {self.provider}, '
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
        self._simulation_reset = self.create_client(
            ResetSimulation, f'{prefix}/reset_simulation', callback_group=self._main
        )
        self._simulation_state = self.create_client(
            SetSimulationState, f'{prefix}/set_simulation_state', callback_group=self._main
        )

    # ------------------------------------------------------------------ inputs (main group)

    def _on_observation(self, message: JointState) -> None:
        try:
            observation = read_vector(message, self.observation_names, 'position')
        except MessageError as error:
            self.diagnostics.reject(
                f'observation_{error.reason}', f'/sindyrl/observation: {error.detail}'
            )
            return
        stamp_ns = stamp_to_ns(message.header.stamp)
        self._latest_observation = observation
        self.waits.stop(FIRST_OBSERVATION)
        self.ledger.add_observation(stamp_ns, observation)
        self._count(self.steps.add_observation(stamp_ns, observation))

    def _on_action(self, message: JointState) -> None:
        try:
            action = read_vector(message, self.action_names, 'effort')
        except MessageError as error:
            self.diagnostics.reject(f'action_{error.reason}', f'/sindyrl/action: {error.detail}')
            return
        stamp_ns = stamp_to_ns(message.header.stamp)
        mode = message.header.frame_id or protocol.UNKNOWN
        self.ledger.add_action(stamp_ns, mode)
        self._count(self.steps.add_action(stamp_ns, action, mode))

    def _on_reward(self, message: JointState) -> None:
        try:
            reward = read_vector(message, (REWARD_NAME,), 'position')
        except MessageError as error:
            self.diagnostics.reject(f'reward_{error.reason}', f'/sindyrl/reward: {error.detail}')
            return
        self.ledger.add_reward(stamp_to_ns(message.header.stamp), float(reward[0]))

    def _on_operator_ready(self, message: Empty) -> None:
        if self._reset is not None and self._reset.provider == 'operator':
            self._operator_ready = True
        else:
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

    def _execute(self, actions: list[str], waiters: list | None = None) -> None:
        """Carry out what EpisodeControl decided, in order."""
        for action in actions:
            if action == protocol.DEACTIVATE:
                self._set_controller(False, waiters)
                if self.provider == 'simulation_interfaces' and self.control.paused:
                    self._set_simulation_paused(True, waiters)
            elif action == protocol.ACTIVATE:
                if self.provider == 'simulation_interfaces':
                    self._set_simulation_paused(False, waiters)
                self._set_controller(True, waiters)
            elif action == protocol.RESTART_STEPS:
                self.steps.restart()
            elif action == protocol.END_EPISODE:
                self.ledger.end_episode('reset')
            elif action == protocol.RUN_RESET:
                self._start_reset()
            elif action == protocol.ANSWER_RESETS:
                self._answer_resets()
        self.diagnostics.set('state', self.control.state)

    def _set_controller(self, active: bool, waiters: list | None) -> None:
        """Ask the controller to (de)activate; ``waiters`` learn when it answered."""
        what = 'activate' if active else 'deactivate'

        def outcome(response) -> tuple[bool, str]:
            return response.success, f'controller {what}: {response.message}'

        self._send(self._controller, SetBool.Request(data=active), outcome, waiters)

    def _set_simulation_paused(self, paused: bool, waiters: list | None) -> None:
        """Pause or play the simulator (simulation_interfaces SetSimulationState)."""
        from simulation_interfaces.msg import SimulationState
        from simulation_interfaces.srv import SetSimulationState

        self._simulation_paused = paused
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

    def _send(self, client, request, outcome, waiters: list | None) -> None:
        """Call ``client`` as soon as its service is there; a newer request to the same
        service replaces one not sent yet (its waiters wait for the newer one)."""
        waiters = list(waiters or [])
        _expect(waiters)
        for pending in self._unsent:
            if pending[0] is client:
                self._unsent.remove(pending)
                waiters = pending[3] + waiters
                break
        self._unsent.append((client, request, outcome, waiters))
        self._send_unsent()

    def _send_unsent(self) -> None:
        for pending in list(self._unsent):
            client, request, outcome, waiters = pending
            waiting = f'the service {client.srv_name}'
            self.waits.waiting(waiting, not client.service_is_ready())
            if not client.service_is_ready():
                continue
            self._unsent.remove(pending)
            future = client.call_async(request)

            def done(finished, outcome=outcome, waiters=waiters, name=client.srv_name) -> None:
                response = finished.result()
                ok, message = outcome(response) if response else (False, f'{name}: no answer')
                _settle(waiters, ok, message)

            future.add_done_callback(done)

    # ------------------------------------------------------------------ resets

    def _start_reset(self) -> None:
        now = time.monotonic()
        self._reset = _Reset(self.provider, now, self.parameters.reset_timeout)
        self._operator_ready = False
        if self.settle is not None:
            self.settle.restart()
        self.diagnostics.increment('resets')
        self.waits.start(self._reset_waits_for(self._reset))
        if self.provider == 'operator':
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
        if reset.stage == 'provider' and now > reset.deadline:
            self._reset_done(
                False,
                f'{reset.provider} reset took longer than {self.parameters.reset_timeout:g} s',
            )
            return
        if reset.stage == 'provider':
            done = self._provider_done(reset, now)
            if done is None:
                return
            ok, message = done
            if not ok:
                self._reset_done(False, message)
                return
            reset.stage = 'hold'
            reset.hold_until = now + self.parameters.reset_hold
        if reset.stage == 'hold' and now >= reset.hold_until:
            self._reset_done(True, f'{reset.provider} reset done in {now - reset.started:.1f} s')

    def _reset_waits_for(self, reset: _Reset) -> str:
        p = self.parameters
        return {
            'service': f'the reset service {p.reset_service}',
            'settle': f'{list(p.settle_features)} to stay within ±{p.settle_tolerance:g} for '
            f'{p.settle_time:g} s',
            'operator': 'the operator (Enter, or std_msgs/Empty on /sindyrl/operator_ready)',
            'simulation_interfaces': f'{p.simulation_services}/reset_simulation',
            'none': 'the plant to reset itself',
        }[reset.provider]

    def _provider_done(self, reset: _Reset, now: float) -> tuple[bool, str] | None:
        """(ok, message) once the provider finished, None while it runs."""
        if reset.provider == 'none':
            return True, 'the plant resets itself'
        if reset.provider == 'operator':
            return (True, 'operator ready') if self._operator_ready else None
        if reset.provider == 'settle':
            observation = self._latest_observation
            if observation is not None and self.settle.update(now, observation):
                return True, 'settled'
            return None
        # service / simulation_interfaces: one call, answered through reset.result
        if reset.result is not None:
            return reset.result
        if reset.calling:
            return None
        client = self._reset_client if reset.provider == 'service' else self._simulation_reset
        if not client.service_is_ready():
            return None
        reset.calling = True
        if reset.provider == 'service':
            future = client.call_async(Trigger.Request())
        else:
            from simulation_interfaces.srv import ResetSimulation

            request = ResetSimulation.Request()
            request.scope = ResetSimulation.Request.SCOPE_DEFAULT
            future = client.call_async(request)

        def done(finished) -> None:
            response = finished.result()
            if response is None:
                reset.result = (False, f'{client.srv_name}: no answer')
            elif reset.provider == 'service':
                reset.result = (response.success, f'{client.srv_name}: {response.message}')
            else:
                ok = response.result.result == response.result.RESULT_OK
                reset.result = (
                    ok,
                    f'{client.srv_name}: '
                    + ('reset' if ok else f'refused ({response.result.error_message})'),
                )

        future.add_done_callback(done)
        return None

    def _reset_done(self, ok: bool, message: str) -> None:
        self.waits.stop(self._reset_waits_for(self._reset))
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
        if not ok:
            self.control.paused = True
        self._execute(self.control.reset_finished())
        if self.control.state == protocol.HELD and self._simulation_paused is False:
            # Held during the reset (the supervisor's pause came meanwhile, or the reset
            # failed): the controller already holds the safe command, the simulator must
            # stop too.
            self._set_simulation_paused(True, None)

    def _answer_resets(self) -> None:
        ok, message = self._last_reset
        waiters, self._reset_waiters = self._reset_waiters, []
        for future, result in waiters:
            result['ok'] = ok
            result['messages'] = [message]
            if not future.done():
                future.set_result(True)

    # ------------------------------------------------------------------ services

    async def _outcome(self, future: Future, result: dict, timeout: float) -> dict:
        """Await what the main group does for a service call, at most ``timeout`` s."""
        if not future.done():
            self._deadlines.append((time.monotonic() + timeout, future, result))
            await future
        return result

    async def _on_pause(self, request: SetBool.Request, response: SetBool.Response):
        hold = bool(request.data)
        future, result = Future(), {'outstanding': 0}
        self._execute(self.control.pause(hold), [(future, result)])
        if result['outstanding'] == 0:
            future.set_result(True)  # nothing to wait for (already so, or resetting)
        await self._outcome(future, result, 2.0 * self.parameters.service_timeout)
        response.success = bool(result.get('ok', True))
        detail = '; '.join(result.get('messages', []))
        response.message = ('held' if hold else 'running') + (f' ({detail})' if detail else '')
        self.get_logger().info(
            f'/plant/pause {str(hold).lower()}: {response.message} after '
            f'{self.ledger.real_steps} real steps'
        )
        return response

    async def _on_reset(self, request: Trigger.Request, response: Trigger.Response):
        p = self.parameters
        timeout = p.reset_timeout + p.reset_hold + 5.0 if p.reset_timeout > 0 else float('inf')
        future, result = Future(), {}
        self._reset_waiters.append((future, result))
        self._execute(self.control.request_reset())
        await self._outcome(future, result, timeout)
        response.success = bool(result.get('ok', False))
        response.message = '; '.join(result.get('messages', [])) or 'reset'
        return response

    # ------------------------------------------------------------------ timer

    def _tick(self) -> None:
        now = time.monotonic()
        for deadline, future, result in list(self._deadlines):
            if future.done() or now > deadline:
                self._deadlines.remove((deadline, future, result))
            if not future.done() and now > deadline:
                result['ok'] = False
                result.setdefault('messages', []).append('no outcome in time')
                future.set_result(False)
        self._send_unsent()
        self._advance_reset(now)
        _, records = self.ledger.poll(now)
        self.episodes.publish(records)
        self.diagnostics.counters['missing_rewards'] = self.ledger.missing_rewards
        self.waits.check()


def _expect(waiters: list) -> None:
    """Each waiting request expects one more answer."""
    for _, result in waiters:
        result['outstanding'] = result.get('outstanding', 0) + 1


def _settle(waiters: list, ok: bool, message: str) -> None:
    """One answer came: record it; a request with no answer outstanding is released."""
    for future, result in waiters:
        result['ok'] = result.get('ok', True) and ok
        result.setdefault('messages', []).append(message)
        result['outstanding'] -= 1
        if result['outstanding'] == 0 and not future.done():
            future.set_result(True)


def main(args: list[str] | None = None) -> int:
    return run_node(EpisodesNode, args, name='episodes')


if __name__ == '__main__':
    sys.exit(main())
