"""Model updater: records every real transition and refits the E-SINDy model of the plant.

Subscribes to ``/sindyrl/observation``, ``/sindyrl/action`` and ``/sindyrl/reward``; pairs
them into transitions by stamp (never by arrival order; ``core.transitions``), keeps
everything in an MCAP recording in the run directory (readable by rosbag2 and Foxglove),
and every ``refit_every`` new exploration transitions (``core.refit_schedule``) fits a new
model in a worker process (``core.fit_worker``, ``core.model_fitting``), so that a fit
never delays the recording. A model is published on ``/sindyrl/model`` (latched: a trainer
that starts later still gets it) only when multi-step rollouts on held-out trajectories
stay close; a diverging model is reported and never published. ``/sindyrl/fit_state``
(latched, a :class:`~sindyrl_ros.core.protocol.FitState` as a named vector) tells the run
supervisor what fitting is doing. For a task whose reward is ``learned`` the model card
also carries a sparse reward model fitted on the rewards the plant reports.

The recording is ``run_dir/recording/session_<s>/segment_<k>.mcap``: one session per start
of the node, split into segments closed every ``segment_seconds`` (as rosbag2 splits a
bag), so a crash leaves at most the open segment without its index; the node rewrites any
such segment into a complete file when it starts. Each session is paired on its own (a
restarted simulator's clock starts at 0 again; ``core.session_replay``). With ``resume``
the node fits at once on the transitions of every earlier session of the run, and model
versions go on.
"""

from __future__ import annotations

import json
from pathlib import Path
import sys

from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import String

from sindyrl_ros.core.fit_worker import FitWorker
from sindyrl_ros.core.mcap_reader import LogFormatError
from sindyrl_ros.core.mcap_recovery import recover_recording
from sindyrl_ros.core.mcap_writer import REWARD_NAME
from sindyrl_ros.core.model_fitting import fit_request, model_summary, rejection_reason
from sindyrl_ros.core.protocol import FIT_STATE_NAMES, FitState
from sindyrl_ros.core.recording import SegmentedRecordingWriter
from sindyrl_ros.core.refit_schedule import ACCEPTED, FAILED, RefitSchedule
from sindyrl_ros.core.serialization import highest_version, save_json_document
from sindyrl_ros.core.session_replay import (
    read_sessions,
    recording_metadata,
    replay_session,
    transition_assembler,
)
from sindyrl_ros.core.transitions import EVALUATE, EXPLORE, SessionTransitions, TransitionAssembler
from sindyrl_ros.params.model_updater import PARAMETERS
from sindyrl_ros.ros.diagnostics import Diagnostics
from sindyrl_ros.ros.messages import MessageError, read_vector, stamp_to_ns, vector_message
from sindyrl_ros.ros.parameters import (
    check_parameter_files,
    configuration_error,
    declare_parameters,
    task_from_parameters,
)
from sindyrl_ros.ros.qos import LATCHED_QOS, TRANSITION_QOS
from sindyrl_ros.ros.runtime import run_node

# Seconds between checks whether /sindyrl/fit_state changed (published only on a change).
FIT_STATE_PERIOD_S = 0.2


class ModelUpdater(Node):
    """Records transitions, refits E-SINDy off the executor thread, publishes good models."""

    def __init__(self) -> None:
        super().__init__('model_updater')
        self.parameters = declare_parameters(self, PARAMETERS)
        check_parameter_files(self)
        p = self.parameters
        self.task = task_from_parameters(self, p)
        self.observation_names = list(self.task.observation_names)
        self.action_names = list(self.task.action_names)
        self.assembler = self._assembler()
        self.run_dir = Path(p.run_dir).expanduser()
        self.models_dir = self.run_dir / 'models'
        try:
            self.models_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise configuration_error(self, 'run_dir', f'cannot create it: {error}') from None

        # Versions go on from the models a previous start left in run_dir.
        self.schedule = RefitSchedule(highest_version(self.models_dir, 'model_'))
        self._last_action_stamp_ns: int | None = None

        self.diagnostics = Diagnostics(self, p.diagnostics_period)
        for key in (
            'observations_recorded',
            'actions_recorded',
            'repeated_actions',
            'rewards_recorded',
            'refits',
            'models_accepted',
            'models_rejected',
            'fit_failures',
        ):
            self.diagnostics.counters[key] = 0
        self.diagnostics.set('model_version', 0)
        self.diagnostics.set('fit_running', False)

        self.recording_dir = self.run_dir / 'recording'
        self.metadata = recording_metadata(self.task)
        self._recover()
        earlier = self._load_earlier_sessions()
        self.recording = SegmentedRecordingWriter(
            self.recording_dir, self.metadata, segment_seconds=p.segment_seconds
        )
        self.transitions = SessionTransitions(self.assembler, earlier)
        self.diagnostics.set('recording', str(self.recording.directory))
        self.worker = FitWorker(p.fit_worker, p.fit_niceness)

        self.model_publisher = self.create_publisher(String, 'sindyrl/model', LATCHED_QOS)
        # The run supervisor decides holds from this typed state, not from /diagnostics.
        self.fit_state_publisher = self.create_publisher(
            JointState, 'sindyrl/fit_state', LATCHED_QOS
        )
        self._published_fit_state: FitState | None = None
        self.create_subscription(
            JointState, 'sindyrl/observation', self._on_observation, TRANSITION_QOS
        )
        self.create_subscription(JointState, 'sindyrl/action', self._on_action, TRANSITION_QOS)
        self.create_subscription(JointState, 'sindyrl/reward', self._on_reward, TRANSITION_QOS)
        # Steady clock: in lockstep simulation sim time stands still whenever the plant
        # waits, and a finished fit or a flush must not wait for it.
        steady = Clock(clock_type=ClockType.STEADY_TIME)
        self.create_timer(0.05, self._poll_fit, clock=steady)
        self.create_timer(p.flush_period, self._flush, clock=steady)
        self.create_timer(FIT_STATE_PERIOD_S, self._publish_fit_state, clock=steady)
        self._update_counts()
        if earlier:
            self.schedule.initial_fit_pending = True
            self._maybe_fit()
        self.get_logger().info(
            f'model updater ready: task {self.task.name}, recording to '
            f'{self.recording.directory}, '
            f'refit every {p.refit_every} exploration transitions'
        )

    # ------------------------------------------------------------------ recording

    def _assembler(self) -> TransitionAssembler:
        p = self.parameters
        return transition_assembler(self.task, p.gap_factor, p.max_observation_jump)

    def _recover(self) -> None:
        """Rewrite the segments a crash left without their index into complete files."""
        try:
            recovered = recover_recording(self.recording_dir)
        except (OSError, LogFormatError) as error:
            raise configuration_error(self, 'run_dir', f'recording: {error}') from None
        for segment in recovered:
            self.get_logger().warning(
                f'{segment.path} ended without its index (its writer was killed): rewritten '
                f'as a complete file with its {segment.observations} observations, '
                f'{segment.actions} actions and {segment.rewards} rewards'
            )

    def _load_earlier_sessions(self) -> list[TransitionAssembler]:
        """The sessions to fit on before new data comes: the run's own (resume), or an
        initial_log copied into this run's recording, one session each."""
        p = self.parameters
        earlier = []
        if p.resume:
            if p.initial_log:
                self.get_logger().info(
                    f'resume: initial_log {p.initial_log} was copied into the run at its first '
                    'start; not loaded again'
                )
            if self.recording_dir.exists():
                for log in self._read('resume', self.recording_dir):
                    earlier.append(self._replay(log))
            self.get_logger().info(
                f'resume: {len(earlier)} earlier sessions of {self.run_dir}, '
                f'{self.schedule.models_accepted} models accepted so far'
            )
        elif p.initial_log:
            for log in self._read('initial_log', Path(p.initial_log).expanduser()):
                metadata = dict(self.metadata, initial_log=p.initial_log)
                with SegmentedRecordingWriter(
                    self.recording_dir, metadata, segment_seconds=float('inf')
                ) as copy:
                    earlier.append(self._replay(log, copy))
        return earlier

    def _read(self, parameter: str, path: Path) -> list:
        """The sessions of a recording, checked against the task's names; FATAL if unusable."""
        try:
            logs, warnings = read_sessions(path, self.observation_names)
        except (OSError, ValueError) as error:
            raise configuration_error(self, parameter, str(error)) from None
        for warning in warnings:
            self.get_logger().warning(warning)
        return logs

    def _replay(self, log, copy: SegmentedRecordingWriter | None = None) -> TransitionAssembler:
        """One recorded session paired on its own; copied into ``copy`` when given."""
        assembler = replay_session(
            log,
            self._assembler(),
            self.observation_names,
            self.action_names,
            copy,
            reject=lambda detail: self.diagnostics.reject('log_names', detail),
        )
        self.get_logger().info(
            f'loaded {len(log.observations)} observations, {len(log.actions)} actions and '
            f'{len(log.rewards)} rewards of session {log.metadata.get("session", "-")}: '
            f'{assembler.transition_counts()}'
        )
        return assembler

    def _log_time_ns(self) -> int:
        return self.get_clock().now().nanoseconds

    def _on_observation(self, message: JointState) -> None:
        try:
            observation = read_vector(message, self.observation_names, 'position')
        except MessageError as error:
            self.diagnostics.reject(error.reason, f'sindyrl/observation: {error.detail}')
            return
        stamp_ns = stamp_to_ns(message.header.stamp)
        self.recording.write_observation(
            stamp_ns, self.observation_names, observation, self._log_time_ns()
        )
        self.diagnostics.increment('observations_recorded')
        if self.assembler.add_observation(stamp_ns, observation):
            self._update_counts()
            self._maybe_fit()

    def _on_action(self, message: JointState) -> None:
        try:
            action = read_vector(message, self.action_names, 'effort')
        except MessageError as error:
            self.diagnostics.reject(error.reason, f'sindyrl/action: {error.detail}')
            return
        stamp_ns = stamp_to_ns(message.header.stamp)
        mode = message.header.frame_id
        if stamp_ns == self._last_action_stamp_ns:
            # The watchdog repeating its safe command for the last state while the plant is
            # held: one answer per state is recorded (a held run once recorded 11,809 safe
            # repeats among 12,011 actions), and the first is the one that answered it.
            self.diagnostics.increment('repeated_actions')
            return
        self._last_action_stamp_ns = stamp_ns
        self.recording.write_action(stamp_ns, self.action_names, action, mode, self._log_time_ns())
        self.diagnostics.increment('actions_recorded')
        if self.assembler.add_action(stamp_ns, action, mode):
            self._update_counts()
            self._maybe_fit()

    def _on_reward(self, message: JointState) -> None:
        try:
            reward = read_vector(message, (REWARD_NAME,), 'position')
        except MessageError as error:
            self.diagnostics.reject(f'reward_{error.reason}', f'sindyrl/reward: {error.detail}')
            return
        stamp_ns = stamp_to_ns(message.header.stamp)
        self.recording.write_reward(stamp_ns, reward[0], self._log_time_ns())
        self.diagnostics.increment('rewards_recorded')
        self.assembler.add_reward(stamp_ns, reward[0])

    def _update_counts(self) -> None:
        counts = self.transitions.transition_counts()
        self.schedule.transitions_explore = counts.get(EXPLORE, 0)
        self.diagnostics.set('transitions_explore', self.schedule.transitions_explore)
        self.diagnostics.set('transitions_evaluate', counts.get(EVALUATE, 0))
        self.diagnostics.set(
            'transitions_other', sum(v for k, v in counts.items() if k not in (EXPLORE, EVALUATE))
        )

    def _flush(self) -> None:
        try:
            self.recording.flush()
        except OSError as error:
            self.diagnostics.errors['recording'] = f'cannot write the recording: {error}'
            self.get_logger().error(f'{self.recording.segment_path}: {error}')

    # ------------------------------------------------------------------ fitting

    def _maybe_fit(self) -> None:
        """Start a fit when enough new exploration transitions arrived and none is running."""
        version = self.schedule.next_model_version
        if not self.schedule.start_fit(self.parameters.refit_every, self.worker.busy):
            return
        request = fit_request(self.task, self.transitions, self.parameters, version)
        self.diagnostics.set('trajectories', len(request['trajectories']))
        if 'reward_trajectories' in request:
            rewarded = sum(len(rewards) for *_, rewards in request['reward_trajectories'])
            self.diagnostics.set('transitions_rewarded', rewarded)
        self.worker.submit(request)
        self.diagnostics.counters['refits'] = self.schedule.refits
        self.diagnostics.set('fit_running', True)
        self._publish_fit_state()
        self.get_logger().info(
            f'fit {self.schedule.refits} started: {self.schedule.transitions_explore} '
            f'exploration transitions in {len(request["trajectories"])} trajectories'
        )

    def fit_state(self) -> FitState:
        """What this node's fitting is doing (published on /sindyrl/fit_state)."""
        return self.schedule.fit_state(self.parameters.refit_every, self.worker.busy)

    def _publish_fit_state(self) -> None:
        """Publish the fit state when it changed (latched: a late subscriber gets it)."""
        state = self.fit_state()
        if state == self._published_fit_state:
            return
        self._published_fit_state = state
        stamp = self.get_clock().now().to_msg()
        self.fit_state_publisher.publish(vector_message(FIT_STATE_NAMES, state.to_vector(), stamp))

    def _poll_fit(self) -> None:
        result = self.worker.poll()
        if result is None:
            return
        self.diagnostics.set('fit_running', False)
        self.diagnostics.set('last_fit_time_s', round(result.get('fit_time_s', 0.0), 3))
        outcome = self.schedule.fit_ended(result)
        counters = self.diagnostics.counters
        counters['fit_failures'] = self.schedule.fit_failures
        counters['models_rejected'] = self.schedule.models_rejected
        counters['models_accepted'] = self.schedule.models_accepted
        if outcome == FAILED:
            self.diagnostics.warnings['fit'] = f'last fit failed: {result["error"]}'
            self.get_logger().error(
                f'fit {self.schedule.refits} failed: {result["error"]}\n'
                f'{result.get("traceback", "")}'
            )
        else:
            self.diagnostics.warnings.pop('fit', None)
            self._fit_finished(result, outcome == ACCEPTED)
        self._maybe_fit()  # data that arrived during the fit may already call for the next
        self._publish_fit_state()

    def _fit_finished(self, result: dict, accepted: bool) -> None:
        validation, card = result['validation'], result['card']
        self.diagnostics.set('last_validation_nrmse', validation.get('nrmse'))
        self.diagnostics.set('last_validation_diverged', validation.get('diverged'))
        if not accepted:
            reason = rejection_reason(result, self.parameters.max_validation_error)
            self.diagnostics.warnings['model'] = reason
            self.get_logger().warning(reason)
            return
        self.diagnostics.warnings.pop('model', None)
        path = self.models_dir / f'model_{result["model_version"]}.json'
        try:
            save_json_document(path, card)
        except OSError as error:
            self.get_logger().error(f'cannot save {path}: {error}')
        self.model_publisher.publish(String(data=json.dumps(card, allow_nan=False)))
        self.diagnostics.set('model_version', result['model_version'])
        if 'reward_model' in card:
            rmse = card['reward_model'].get('fit_info', {}).get('rmse')
            self.diagnostics.set('reward_model_rmse', rmse)
        self.get_logger().info(model_summary(result))

    # ------------------------------------------------------------------ shutdown

    def on_shutdown(self) -> None:
        self.close()

    def close(self) -> None:
        """Close the recording (summary + indexes) and stop the fit worker."""
        if not self.recording.closed:
            self.recording.close()
            self.get_logger().info(
                f'recording closed: {self.recording.directory} '
                f'({self.recording.observations_written} observations, '
                f'{self.recording.actions_written} actions)'
            )
        self.worker.close()

    def destroy_node(self) -> None:
        self.close()
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    return run_node(ModelUpdater, args)


if __name__ == '__main__':
    sys.exit(main())
