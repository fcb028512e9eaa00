"""Run supervisor: drives a Dyna run across the graph and writes its results.

Synchronous Dyna (``hold_for_policy``, the default), as ``core.dyna.run_dyna`` runs it:
the controller explores (random actions until a policy exists) for ``initial_steps``
real training steps, then, at the end of an episode (episodes stay whole), the plant is
held (``/plant/pause`` true) while the model updater refits and the policy trainer
trains, so that no real step is spent waiting. When a policy trained on a model newer
than the current policy's source model arrives, it is evaluated and then explores
(with the controller's exploration noise) for ``steps_per_iteration`` training steps,
and the plant is held again; and so on. A hold also ends, and exploration goes on for
another chunk, when the model updater's fit state (``/sindyrl/fit_state``, typed; see
``core.protocol``) says its fit of the new data was rejected or failed
(``model_rejected``) or that no refit started and more transitions are needed for one
(``no_refit``: ``refit_every`` does not divide the chunk), or after ``hold_timeout``.
Every mode switch happens while the plant is held (pause, set mode, reset, resume), so
no episode mixes explore and evaluate steps. Holds and resumes go to progress.jsonl
(``hold`` / ``resume`` events with their reason), the held wall time to summary.json.

Free running (``hold_for_policy`` false): the plant runs episodes and the controller
explores while the model updater learns and the policy trainer trains; when a new
policy arrives, the supervisor waits for the current episode to end and evaluates it.

Evaluation: the controller switches to deterministic actions (``/controller/set_mode``
false), the plant is reset (``/plant/reset``) and runs ``eval_episodes`` evaluation
episodes, whose mean return is recorded against the real training steps so far; then
the controller goes back to exploring. Evaluation steps are counted apart
(``eval_steps``): they are for reporting, not training data, and SINDy-RL's claim is
about the training interactions.

The run ends when the mean evaluation return reaches ``threshold`` or the training steps
reach ``budget`` (checked at episode ends; when holding, the policy trained on the last
chunk is awaited and evaluated first, as the core loop does). Every event goes to
``run_dir/progress.jsonl`` as it happens, the result to ``run_dir/summary.json``, and the
process exits with code 0 so a launcher knows the run is over.

Resume (``resume`` true, ``sindyrl-ros train --resume <run dir>``): the run goes on in the
same run_dir after a crash or a stop. The real steps already spent come from the progress
log and the recording (whichever counts more), the evaluations and holds from the progress
log, and the policy last released there is not taken for a new one when the policy
trainer republishes it. A run resumed past its initial chunk starts with a hold (reason
``resume``): the model updater refits on every recorded transition at once, and no real
step is spent before the policy trained on that model comes. The budget counts every
earlier real step.
"""

from __future__ import annotations

import json
from pathlib import Path
import sys
import time
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import String
from std_srvs.srv import SetBool, Trigger

from sindyrl_ros.core import protocol as dyna
from sindyrl_ros.core.mcap_log import LogFormatError, read_recording, recorded_steps
from sindyrl_ros.core.policies import policy_from_json
from sindyrl_ros.core.progress import RunHistory
from sindyrl_ros.core.protocol import Decision, DynaProtocol, FitState, ProtocolSettings
from sindyrl_ros.core.serialization import FormatError, parse_json_text, save_json_document
from sindyrl_ros.nodes.common import (
    LATCHED_QOS,
    RELIABLE_QOS,
    RESUME_PARAMETER,
    SHARED_PARAMETERS,
    WAIT_REPORT_PARAMETER,
    Diagnostics,
    ParamSpec,
    Waits,
    check_parameter_files,
    configuration_error,
    declare_parameters,
    json_safe,
    run_node,
)
from sindyrl_ros.nodes.model_updater import task_from_parameters

RUN_SUPERVISOR_PARAMETERS = [
    ParamSpec(
        'run_dir',
        'sindyrl_run',
        'Directory of this run: progress.jsonl and summary.json are written here',
        read_only=True,
    ),
    ParamSpec(
        'budget',
        10_000,
        'Real training steps allowed (evaluation steps are not '
        'counted); the run ends when they are spent',
        range=(1, 1_000_000_000),
        read_only=True,
    ),
    ParamSpec(
        'eval_episodes',
        10,
        'Deterministic episodes per evaluation',
        range=(1, 100_000),
        read_only=True,
    ),
    ParamSpec(
        'eval_every_policy',
        True,
        'Evaluate every new policy; false = only the latest '
        'policy, once, when the budget is spent',
        read_only=True,
    ),
    ParamSpec(
        'stop_at_threshold',
        True,
        'End the run at the first evaluation at or above the threshold; false = go on to '
        'the budget (to see whether the threshold holds; steps_to_threshold keeps the first '
        'crossing)',
        read_only=True,
    ),
    ParamSpec(
        'max_wall_time',
        0.0,
        'Seconds after which the run ends even if neither the '
        'threshold nor the budget is reached; 0 = no limit',
        range=(0.0, 1e9),
        read_only=True,
    ),
    ParamSpec(
        'service_timeout',
        10.0,
        'Seconds to wait for a controller/plant service answer before the run ends with an error',
        range=(0.1, 3600.0),
        read_only=True,
    ),
    ParamSpec(
        'reset_timeout',
        0.0,
        'Seconds to wait for /plant/reset; 0 = as long as the plant takes (every plant bounds '
        'its own reset: the episodes node and the serial bridge have a reset_timeout, and an '
        'operator reset may take minutes)',
        range=(0.0, 1e9),
        read_only=True,
    ),
    WAIT_REPORT_PARAMETER,
    RESUME_PARAMETER,
    ParamSpec(
        'hold_for_policy',
        True,
        'Synchronous Dyna: hold the plant (/plant/pause) after each chunk of exploration '
        'until a policy trained on the new data arrives; false = the plant runs freely '
        'while models and policies are learned',
        read_only=True,
    ),
    ParamSpec(
        'initial_steps',
        200,
        'Real training steps of random exploration before the first hold (ends at an '
        'episode end at or after this many steps)',
        range=(1, 1_000_000_000),
    ),
    ParamSpec(
        'steps_per_iteration',
        200,
        'Real training steps explored with each new policy before the plant is held again '
        '(at an episode end; best a multiple of the model updater refit_every)',
        range=(1, 1_000_000_000),
    ),
    ParamSpec(
        'hold_timeout',
        900.0,
        'Seconds a hold waits for a new policy before exploration goes on anyway; 0 = no limit',
        range=(0.0, 1e9),
    ),
    ParamSpec(
        'diagnostics_period',
        1.0,
        'Seconds between /diagnostics messages',
        range=(0.01, 3600.0),
        read_only=True,
    ),
]

# Seconds into a hold after which the model updater's fit state counts the chunk's last
# transitions (they travel to it, its state travels back: well under a second on one host),
# so that "no refit started, more transitions needed" means none is coming.
FIT_STATE_SETTLE_S = 1.0
# Who offers each service the supervisor calls (said when it waits for one).
SERVICE_OWNERS = {
    '/controller/set_mode': 'the controller',
    '/plant/reset': 'the plant: the simulated plant, the serial bridge or the episodes node',
    '/plant/pause': 'the plant: the simulated plant, the serial bridge or the episodes node',
}


# Everything this node declares. The threshold is the shared task parameter: the task's
# own unless the /** section gives one.
PARAMETERS = SHARED_PARAMETERS + RUN_SUPERVISOR_PARAMETERS


EXPLORE, WAIT_EPISODE_END, SWITCHING, HOLDING, EVALUATING, FINISHED = (
    'explore',
    'wait_episode_end',
    'switching',
    'holding',
    'evaluating',
    'finished',
)


class RunSupervisor(Node):
    """Explore / evaluate protocol over the controller and plant services (module docstring)."""

    def __init__(self) -> None:
        super().__init__('run_supervisor')
        self.parameters = declare_parameters(self, PARAMETERS)
        check_parameter_files(self)
        self.task = task_from_parameters(self, self.parameters)
        p = self.parameters
        self.threshold = self.task.threshold
        self.run_dir = Path(p.run_dir).expanduser()
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise configuration_error(self, 'run_dir', f'cannot create it: {error}') from None
        self.progress_path = self.run_dir / 'progress.jsonl'
        self.summary_path = self.run_dir / 'summary.json'
        self._progress_file = open(self.progress_path, 'a', encoding='utf-8')  # noqa: SIM115

        self.started = time.monotonic()
        self.state = 'starting'
        self.plant_steps = 0  # every real step the plant made (training + evaluation)
        self.eval_steps = 0
        self.episodes = 0
        self.eval_returns: list[float] = []
        self.evaluations: list[dict] = []
        self.model: dict = {}  # the newest model card's summary
        self.models: dict[int, dict] = {}  # every model's, by version
        self.policy: dict = {}
        self.evaluating_policy: dict = {}
        self._to_evaluation = False  # from the switch to evaluate mode until its result
        self._restart_pending = False
        self.stop_reason = ''
        self.node_status: dict[str, dict] = {}
        self._pending_calls: list[tuple[Any, Any, str, float]] = []

        self._summary_written = False
        # The protocol's decisions (explore, hold, evaluate, finish) are core.protocol's;
        # this node turns them into service calls and keeps the time of the holds.
        self.protocol = DynaProtocol(self._protocol_settings())
        self.held_wall_time = 0.0
        self._hold_started: float | None = None
        self._hold_reason = ''
        self._plant_paused = False
        # From sending /plant/pause false to its answer the plant already runs: episodes
        # ending meanwhile are handled once the state the resume leads to is set.
        self._resuming = False
        self._deferred_episodes: list[tuple[bool, float]] = []

        # A resumed run goes on from what its earlier starts did; the plant's own step count
        # (in its episode records) starts again from 0 on this start.
        self.starts = 1
        self._plant_steps_before = 0
        resumed = self._resume() if p.resume else None
        # A resumed run past its initial chunk holds first: the model updater refits on
        # everything recorded, and real steps are not spent before that model's policy.
        self._hold_on_start = bool(
            resumed is not None
            and p.hold_for_policy
            and (self.holds > 0 or self.real_steps >= p.initial_steps)
        )

        self.diagnostics = Diagnostics(self, p.diagnostics_period)
        self.waits = Waits(self, self.diagnostics, p.wait_report)
        self.diagnostics.counters['episodes_seen'] = 0
        for key in (
            'state',
            'real_steps',
            'eval_steps',
            'eval_return_mean',
            'model_version',
            'policy_version',
        ):
            self.diagnostics.set(key, 'none')
        self.diagnostics.set('state', self.state)
        self.diagnostics.set('holds', 0)
        self.diagnostics.set('held_wall_time_s', 0.0)

        self.set_mode_client = self.create_client(SetBool, '/controller/set_mode')
        self.reset_client = self.create_client(Trigger, '/plant/reset')
        self.pause_client = self.create_client(SetBool, '/plant/pause')
        self.create_subscription(String, 'sindyrl/episode', self._on_episode, RELIABLE_QOS)
        self.create_subscription(String, 'sindyrl/model', self._on_model, LATCHED_QOS)
        self.create_subscription(String, 'sindyrl/policy', self._on_policy, LATCHED_QOS)
        self.create_subscription(JointState, 'sindyrl/fit_state', self._on_fit_state, LATCHED_QOS)
        # Kept for the summary (people read it); no decision is taken from /diagnostics.
        self.create_subscription(DiagnosticArray, '/diagnostics', self._on_diagnostics, 10)
        # Steady clock: sim time stands still while a lockstep plant waits, and the
        # start-up and the time limits must not depend on it.
        self.create_timer(0.1, self._tick, clock=Clock(clock_type=ClockType.STEADY_TIME))
        self._event(
            'start',
            task=self.task.name,
            budget=p.budget,
            threshold=self.threshold,
            eval_episodes=p.eval_episodes,
            hold_for_policy=p.hold_for_policy,
            initial_steps=p.initial_steps,
            steps_per_iteration=p.steps_per_iteration,
            **({'resumed': resumed} if resumed is not None else {}),
        )
        hold = (
            f'holding the plant after {p.initial_steps} initial and every '
            f'{p.steps_per_iteration} training steps'
            if p.hold_for_policy
            else 'plant runs freely'
        )
        if resumed is not None:
            self.get_logger().info(
                f'resuming the run in {self.run_dir} (start {self.starts}): '
                f'{self.real_steps} real training steps and {self.eval_steps} evaluation steps '
                f'already spent, {len(self.evaluations)} evaluations, {self.holds} holds'
            )
        self.get_logger().info(
            f'run supervisor ready: task {self.task.name}, budget {p.budget} real steps, '
            f'threshold {self.threshold}, {p.eval_episodes} evaluation episodes, {hold}, '
            f'writing to {self.run_dir}'
        )

    def _protocol_settings(self) -> ProtocolSettings:
        p = self.parameters
        return ProtocolSettings(
            budget=p.budget,
            threshold=self.threshold,
            initial_steps=p.initial_steps,
            steps_per_iteration=p.steps_per_iteration,
            eval_every_policy=p.eval_every_policy,
            hold_for_policy=p.hold_for_policy,
            stop_at_threshold=p.stop_at_threshold,
        )

    @property
    def holds(self) -> int:
        return self.protocol.holds

    @property
    def reached(self) -> bool:
        return self.protocol.reached

    @property
    def steps_to_threshold(self) -> int | None:
        return self.protocol.steps_to_threshold

    # ------------------------------------------------------------------ resume

    def _resume(self) -> dict:
        """Take over the steps, evaluations and holds of the run's earlier starts.

        Steps come from the larger of two counts: the progress log's last event, and the
        recording (one recorded action = one real step), which also holds the steps of an
        episode cut short by a crash, when no episode event told of them.
        """
        try:
            history = RunHistory.read(self.run_dir)
        except ValueError as error:
            raise configuration_error(self, 'resume', str(error)) from None
        recording = self.run_dir / 'recording'
        try:
            recorded = recorded_steps(read_recording(recording)) if recording.exists() else {}
        except (OSError, LogFormatError) as error:
            detail = f'cannot read {recording}: {error}'
            raise configuration_error(self, 'resume', detail) from None
        if history.starts == 0 and not recorded:
            raise configuration_error(
                self,
                'resume',
                f'{self.run_dir} holds no earlier run (no progress.jsonl entry, '
                'no recording): nothing to resume',
            )
        recorded_eval = recorded.get('evaluate', 0)
        recorded_training = sum(n for mode, n in recorded.items() if mode != 'evaluate')
        self.eval_steps = max(history.eval_steps, recorded_eval)
        self._plant_steps_before = max(history.real_steps, recorded_training) + self.eval_steps
        self.plant_steps = self._plant_steps_before
        self.evaluations = list(history.evaluations)
        self.held_wall_time = history.held_wall_time_s
        self.protocol = DynaProtocol(
            self._protocol_settings(),
            real_steps=self.real_steps,
            holds=history.holds,
            released_policy=history.released_policy_version,
            released_model=history.released_model_version,
            evaluated_policy=self.evaluations[-1]['policy_version'] if self.evaluations else None,
        )
        self.starts = history.starts + 1
        if history.skipped_lines:
            self.get_logger().warning(
                f'{self.progress_path}: {history.skipped_lines} lines are not events (a torn '
                'last line after a crash?); skipped'
            )
        return {
            'real_steps': self.real_steps,
            'eval_steps': self.eval_steps,
            'recorded_steps': recorded,
            'progress_real_steps': history.real_steps,
            'evaluations': len(self.evaluations),
            'holds': self.holds,
            'released_policy_version': self.protocol.released_policy,
        }

    # ------------------------------------------------------------------ accounting

    @property
    def real_steps(self) -> int:
        """Real training steps: every plant step that was not an evaluation step."""
        return max(0, self.plant_steps - self.eval_steps)

    def _event(self, event: str, /, **fields: Any) -> None:
        record = {
            'event': event,
            'time_s': round(time.monotonic() - self.started, 3),
            'real_steps': self.real_steps,
            'eval_steps': self.eval_steps,
            **fields,
        }
        self._progress_file.write(json.dumps(json_safe(record), allow_nan=False) + '\n')
        self._progress_file.flush()

    def _log_progress(self, what: str) -> None:
        last = self.evaluations[-1]['eval_return_mean'] if self.evaluations else None
        self.get_logger().info(
            f'{what} | real steps {self.real_steps}/{self.parameters.budget}, eval steps '
            f'{self.eval_steps}, last eval return {_fmt(last)} (threshold {self.threshold}), '
            f'model {self.model.get("model_version", "-")}, '
            f'policy {self.policy.get("policy_version", "-")}, state {self.state}'
        )
        self.diagnostics.set('state', self.state)
        self.diagnostics.set('real_steps', self.real_steps)
        self.diagnostics.set('eval_steps', self.eval_steps)
        self.diagnostics.set('eval_return_mean', last)
        self.diagnostics.set('model_version', self.model.get('model_version', 'none'))
        self.diagnostics.set('policy_version', self.policy.get('policy_version', 'none'))

    # ------------------------------------------------------------------ inputs

    def _on_episode(self, message: String) -> None:
        try:
            record = parse_json_text(message.data, 'sindyrl/episode')
            length = int(record['length'])
            episode_return = float(record['return'])
            plant_steps = int(record['real_steps']) if 'real_steps' in record else None
            if length < 0 or (plant_steps is not None and plant_steps < 0):
                raise ValueError('negative step count')
        except (FormatError, ValueError, KeyError, TypeError) as error:
            self.diagnostics.reject('malformed_episode', f'{message.data[:200]!r}: {error}')
            return
        mode = str(record.get('mode', ''))
        end = str(record.get('end', ''))
        self.episodes += 1
        self.diagnostics.counters['episodes_seen'] = self.episodes
        # Steps of an episode cut short by a mode switch's reset count as training steps:
        # a few of them ran in the other mode, and overcounting training is the safe side.
        is_evaluation = mode == 'evaluate' and end != 'reset'
        if is_evaluation:
            self.eval_steps += length
        if plant_steps is not None:
            self.plant_steps = max(self.plant_steps, self._plant_steps_before + plant_steps)
        else:
            self.plant_steps += length
        deferred = self.state == SWITCHING and self._resuming and end != 'reset'
        self._event(
            'episode',
            episode=record.get('episode'),
            mode=mode,
            end=end,
            length=length,
            episode_return=episode_return,
            evaluation=self.state == EVALUATING and is_evaluation,
            **({'deferred': True} if deferred else {}),
        )
        self._log_progress(
            f'episode {record.get("episode")} ({mode or "?"}, {end or "?"}) return '
            f'{episode_return:.2f}'
        )
        if end == 'reset':
            return
        if deferred:
            self._deferred_episodes.append((is_evaluation, episode_return))
            return
        self._episode_ended(is_evaluation, episode_return)

    def _episode_ended(self, is_evaluation: bool, episode_return: float) -> None:
        """The protocol's step at the end of a whole episode (not one cut by a reset)."""
        if self.state == EVALUATING:
            if is_evaluation:
                self.eval_returns.append(episode_return)
                if len(self.eval_returns) >= self.parameters.eval_episodes:
                    self._evaluation_done()
        elif self.state in (EXPLORE, WAIT_EPISODE_END):
            self._after_exploration_episode()

    def _on_model(self, message: String) -> None:
        try:
            card = parse_json_text(message.data, 'sindyrl/model')
            version = int(card['model_version'])
            validation = card.get('validation') or {}
            model = {
                'model_version': version,
                'equations': [str(equation) for equation in card.get('equations', [])],
                'n_nonzero': card.get('n_nonzero'),
                'validation_nrmse': validation.get('nrmse'),
                'validation_held_out': validation.get('held_out'),
                'transitions': card.get('transitions'),
            }
        except (FormatError, ValueError, KeyError, TypeError, AttributeError) as error:
            self.diagnostics.reject('malformed_model', str(error))
            return
        self.model = model
        self.models[version] = model
        self._event('model', **self.model)
        self._log_progress(f'model {version} received')

    def _on_policy(self, message: String) -> None:
        try:
            policy = policy_from_json(
                message.data,
                '/sindyrl/policy',
                self.task.observation_names,
                self.task.action_names,
            )
        except FormatError as error:
            self.diagnostics.reject('malformed_policy', str(error))
            return
        metadata = policy.metadata
        self.policy = {
            'policy_version': metadata.get('policy_version'),
            'source_model_version': metadata.get('source_model_version'),
            'kind': policy.kind,
            'nn_parameters': metadata.get('nn_parameters', policy.n_parameters),
            'sparse_policy_coefficients': metadata.get('sparse_policy_coefficients'),
            'surrogate_return': metadata.get('surrogate_return'),
            'surrogate_return_episodes': metadata.get('surrogate_return_episodes'),
            'surrogate_return_cut_short': metadata.get('surrogate_return_cut_short'),
        }
        self.protocol.policy_arrived(
            self.policy['policy_version'], self.policy['source_model_version']
        )
        self._event('policy', **self.policy)
        self._log_progress(f'policy {self.policy["policy_version"]} received')
        if self.state == HOLDING:
            self._check_hold()
        elif self.state == EXPLORE and self.parameters.eval_every_policy:
            self.state = WAIT_EPISODE_END  # evaluate once the current episode ends
        elif self._to_evaluation and self.policy != self.evaluating_policy:
            # The controller swaps policies on receipt: episodes already run were partly
            # the old policy's, so the evaluation starts over with the new one.
            if self.state == EVALUATING:
                self._restart_evaluation()
            else:
                self._restart_pending = True

    def _on_fit_state(self, message: JointState) -> None:
        try:
            self.protocol.fit_state = FitState.from_vector(message.name, message.position)
        except ValueError as error:
            self.diagnostics.reject('malformed_fit_state', f'sindyrl/fit_state: {error}')
            return
        self._check_hold()

    def _on_diagnostics(self, message: DiagnosticArray) -> None:
        for status in message.status:
            if status.name == self.get_fully_qualified_name():
                continue
            self.node_status[status.name] = {
                'level': int.from_bytes(status.level, 'little')
                if isinstance(status.level, bytes)
                else int(status.level),
                'message': status.message,
                'values': {kv.key: kv.value for kv in status.values},
            }

    # ------------------------------------------------------------------ protocol

    def _tick(self) -> None:
        """Start once the services exist; enforce the wall-time limit and call timeouts."""
        p = self.parameters
        if self.state == 'starting':
            clients = [self.set_mode_client, self.reset_client]
            clients += [self.pause_client] if p.hold_for_policy else []
            missing = [client.srv_name for client in clients if not client.service_is_ready()]
            for client in clients:
                self.waits.waiting(
                    f'the service {client.srv_name} ({SERVICE_OWNERS[client.srv_name]})',
                    client.srv_name in missing,
                )
            # No real step before the model updater records it: a step nobody recorded is
            # lost (on a loaded machine the updater can start seconds after the plant).
            recording = self.protocol.fit_state is not None
            self.waits.waiting(
                'the model updater (its first /sindyrl/fit_state: it records every step)',
                not recording,
            )
            self.waits.check()
            if not missing and recording:
                self.state = SWITCHING
                calls = [self._set_mode_call(explore=True)]
                if self._hold_on_start:
                    self._chain(calls, then=lambda: self._hold('resume'))
                    return
                if p.hold_for_policy or self.pause_client.service_is_ready():
                    # The first real step is this run's: a plant started paused (or left
                    # paused by an earlier run) runs from here.
                    calls.append(self._pause_call(False))
                self._chain(calls, then=self._explore_started)
            return
        if self.state == FINISHED:
            return
        if p.max_wall_time and time.monotonic() - self.started > p.max_wall_time:
            self._finish('max_wall_time')
            return
        now = time.monotonic()
        for future, _, what, deadline in list(self._pending_calls):
            if not future.done() and now > deadline:
                self.get_logger().error(f'no answer from the {what} service')
                self._finish(f'service_timeout: {what}')
                return
        self.waits.check()
        self._check_hold()

    def _explore_started(self) -> None:
        self.state = EXPLORE
        self._event('mode', mode='explore')
        self._log_progress('exploring')
        if self.protocol.explore_started():
            self.state = WAIT_EPISODE_END  # evaluate the new policy once the episode ends

    def _after_exploration_episode(self) -> None:
        decision = self.protocol.after_exploration_episode(
            self.real_steps, awaiting_evaluation=self.state == WAIT_EPISODE_END
        )
        self._act(decision)

    def _act(self, decision: Decision) -> None:
        """Carry out a decision of the protocol (except EXPLORE, whose calls vary)."""
        if decision.action == dyna.EVALUATE:
            self._start_evaluation()
        elif decision.action == dyna.HOLD:
            self._hold(decision.reason)
        elif decision.action == dyna.FINISH:
            self._finish(decision.reason)
        elif decision.action != dyna.CONTINUE:
            raise ValueError(f'unexpected decision {decision}')

    # ------------------------------------------------------------------ synchronous Dyna

    def _release_policy(self, evaluation: bool) -> None:
        """Log the release of the newest policy (evaluated or sent exploring)."""
        self._event(
            'release',
            policy_version=self.protocol.released_policy,
            source_model_version=self.protocol.released_model,
            evaluation=evaluation,
        )

    def _hold(self, reason: str) -> None:
        """Pause the plant and wait for a new policy (or a rejected model, or the timeout)."""
        self.state = SWITCHING
        chunk_steps = self.real_steps - self.protocol.chunk_start

        def held() -> None:
            self.state = HOLDING
            self.protocol.held()
            self._hold_started = time.monotonic()
            self._hold_reason = reason
            self._event(
                'hold',
                reason=reason,
                chunk_steps=chunk_steps,
                waiting_for_model_newer_than=self.protocol.released_model,
            )
            self.diagnostics.set('holds', self.holds)
            self._log_progress(
                f'plant held ({reason}) after {chunk_steps} training steps: waiting for a '
                f'policy trained on a model newer than {self.protocol.released_model}'
            )
            self._check_hold()  # the policy may have come meanwhile

        self._call(self.pause_client, SetBool.Request(data=True), 'plant pause', then=held)

    def _check_hold(self) -> None:
        """While holding: release on a new policy, the updater's word, or the timeout."""
        if self.state != HOLDING:
            return
        held = time.monotonic() - self._hold_started
        timeout = self.parameters.hold_timeout
        reason = self.protocol.release_reason(
            settled=held >= FIT_STATE_SETTLE_S, timed_out=bool(timeout) and held >= timeout
        )
        if reason is not None:
            self._release(reason)

    def _release(self, reason: str) -> None:
        """End the hold: evaluate the new policy, or explore another chunk, or finish."""
        held = time.monotonic() - self._hold_started
        self.held_wall_time += held
        self._hold_started = None
        self._event(
            'resume',
            reason=reason,
            hold_reason=self._hold_reason,
            held_s=round(held, 3),
            policy_version=self.policy.get('policy_version'),
            source_model_version=self.policy.get('source_model_version'),
        )
        self.diagnostics.set('held_wall_time_s', round(self.held_wall_time, 3))
        self._log_progress(f'hold over ({reason}) after {held:.1f} s')
        self.state = SWITCHING
        decision = self.protocol.after_release(reason, self.real_steps)
        if decision.action != dyna.EXPLORE:
            self._act(decision)
            return
        if decision.release:  # explores unevaluated (eval_every_policy off)
            self.protocol.release_policy(self.real_steps, self._model_version())
            self._release_policy(evaluation=False)
        self._chain([self._pause_call(False)], then=self._explore_started)

    def _model_version(self) -> int:
        """The newest accepted model's version (0: none yet)."""
        return int(self.model.get('model_version', 0) or 0)

    def _set_mode_call(self, explore: bool) -> tuple:
        what = 'explore mode' if explore else 'evaluate mode'
        return self.set_mode_client, SetBool.Request(data=explore), what

    def _reset_call(self) -> tuple:
        return self.reset_client, Trigger.Request(), 'plant reset'

    def _pause_call(self, pause: bool) -> tuple:
        return self.pause_client, SetBool.Request(data=pause), 'plant pause'

    def _switch(self, explore: bool, then) -> None:
        """Set the controller's mode and reset the plant, held meanwhile when holding."""
        calls = [self._set_mode_call(explore), self._reset_call()]
        if self.parameters.hold_for_policy:
            pause = [] if self._plant_paused else [self._pause_call(True)]
            calls = [*pause, *calls, self._pause_call(False)]
        self._chain(calls, then=then)

    def _chain(self, calls: list[tuple], then) -> None:
        """Service calls one after the other, then ``then()``; a failure ends the run."""
        if not calls:
            then()
            return
        (client, request, what), rest = calls[0], calls[1:]
        self._call(client, request, what, then=lambda: self._chain(rest, then))

    # ------------------------------------------------------------------ evaluation

    def _start_evaluation(self) -> None:
        self.state = SWITCHING
        self._to_evaluation = True
        self._restart_pending = False
        self.evaluating_policy = dict(self.policy)
        self.eval_returns = []
        if self.protocol.evaluation_started(self.real_steps, self._model_version()):
            self._release_policy(evaluation=True)
        self._switch(explore=False, then=self._evaluation_started)

    def _restart_evaluation(self) -> None:
        self._log_progress(
            f'policy {self.policy.get("policy_version")} arrived during the evaluation of '
            f'policy {self.evaluating_policy.get("policy_version")}: evaluation restarts'
        )
        self._event('evaluation_restart', policy_version=self.policy.get('policy_version'))
        self.state = SWITCHING
        self._restart_pending = False
        self.evaluating_policy = dict(self.policy)
        self.eval_returns = []
        if self.protocol.evaluation_started(self.real_steps, self._model_version()):
            self._release_policy(evaluation=True)
        self._call(
            self.reset_client, Trigger.Request(), 'plant reset', then=self._evaluation_started
        )

    def _evaluation_started(self) -> None:
        if self._restart_pending:
            self._restart_evaluation()
            return
        self.state = EVALUATING
        self.eval_returns = []
        self._event(
            'mode', mode='evaluate', policy_version=self.evaluating_policy.get('policy_version')
        )
        self._log_progress(f'evaluating policy {self.evaluating_policy.get("policy_version")}')

    def _evaluation_done(self) -> None:
        p = self.parameters
        returns = self.eval_returns[: p.eval_episodes]
        mean = sum(returns) / len(returns)
        self._to_evaluation = False
        version = self.evaluating_policy.get('policy_version')
        decision = self.protocol.evaluation_done(version, mean, self.real_steps)
        evaluation = {
            'real_steps': self.real_steps,
            'eval_steps': self.eval_steps,
            'eval_return_mean': mean,
            'eval_returns': returns,
            'policy_version': version,
            'source_model_version': self.evaluating_policy.get('source_model_version'),
            'model_version': self.model.get('model_version'),
            'wall_time_s': time.monotonic() - self.started,
        }
        self.evaluations.append(evaluation)
        self._event(
            'evaluation',
            **{k: v for k, v in evaluation.items() if k not in ('real_steps', 'eval_steps')},
        )
        self._log_progress(f'evaluation of policy {version}: {mean:.2f}')
        if decision.action == dyna.EXPLORE:
            self.state = SWITCHING
            self._switch(explore=True, then=self._explore_started)
        else:
            self._act(decision)

    def _call(self, client, request, what: str, then) -> None:
        """Call a service without blocking the executor; ``then()`` runs on success."""
        future = client.call_async(request)
        timeout = self.parameters.service_timeout
        if client is self.reset_client:
            timeout = self.parameters.reset_timeout or float('inf')
        entry = (future, client, what, time.monotonic() + timeout)
        waiting = f'the answer of the {what} service'
        self.waits.start(waiting)
        self._pending_calls.append(entry)
        resume = client is self.pause_client and not request.data
        if resume:
            self._resuming = True

        def done(finished) -> None:
            self._pending_calls.remove(entry)
            self.waits.stop(waiting)
            if self.state == FINISHED:
                return
            response = finished.result()
            if response is None or not response.success:
                detail = getattr(response, 'message', 'no response')
                self.get_logger().error(f'{what} refused: {detail}')
                self._finish(f'service_refused: {what}')
                return
            if client is self.pause_client:
                self._plant_paused = bool(request.data)
            if not resume:
                then()
                return
            self._resuming = False
            then()
            deferred, self._deferred_episodes = self._deferred_episodes, []
            for is_evaluation, episode_return in deferred:
                if self.state != FINISHED:
                    self._episode_ended(is_evaluation, episode_return)

        future.add_done_callback(done)

    # ------------------------------------------------------------------ results

    def _reported_model(self) -> dict:
        """The model the last evaluated (else the newest) policy was trained on."""
        last = self.evaluations[-1] if self.evaluations else {}
        source = last.get('source_model_version', self.policy.get('source_model_version'))
        return self.models.get(source, {} if source is not None else self.model)

    def summary(self) -> dict:
        last = self.evaluations[-1] if self.evaluations else {}
        return json_safe(
            {
                'task': self.task.name,
                'reached': self.reached,
                'threshold': self.threshold,
                'budget': self.parameters.budget,
                'stop_reason': self.stop_reason,
                'real_steps': self.real_steps,
                'eval_steps': self.eval_steps,
                'steps_to_threshold': self.steps_to_threshold,
                'eval_return_mean': last.get('eval_return_mean'),
                'eval_returns': last.get('eval_returns', []),
                'evaluated_policy_version': last.get('policy_version'),
                # The model the reported policy was trained on, not merely the newest.
                'model_equations': self._reported_model().get('equations', []),
                'model_version': self._reported_model().get('model_version'),
                'model_nonzero': self._reported_model().get('n_nonzero'),
                'newest_model_version': self.model.get('model_version'),
                'policy_version': self.policy.get('policy_version'),
                'policy_kind': self.policy.get('kind'),
                'nn_parameters': self.policy.get('nn_parameters'),
                'sparse_policy_coefficients': self.policy.get('sparse_policy_coefficients'),
                'episodes': self.episodes,
                'evaluations': [
                    {
                        k: e[k]
                        for k in (
                            'real_steps',
                            'eval_steps',
                            'eval_return_mean',
                            'policy_version',
                            'model_version',
                        )
                    }
                    for e in self.evaluations
                ],
                'node_diagnostics': self.node_status,
                'starts': self.starts,
                'hold_for_policy': self.parameters.hold_for_policy,
                'holds': self.holds,
                'held_wall_time_s': self.held_wall_time
                + (
                    time.monotonic() - self._hold_started
                    if self._hold_started is not None
                    else 0.0
                ),
                'wall_time_s': time.monotonic() - self.started,
            }
        )

    def _finish(self, reason: str) -> None:
        """Write summary.json, log the result and end the process (exit code 0)."""
        if self.state == FINISHED:
            return
        self.state = FINISHED
        self.stop_reason = reason
        self._write_summary()
        self.get_logger().info(
            f'run finished ({reason}): reached {self.reached}, eval return '
            f'{_fmt(self.summary()["eval_return_mean"])} after {self.real_steps} real steps, '
            f'summary in {self.summary_path}'
        )
        # Ends run_node's spin loop; main() then returns 0.
        self.context.try_shutdown()

    def _write_summary(self) -> None:
        if self._summary_written:
            return
        summary = self.summary()
        save_json_document(self.summary_path, summary)
        self._event(
            'finish',
            reason=self.stop_reason,
            reached=self.reached,
            eval_return_mean=summary['eval_return_mean'],
        )
        self._summary_written = True

    def on_shutdown(self) -> None:
        """Stopped by a signal before the end: still leave a summary of what was done."""
        if not self._summary_written:
            self.stop_reason = self.stop_reason or 'interrupted'
            self._write_summary()

    def destroy_node(self) -> None:
        if not self._progress_file.closed:
            self._progress_file.close()
        super().destroy_node()


def _fmt(value: Any) -> str:
    return f'{value:.2f}' if isinstance(value, float) else str(value)


def main(args: list[str] | None = None) -> int:
    return run_node(RunSupervisor, args)


if __name__ == '__main__':
    sys.exit(main())
