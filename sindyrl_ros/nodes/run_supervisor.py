"""Run supervisor: drives a Dyna run across the graph and writes its results.

The run's state machine is ``core.supervision.Supervision``, carrying out the decisions of
``core.protocol.DynaProtocol`` (synchronous Dyna with ``hold_for_policy``, the default:
the plant is held while models and policies are learned; else free running); what the
run counts, its evaluations, summary.json and a resume (``resume``) are
``core.run_record.RunRecord``'s. This node translates:

* in: ``/sindyrl/episode`` (the plant's episode records), ``/sindyrl/model``,
  ``/sindyrl/policy`` and ``/sindyrl/fit_state`` (the model updater's typed fit state);
  ``/diagnostics`` only for the summary, never for a decision;
* calls: ``/controller/set_mode`` (true: explore, false: evaluate with deterministic
  actions), ``/plant/reset`` around each evaluation, ``/plant/pause`` for the holds;
* out: every event in ``run_dir/progress.jsonl`` as it happens, the result in
  ``run_dir/summary.json``, and exit code 0 once the run is over (threshold, budget,
  ``max_wall_time``), so a launcher knows.
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

from sindyrl_ros.core.protocol import FitState, ProtocolSettings
from sindyrl_ros.core.run_record import (
    RunRecord,
    parse_episode,
    parse_model_card,
    parse_policy,
    read_earlier_run,
)
from sindyrl_ros.core.serialization import FormatError, json_safe, save_json_document
from sindyrl_ros.core.supervision import (
    FINISHED,
    PAUSE,
    RESET,
    SET_MODE,
    STARTING,
    Call,
    Supervision,
)
from sindyrl_ros.params.run_supervisor import PARAMETERS
from sindyrl_ros.ros.diagnostics import Diagnostics, Waits
from sindyrl_ros.ros.parameters import (
    check_parameter_files,
    configuration_error,
    declare_parameters,
    task_from_parameters,
)
from sindyrl_ros.ros.qos import LATCHED_QOS, RELIABLE_QOS
from sindyrl_ros.ros.runtime import run_node

# The services the supervisor calls, and who offers each (said when it waits for one).
PLANT = 'the plant: the simulated plant, the serial bridge or the episodes node'
SERVICES = {
    SET_MODE: ('/controller/set_mode', 'the controller'),
    RESET: ('/plant/reset', PLANT),
    PAUSE: ('/plant/pause', PLANT),
}


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
        settings = ProtocolSettings(
            budget=p.budget,
            threshold=self.threshold,
            initial_steps=p.initial_steps,
            steps_per_iteration=p.steps_per_iteration,
            eval_every_policy=p.eval_every_policy,
            hold_for_policy=p.hold_for_policy,
            stop_at_threshold=p.stop_at_threshold,
        )
        self.record = RunRecord(self.task.name, settings, p.eval_episodes, self.started)
        resumed = self._resume() if p.resume else None
        self.protocol = self.record.protocol
        self.supervision = Supervision(
            self.record,
            event=self._event,
            progress=self._log_progress,
            error=self.get_logger().error,
            call=self._call,
            finished=self._finished,
            hold_timeout=p.hold_timeout,
        )
        self._pending_calls: list[tuple[Any, str, float]] = []  # (future, what, deadline)
        self._summary_written = False

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
        self.diagnostics.set('state', self.supervision.state)
        self.diagnostics.set('holds', 0)
        self.diagnostics.set('held_wall_time_s', 0.0)

        self.service_clients = {
            service: self.create_client(Trigger if service == RESET else SetBool, name)
            for service, (name, _) in SERVICES.items()
        }
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
                f'resuming the run in {self.run_dir} (start {self.record.starts}): '
                f'{self.real_steps} real training steps and {self.eval_steps} evaluation steps '
                f'already spent, {len(self.record.evaluations)} evaluations, '
                f'{self.protocol.holds} holds'
            )
        self.get_logger().info(
            f'run supervisor ready: task {self.task.name}, budget {p.budget} real steps, '
            f'threshold {self.threshold}, {p.eval_episodes} evaluation episodes, {hold}, '
            f'writing to {self.run_dir}'
        )

    def _resume(self) -> dict:
        """Take over the steps, evaluations and holds of the run's earlier starts."""
        try:
            resumed = self.record.resume(*read_earlier_run(self.run_dir))
        except ValueError as error:
            raise configuration_error(self, 'resume', str(error)) from None
        if self.record.history.skipped_lines:
            self.get_logger().warning(
                f'{self.progress_path}: {self.record.history.skipped_lines} lines are not '
                'events (a torn last line after a crash?); skipped'
            )
        return resumed

    # ------------------------------------------------------------------ accounting

    @property
    def real_steps(self) -> int:
        return self.record.real_steps

    @property
    def eval_steps(self) -> int:
        return self.record.eval_steps

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
        last, model, policy = self.record.last_return, self.record.model, self.record.policy
        state = self.supervision.state
        self.get_logger().info(
            f'{what} | real steps {self.real_steps}/{self.parameters.budget}, eval steps '
            f'{self.eval_steps}, last eval return {_fmt(last)} (threshold {self.threshold}), '
            f'model {model.get("model_version", "-")}, '
            f'policy {policy.get("policy_version", "-")}, state {state}'
        )
        self.diagnostics.set('state', state)
        self.diagnostics.set('real_steps', self.real_steps)
        self.diagnostics.set('eval_steps', self.eval_steps)
        self.diagnostics.set('eval_return_mean', last)
        self.diagnostics.set('model_version', model.get('model_version', 'none'))
        self.diagnostics.set('policy_version', policy.get('policy_version', 'none'))
        self.diagnostics.set('holds', self.protocol.holds)
        self.diagnostics.set('held_wall_time_s', round(self.record.held_wall_time, 3))

    # ------------------------------------------------------------------ inputs

    def _on_episode(self, message: String) -> None:
        try:
            episode = parse_episode(message.data)
        except FormatError as error:
            self.diagnostics.reject('malformed_episode', f'{message.data[:200]!r}: {error}')
            return
        self.supervision.episode(episode)
        self.diagnostics.counters['episodes_seen'] = self.record.episodes

    def _on_model(self, message: String) -> None:
        try:
            model = parse_model_card(message.data)
        except FormatError as error:
            self.diagnostics.reject('malformed_model', str(error))
            return
        self.supervision.model(model)

    def _on_policy(self, message: String) -> None:
        try:
            names = self.task.observation_names, self.task.action_names
            policy = parse_policy(message.data, *names)
        except FormatError as error:
            self.diagnostics.reject('malformed_policy', str(error))
            return
        self.supervision.policy(policy)

    def _on_fit_state(self, message: JointState) -> None:
        try:
            state = FitState.from_vector(message.name, message.position)
        except ValueError as error:
            self.diagnostics.reject('malformed_fit_state', f'sindyrl/fit_state: {error}')
            return
        self.supervision.fit_state(state)

    def _on_diagnostics(self, message: DiagnosticArray) -> None:
        for status in message.status:
            if status.name == self.get_fully_qualified_name():
                continue
            self.record.node_status[status.name] = {
                'level': int.from_bytes(status.level, 'little')
                if isinstance(status.level, bytes)
                else int(status.level),
                'message': status.message,
                'values': {kv.key: kv.value for kv in status.values},
            }

    # ------------------------------------------------------------------ services

    def _tick(self) -> None:
        """Start once the services exist; enforce the wall-time limit and call timeouts."""
        p = self.parameters
        if self.supervision.state == STARTING:
            needed = [SET_MODE, RESET, *([PAUSE] if p.hold_for_policy else [])]
            missing = [s for s in needed if not self.service_clients[s].service_is_ready()]
            for service in needed:
                name, owner = SERVICES[service]
                self.waits.waiting(f'the service {name} ({owner})', service in missing)
            # No real step before the model updater records it: a step nobody recorded is
            # lost (on a loaded machine the updater can start seconds after the plant).
            recording = self.protocol.fit_state is not None
            self.waits.waiting(
                'the model updater (its first /sindyrl/fit_state: it records every step)',
                not recording,
            )
            self.waits.check()
            if not missing and recording:
                self.supervision.start(
                    pause_available=self.service_clients[PAUSE].service_is_ready()
                )
            return
        if self.supervision.state == FINISHED:
            return
        if p.max_wall_time and time.monotonic() - self.started > p.max_wall_time:
            self.supervision.finish('max_wall_time')
            return
        now = time.monotonic()
        for future, what, deadline in list(self._pending_calls):
            if not future.done() and now > deadline:
                self.get_logger().error(f'no answer from the {what} service')
                self.supervision.finish(f'service_timeout: {what}')
                return
        self.waits.check()
        self.supervision.check_hold()

    def _call(self, call: Call, answered) -> None:
        """Call a service without blocking the executor; ``answered(ok, detail)`` after."""
        p = self.parameters
        if call.service == RESET:
            request, timeout = Trigger.Request(), p.reset_timeout or float('inf')
        else:
            request, timeout = SetBool.Request(data=call.value), p.service_timeout
        future = self.service_clients[call.service].call_async(request)
        entry = (future, call.what, time.monotonic() + timeout)
        waiting = f'the answer of the {call.what} service'
        self.waits.start(waiting)
        self._pending_calls.append(entry)

        def done(finished) -> None:
            self._pending_calls.remove(entry)
            self.waits.stop(waiting)
            response = finished.result()
            ok = response is not None and response.success
            answered(ok, getattr(response, 'message', 'no response'))

        future.add_done_callback(done)

    # ------------------------------------------------------------------ results

    def _finished(self) -> None:
        """The run is over: write summary.json, log the result, end the process (code 0)."""
        summary = self._write_summary()
        self.get_logger().info(
            f'run finished ({self.record.stop_reason}): reached {self.protocol.reached}, eval '
            f'return {_fmt(summary["eval_return_mean"])} after {self.real_steps} real steps, '
            f'summary in {self.summary_path}'
        )
        # Ends run_node's spin loop; main() then returns 0.
        self.context.try_shutdown()

    def _write_summary(self) -> dict:
        summary = self.record.summary(time.monotonic())
        if self._summary_written:
            return summary
        save_json_document(self.summary_path, summary)
        self._event(
            'finish',
            reason=self.record.stop_reason,
            reached=self.protocol.reached,
            eval_return_mean=summary['eval_return_mean'],
        )
        self._summary_written = True
        return summary

    def on_shutdown(self) -> None:
        """Stopped by a signal before the end: still leave a summary of what was done."""
        if not self._summary_written:
            self.record.stop_reason = self.record.stop_reason or 'interrupted'
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
