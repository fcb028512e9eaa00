"""Model updater: records every real transition and refits the E-SINDy model of the plant.

It pairs each observation with the action that answered it and the next observation by
their stamps (never by arrival order), keeps everything in an MCAP recording in the run
directory (readable by rosbag2 and Foxglove), and every ``refit_every`` new exploration
transitions fits a new model in a worker process, so that a fit of a second or more never
delays the recording of the plant's messages. A model is published on ``/sindyrl/model``
(latched: a trainer that starts later still gets it) only when multi-step rollouts on
held-out trajectories stay close; a diverging model is reported and never published.

Only transitions answered in ``explore`` mode train the model; ``evaluate`` episodes are
recorded with their mode but left out of every fit, because they are for reporting.

Rewards the plant reports on ``/sindyrl/reward`` (stamped with the observation the step
started from) are recorded too. When the task's reward is ``learned``, every fit also
fits a sparse polynomial reward model on the rewarded exploration transitions and sends
it in the model card (``reward_model``), so the policy trainer can score surrogate steps.

The recording is ``run_dir/recording/session_<s>/segment_<k>.mcap``: one session per start
of the node, split into segments closed every ``segment_seconds`` (as rosbag2 splits a
bag), so a crash leaves at most the open segment without its index; the node rewrites any
such segment into a complete file when it starts. Each session is paired on its own (a
restarted simulator's clock starts at 0 again). With ``resume`` the node fits at once on
the transitions of every earlier session of the run, and model versions go on.
"""

from __future__ import annotations

from collections.abc import Sequence
import json
import multiprocessing
from pathlib import Path
import signal
import sys
import threading
import time
import traceback
from typing import Any

import numpy as np
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import String

from sindyrl_ros.core.mcap_log import (
    EVALUATE,
    EXPLORE,
    REWARD_NAME,
    LogFormatError,
    SegmentedRecordingWriter,
    SessionTransitions,
    TransitionAssembler,
    TransitionLog,
    read_recording,
    recover_recording,
)
from sindyrl_ros.core.protocol import FIT_STATE_NAMES, FitState
from sindyrl_ros.core.reward import LEARNED_REWARD
from sindyrl_ros.core.serialization import FormatError, parse_json_text, save_json_document
from sindyrl_ros.nodes.common import (
    LATCHED_QOS,
    RESUME_PARAMETER,
    SHARED_PARAMETERS,
    TRANSITION_QOS,
    Diagnostics,
    MessageError,
    ParamSpec,
    check_parameter_files,
    configuration_error,
    declare_parameters,
    highest_version,
    json_safe,
    lower_thread_priority,
    read_vector,
    run_node,
    stamp_to_ns,
    task_from_parameters,
    vector_message,
)

# task_from_parameters and highest_version moved to nodes.common; still importable from here.
_json_safe = json_safe

# Every transition counts and a burst (a replayed log, a fit hogging the CPU) must not
# overflow the reader: reliable like RELIABLE_QOS, with a deep queue.

# Seconds between checks whether /sindyrl/fit_state changed (published only on a change).
FIT_STATE_PERIOD_S = 0.2

MODEL_UPDATER_PARAMETERS = [
    ParamSpec(
        'run_dir',
        'sindyrl_run',
        'Directory of this run: the MCAP recording (recording/) and '
        'models/model_<version>.json are written here',
        read_only=True,
    ),
    RESUME_PARAMETER,
    ParamSpec(
        'initial_log',
        '',
        'Recording to load at start-up, fit and publish from: an .mcap file or a recording '
        "directory (<run>/recording) of another run; copied into this run's recording as "
        'sessions of their own; empty = start without data',
        read_only=True,
    ),
    ParamSpec(
        'refit_every',
        200,
        'New exploration transitions between two model fits '
        '(the first fit waits for this many too)',
        range=(1, 1_000_000_000),
    ),
    ParamSpec(
        'max_validation_error',
        0.5,
        'Largest held-out multi-step rollout NRMSE of an '
        'accepted model; a worse or diverging model is rejected, never published',
        range=(0.0, 1e9),
    ),
    ParamSpec(
        'validation_horizon', 50, 'Steps of each held-out rollout window', range=(1, 1_000_000)
    ),
    ParamSpec(
        'validation_fraction',
        0.25,
        'Tail fraction of each trajectory held out for validation',
        range=(0.0, 0.9),
    ),
    ParamSpec(
        'library_degree', 3, 'Largest total polynomial degree of the candidate terms', range=(1, 8)
    ),
    ParamSpec(
        'library_control',
        'affine',
        'How actions enter the model: full polynomial, '
        'control-affine f(x) + g(x) u, linear f(x) + B u, or not at all',
        choices=('full', 'affine', 'linear', 'none'),
    ),
    ParamSpec(
        'library_circle_reduction',
        True,
        'Keep sin of a (cos, sin) angle pair only to '
        'the first power (removes the collinearity cos^2 + sin^2 = 1)',
    ),
    ParamSpec('ensemble_models', 20, 'E-SINDy ensemble members', range=(1, 10_000)),
    ParamSpec(
        'stlsq_threshold',
        0.001,
        'STLSQ threshold: smaller coefficients are zeroed',
        range=(0.0, 1e6),
    ),
    ParamSpec('ridge_alpha', 1e-5, 'Ridge regularisation of each STLSQ step', range=(0.0, 1e6)),
    ParamSpec('bagging', True, 'Fit each ensemble member on a bootstrap resample'),
    ParamSpec('library_ensemble', True, 'Drop one random candidate term per ensemble member'),
    ParamSpec(
        'aggregate', 'median', 'How member coefficients are combined', choices=('median', 'mean')
    ),
    ParamSpec(
        'reward_library_degree',
        2,
        "Largest polynomial degree of the learned reward's candidate terms (a task with "
        "reward 'learned')",
        range=(1, 8),
    ),
    ParamSpec(
        'reward_stlsq_threshold',
        0.01,
        'Learned reward: a term is dropped when its coefficient, on unit-RMS features, is '
        'below this fraction of the reward standard deviation',
        range=(0.0, 1e6),
    ),
    ParamSpec(
        'reward_observation',
        'auto',
        'Learned reward: whether it is a function of the observation before the step '
        '(current), after it (next), or whichever of the two fits the rewards better (auto)',
        choices=('auto', 'current', 'next'),
    ),
    ParamSpec(
        'n_start_observations',
        256,
        'Recorded observations sent with the model for starting surrogate episodes',
        range=(1, 1_000_000),
    ),
    ParamSpec(
        'gap_factor',
        1.5,
        'A step between observation stamps longer than this many '
        'control periods splits the trajectory',
        range=(1.0, 1000.0),
        read_only=True,
    ),
    ParamSpec(
        'max_observation_jump',
        0.25,
        'A change of an observation feature larger than '
        'this fraction of its task range in one step is a plant reset and splits the '
        'trajectory; 0 disables',
        range=(0.0, 100.0),
        read_only=True,
    ),
    ParamSpec(
        'fit_niceness',
        10,
        'Nice value of the fit worker: fits yield the CPU to the controller and callbacks '
        '(0 = same priority)',
        range=(0, 19),
        read_only=True,
    ),
    ParamSpec(
        'fit_worker',
        'process',
        'Where fits run: a separate process (callbacks never wait for the GIL) or a thread',
        read_only=True,
        choices=('process', 'thread'),
    ),
    ParamSpec(
        'flush_period',
        1.0,
        'Seconds between flushes of the recording to disk',
        range=(0.01, 3600.0),
        read_only=True,
    ),
    ParamSpec(
        'segment_seconds',
        30.0,
        'Seconds of recording per MCAP segment: at a flush an older segment is closed '
        '(complete, with its index), so a crash leaves at most the open one to repair',
        range=(0.1, 86400.0),
        read_only=True,
    ),
    ParamSpec(
        'seed',
        0,
        'Seed of the ensemble resampling and of the start observation draw',
        range=(0, 2**31 - 1),
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
PARAMETERS = SHARED_PARAMETERS + MODEL_UPDATER_PARAMETERS


# --------------------------------------------------------------------------- fitting


def fit_model(request: dict) -> dict:
    """Fit and validate one model; runs in the worker (no ROS in here).

    Parameters
    ----------
    request : dict
        ``task`` (TaskSpec dict), ``config`` (DynaConfig fields), ``trajectories`` (list of
        (observations (T+1, n), actions (T, m), times (T+1,))), ``model_version``,
        ``n_start_observations``, ``seed``; for a task whose reward is learned also
        ``reward_trajectories`` (list of (observations (T+1, n), actions (T, m), rewards
        (T,))) and ``reward_config`` (``degree``, ``threshold``, ``observation``).

    Returns
    -------
    dict
        ``card`` (the model card), ``accepted``, ``validation``, ``fit_time_s`` and
        ``model_version``; or ``error`` (text) if the fit failed. A learned reward goes
        into the card as ``reward_model`` (``SparseRewardModel.to_dict()``).
    """
    from sindyrl_ros.core.dyna import DynaConfig, fit_dynamics, sample_start_observations
    from sindyrl_ros.core.dynamics import EnsembleConfig
    from sindyrl_ros.core.library import LibraryConfig
    from sindyrl_ros.core.tasks import TaskSpec
    from sindyrl_ros.core.trajectories import Trajectory

    started = time.perf_counter()
    try:
        task = TaskSpec.from_dict(request['task'])
        settings = dict(request['config'])
        config = DynaConfig(
            library=LibraryConfig.from_dict(settings.pop('library')),
            ensemble=EnsembleConfig.from_dict(settings.pop('ensemble')),
            **settings,
        )
        trajectories = [
            Trajectory(observations, actions, times=times)
            for observations, actions, times in request['trajectories']
        ]
        version = int(request['model_version'])
        model, validation, accepted = fit_dynamics(task, trajectories, config, version)
        rng = np.random.default_rng(int(request['seed']) + version)
        starts = sample_start_observations(trajectories, int(request['n_start_observations']), rng)
        card = model.to_dict()
        card['model_version'] = version
        card['validation'] = _json_safe(validation)
        card['start_observations'] = starts.tolist()
        card['task'] = task.name
        card['transitions'] = int(sum(t.n_steps for t in trajectories))
        card['trajectories'] = len(trajectories)
        fit_time = time.perf_counter() - started
        if task.reward == LEARNED_REWARD:
            card['reward_model'] = fit_reward_model(
                task,
                request.get('reward_trajectories', []),
                request.get('reward_config', {}),
            ).to_dict()
            fit_time = time.perf_counter() - started
        card['fit_time_s'] = fit_time
        json.dumps(card, allow_nan=False)  # a card that cannot be published is a failed fit
        return {
            'card': card,
            'accepted': bool(accepted),
            'validation': card['validation'],
            'fit_time_s': fit_time,
            'model_version': version,
        }
    except Exception as error:  # reported by the node; the worker keeps serving
        return {
            'error': f'{type(error).__name__}: {error}',
            'traceback': traceback.format_exc(),
            'fit_time_s': time.perf_counter() - started,
            'model_version': request.get('model_version'),
        }


def fit_reward_model(task, reward_trajectories: Sequence, settings: dict):
    """Fit the sparse polynomial reward of a task that learns its reward.

    Parameters
    ----------
    task : TaskSpec
    reward_trajectories : sequence of (observations (T+1, n), actions (T, m), rewards (T,))
        Rewarded exploration transitions.
    settings : dict
        ``degree`` (library degree, default 2), ``threshold`` (relative STLSQ threshold,
        default 0.01), ``observation``: ``'current'``, ``'next'`` or ``'auto'`` (fit both,
        keep the one with the smaller error).

    Returns
    -------
    SparseRewardModel

    Raises
    ------
    ValueError
        If no reward was reported for any exploration transition.
    """
    from sindyrl_ros.core.library import LibraryConfig
    from sindyrl_ros.core.reward import SparseRewardModel
    from sindyrl_ros.core.trajectories import Trajectory

    trajectories = [
        Trajectory(observations, actions, rewards)
        for observations, actions, rewards in reward_trajectories
    ]
    if not any(t.n_steps for t in trajectories):
        raise ValueError(
            f'task {task.name} learns its reward, but no reward was reported on '
            '/sindyrl/reward for any exploration transition (the plant publishes them)'
        )
    observation = settings.get('observation', 'auto')
    choices = ('current', 'next') if observation == 'auto' else (observation,)
    models = [
        SparseRewardModel(
            task.observation_names,
            task.action_names,
            library=LibraryConfig(degree=int(settings.get('degree', 2)), control='full'),
            angle_pairs=task.angle_pairs,
            threshold=float(settings.get('threshold', 0.01)),
            observation=choice,
        ).fit(trajectories)
        for choice in choices
    ]
    return min(models, key=lambda model: model.fit_info['rmse'])


def _fmt(value: Any) -> str:
    return f'{value:.4g}' if isinstance(value, float) else str(value)


def _fit_loop(connection, niceness: int = 0) -> None:
    """Worker process: answer fit requests until told to stop (None) or the pipe closes."""
    # Ctrl-C reaches the whole process group; the node decides when its worker stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    lower_thread_priority(niceness)
    # Import now, while the plant is still collecting: seconds of imports must not delay
    # the first model.
    import sindyrl_ros.core.dyna  # noqa: F401
    import sindyrl_ros.core.tasks  # noqa: F401

    while True:
        try:
            request = connection.recv()
        except (EOFError, OSError):
            return
        if request is None:
            return
        connection.send(fit_model(request))


class FitWorker:
    """Runs one fit at a time outside the executor thread and hands the result back.

    ``process`` runs fits in a spawned process (a fresh interpreter: forking a process
    that holds DDS threads is unsafe), so pysindy's Python loops never compete with the
    subscription callbacks for the GIL; ``thread`` is lighter and fine on a quiet machine.
    """

    def __init__(self, kind: str, niceness: int = 0) -> None:
        self.kind = kind
        self.niceness = niceness
        self.busy = False
        self._result: dict | None = None
        self._process = None
        self._connection = None
        if kind == 'process':
            self._start_process()

    def _start_process(self) -> None:
        context = multiprocessing.get_context('spawn')
        self._connection, child = context.Pipe()
        self._process = context.Process(
            target=_fit_loop, args=(child, self.niceness), name='sindy_fit', daemon=True
        )
        self._process.start()
        child.close()

    def submit(self, request: dict) -> None:
        """Start a fit; only one runs at a time (check ``busy`` first)."""
        if self.busy:
            raise RuntimeError('a fit is already running')
        self.busy = True
        if self.kind == 'process':
            if not self._process.is_alive():
                self._start_process()
            self._connection.send(request)
        else:

            def run() -> None:
                lower_thread_priority(self.niceness)
                self._result = fit_model(request)

            threading.Thread(target=run, name='sindy_fit', daemon=True).start()

    def poll(self) -> dict | None:
        """The finished fit's result, or None while it runs (never blocks)."""
        if not self.busy:
            return None
        if self.kind == 'process':
            try:
                if not self._connection.poll():
                    if not self._process.is_alive():
                        raise EOFError
                    return None
                result = self._connection.recv()
            except (EOFError, OSError):
                code = self._process.exitcode
                self._process = None
                self._start_process()
                result = {'error': f'fit worker process died (exit code {code})'}
        else:
            result, self._result = self._result, None
            if result is None:
                return None
        self.busy = False
        return result

    def close(self) -> None:
        if self._process is not None:
            try:
                self._connection.send(None)
            except (OSError, ValueError):
                pass
            self._process.join(timeout=2.0)
            if self._process.is_alive():
                self._process.terminate()
                self._process.join(timeout=2.0)
            self._connection.close()
            self._process = None


# --------------------------------------------------------------------------- node


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
        self.accepted = highest_version(self.models_dir, 'model_')
        self.rejected = 0
        self.refits = 0
        self.fit_failures = 0
        self._explore_at_last_fit = 0
        self._fit_started = 0.0
        self._pending_initial_fit = False
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
        self.metadata = {
            'task': self.task.name,
            'observation_names': json.dumps(self.observation_names),
            'action_names': json.dumps(self.action_names),
            'control_period': repr(self.task.dt),
            'reward': self.task.reward,
        }
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
            self._pending_initial_fit = True
            self._maybe_fit()
        self.get_logger().info(
            f'model updater ready: task {self.task.name}, recording to '
            f'{self.recording.directory}, '
            f'refit every {p.refit_every} exploration transitions'
        )

    # ------------------------------------------------------------------ recording

    def _assembler(self) -> TransitionAssembler:
        """A pairing of one session's messages into transitions (see TransitionAssembler)."""
        p = self.parameters
        span = self.task.observation_high - self.task.observation_low
        return TransitionAssembler(
            self.task.dt,
            gap_factor=p.gap_factor,
            max_jump=p.max_observation_jump * span if p.max_observation_jump > 0 else None,
        )

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
                f'{self.accepted} models accepted so far'
            )
        elif p.initial_log:
            for log in self._read('initial_log', Path(p.initial_log).expanduser()):
                metadata = dict(self.metadata, initial_log=p.initial_log)
                with SegmentedRecordingWriter(
                    self.recording_dir, metadata, segment_seconds=float('inf')
                ) as copy:
                    earlier.append(self._replay(log, copy))
        return earlier

    def _read(self, parameter: str, path: Path) -> list[TransitionLog]:
        """The sessions of a recording, checked against the task's names; FATAL if unusable."""
        try:
            logs = read_recording(path)
        except (OSError, LogFormatError) as error:
            raise configuration_error(self, parameter, str(error)) from None
        for log in logs:
            names = log.metadata.get('observation_names')
            try:
                recorded = None if names is None else parse_json_text(names, 'observation_names')
            except FormatError as error:
                raise configuration_error(self, parameter, f'{path}: {error}') from None
            if recorded is not None and recorded != self.observation_names:
                raise configuration_error(
                    self,
                    parameter,
                    f'{path} records observations {names}, the task has {self.observation_names}',
                )
            if not log.complete:
                self.get_logger().warning(
                    f'{path}: a segment ends early (its writer was stopped without closing '
                    f'it); using the {len(log.observations)} observations that are complete'
                )
        return logs

    def _replay(
        self, log: TransitionLog, copy: SegmentedRecordingWriter | None = None
    ) -> TransitionAssembler:
        """One recorded session paired on its own; copied into ``copy`` when given."""
        assembler = self._assembler()
        for observation in log.observations:
            values = self._reorder(observation.names, observation.values, self.observation_names)
            if values is None:
                continue
            if copy is not None:
                copy.write_observation(
                    observation.stamp_ns, self.observation_names, values, observation.log_time_ns
                )
            assembler.add_observation(observation.stamp_ns, values)
        for action in log.actions:
            values = self._reorder(action.names, action.values, self.action_names)
            if values is None:
                continue
            if copy is not None:
                copy.write_action(
                    action.stamp_ns,
                    self.action_names,
                    values,
                    action.frame_id,
                    action.log_time_ns,
                )
            assembler.add_action(action.stamp_ns, values, action.frame_id)
        for reward in log.rewards:
            values = self._reorder(reward.names, reward.values, (REWARD_NAME,))
            if values is None:
                continue
            if copy is not None:
                copy.write_reward(reward.stamp_ns, values[0], reward.log_time_ns)
            assembler.add_reward(reward.stamp_ns, values[0])
        self.get_logger().info(
            f'loaded {len(log.observations)} observations, {len(log.actions)} actions and '
            f'{len(log.rewards)} rewards of session {log.metadata.get("session", "-")}: '
            f'{assembler.transition_counts()}'
        )
        return assembler

    def _reorder(
        self, names: Sequence[str], values: np.ndarray, expected: Sequence[str]
    ) -> np.ndarray | None:
        index = {name: i for i, name in enumerate(names)}
        if any(name not in index for name in expected) or len(values) != len(names):
            self.diagnostics.reject('log_names', f'recorded names {list(names)}, need {expected}')
            return None
        return np.asarray([values[index[name]] for name in expected], dtype=np.float64)

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
        self._explore = counts.get(EXPLORE, 0)
        self.diagnostics.set('transitions_explore', self._explore)
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
        if self.worker.busy:
            return
        new = self._explore - self._explore_at_last_fit
        if not self._pending_initial_fit and new < self.parameters.refit_every:
            return
        if self._explore == 0:
            self._pending_initial_fit = False
            return
        trajectories = self.transitions.trajectories(modes=(EXPLORE,))
        self.diagnostics.set('trajectories', len(trajectories))
        p = self.parameters
        request = {
            'task': self.task.to_dict(),
            'config': self._dyna_settings(),
            'trajectories': [(t.observations, t.actions, t.times) for t in trajectories],
            'model_version': self.accepted + 1,
            'n_start_observations': p.n_start_observations,
            'seed': p.seed,
        }
        if self.task.reward == LEARNED_REWARD:
            rewarded = self.transitions.trajectories(modes=(EXPLORE,), rewards=True)
            request['reward_trajectories'] = [
                (t.observations, t.actions, t.rewards) for t in rewarded
            ]
            request['reward_config'] = {
                'degree': p.reward_library_degree,
                'threshold': p.reward_stlsq_threshold,
                'observation': p.reward_observation,
            }
            self.diagnostics.set('transitions_rewarded', sum(t.n_steps for t in rewarded))
        self._pending_initial_fit = False
        self._explore_at_last_fit = self._explore
        self._fit_started = time.monotonic()
        self.worker.submit(request)
        self.refits += 1
        self.diagnostics.counters['refits'] = self.refits
        self.diagnostics.set('fit_running', True)
        self._publish_fit_state()
        self.get_logger().info(
            f'fit {self.refits} started: {self._explore} exploration transitions in '
            f'{len(trajectories)} trajectories'
        )

    def fit_state(self) -> FitState:
        """What this node's fitting is doing (published on /sindyrl/fit_state)."""
        since_last = self._explore - self._explore_at_last_fit
        to_refit = 0 if self._pending_initial_fit else self.parameters.refit_every - since_last
        return FitState(
            refits=self.refits,
            models_accepted=self.accepted,
            models_rejected=self.rejected,
            fit_failures=self.fit_failures,
            fit_running=self.worker.busy,
            model_version=self.accepted,
            transitions_explore=self._explore,
            transitions_to_refit=max(0, to_refit),
        )

    def _publish_fit_state(self) -> None:
        """Publish the fit state when it changed (latched: a late subscriber gets it)."""
        state = self.fit_state()
        if state == self._published_fit_state:
            return
        self._published_fit_state = state
        stamp = self.get_clock().now().to_msg()
        self.fit_state_publisher.publish(vector_message(FIT_STATE_NAMES, state.to_vector(), stamp))

    def _dyna_settings(self) -> dict:
        p = self.parameters
        return {
            'library': {
                'degree': p.library_degree,
                'include_bias': True,
                'control': p.library_control,
                'circle_reduction': p.library_circle_reduction,
            },
            'ensemble': {
                'n_models': p.ensemble_models,
                'threshold': p.stlsq_threshold,
                'alpha': p.ridge_alpha,
                'bagging': p.bagging,
                'library_ensemble': p.library_ensemble,
                'aggregate': p.aggregate,
                'seed': p.seed,
            },
            'validation_horizon': p.validation_horizon,
            'validation_fraction': p.validation_fraction,
            'max_validation_error': p.max_validation_error,
            'n_start_observations': p.n_start_observations,
        }

    def _poll_fit(self) -> None:
        result = self.worker.poll()
        if result is None:
            return
        self.diagnostics.set('fit_running', False)
        self.diagnostics.set('last_fit_time_s', round(result.get('fit_time_s', 0.0), 3))
        if 'error' in result:
            self.fit_failures += 1
            self.diagnostics.counters['fit_failures'] = self.fit_failures
            self.diagnostics.warnings['fit'] = f'last fit failed: {result["error"]}'
            self.get_logger().error(
                f'fit {self.refits} failed: {result["error"]}\n{result.get("traceback", "")}'
            )
        else:
            self.diagnostics.warnings.pop('fit', None)
            self._fit_finished(result)
        self._maybe_fit()  # data that arrived during the fit may already call for the next
        self._publish_fit_state()

    def _fit_finished(self, result: dict) -> None:
        validation = result['validation']
        error = validation.get('nrmse')
        self.diagnostics.set('last_validation_nrmse', error)
        self.diagnostics.set('last_validation_diverged', validation.get('diverged'))
        card = result['card']
        if not result['accepted']:
            self.rejected += 1
            self.diagnostics.counters['models_rejected'] = self.rejected
            reason = (
                f'candidate model rejected: {_validated_on(validation)} rollout NRMSE {error} '
                f'(max {self.parameters.max_validation_error}), diverged '
                f'{validation.get("diverged")}, {card["transitions"]} transitions'
            )
            self.diagnostics.warnings['model'] = reason
            self.get_logger().warning(reason)
            return
        self.diagnostics.warnings.pop('model', None)
        self.accepted += 1
        version = result['model_version']
        path = self.models_dir / f'model_{version}.json'
        try:
            save_json_document(path, card)
        except OSError as error:
            self.get_logger().error(f'cannot save {path}: {error}')
        self.model_publisher.publish(String(data=json.dumps(card, allow_nan=False)))
        self.diagnostics.counters['models_accepted'] = self.accepted
        self.diagnostics.set('model_version', version)
        equations = '; '.join(card.get('equations', []))
        reward_model = card.get('reward_model')
        if reward_model is not None:
            fit = reward_model.get('fit_info', {})
            equations += (
                f'; learned {reward_model.get("equation")} (RMSE {_fmt(fit.get("rmse"))} on '
                f'{fit.get("n_samples")} rewards of std {_fmt(fit.get("reward_std"))})'
            )
            self.diagnostics.set('reward_model_rmse', fit.get('rmse'))
        self.get_logger().info(
            f'model {version} published: {_validated_on(validation)} NRMSE {_fmt(error)}, '
            f'{card.get("n_nonzero")} terms, {card["transitions"]} transitions, fit '
            f'{result["fit_time_s"]:.2f} s: {equations}'
        )

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


def _validated_on(validation: dict) -> str:
    """What the rollout error was measured on: held-out tails, or (episodes too short to
    hold anything out) the data the model was fitted on."""
    return 'held-out' if validation.get('held_out', True) else 'fitting-data (nothing held out)'


def main(args: list[str] | None = None) -> int:
    return run_node(ModelUpdater, args)


if __name__ == '__main__':
    sys.exit(main())
