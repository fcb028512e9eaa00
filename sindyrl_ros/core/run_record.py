"""What a Dyna run has done, as the run supervisor counts it, and what summary.json reports.

The run supervisor turns :class:`~sindyrl_ros.core.protocol.DynaProtocol`'s decisions into
service calls; :class:`RunRecord` is everything else it keeps, without ROS:

- **Inputs, checked.** Episode records (``/sindyrl/episode``), model cards
  (``/sindyrl/model``) and policies (``/sindyrl/policy``) arrive as JSON anyone on the
  network may publish: :func:`parse_episode`, :func:`parse_model_card` and
  :func:`parse_policy` give what the run needs of them or a
  :class:`~sindyrl_ros.core.serialization.FormatError` saying why not, never another
  exception.
- **Real steps.** The plant's episode records say how many steps it made in all
  (``real_steps``, counted from 0 on each start of the plant); an evaluation episode's
  steps are counted apart (``eval_steps``): they are for reporting, not training data, and
  SINDy-RL's claim is about the training interactions. Steps of an episode cut short by a
  mode switch's reset count as training steps: a few of them ran in the other mode, and
  overcounting training is the safe side.
- **Evaluations.** The returns of ``eval_episodes`` deterministic episodes, their mean
  recorded against the real training steps so far, and handed to the protocol (which keeps
  the first crossing of the threshold and decides whether the run ends).
- **Summary.** The reported policy is the last one evaluated, and the model reported is
  the one *it* was trained on, not merely the newest (that is ``newest_model_version``).
- **Resume** (``sindyrl-ros train --resume <run dir>``): the run goes on in the same
  run_dir after a crash or a stop. The real steps already spent come from the progress log
  and the recording (whichever counts more: the recording also holds the steps of an
  episode cut short by a crash, which no episode event told of), the evaluations and holds
  from the progress log, and the policy last released there is not taken for a new one
  when the policy trainer republishes it. A run resumed past its initial chunk starts with
  a hold (:attr:`RunRecord.holds_first`, reason ``resume``): the model updater refits on
  every recorded transition at once, and no real step is spent before the policy trained
  on that model comes. The budget counts every earlier real step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
import math
import os
from pathlib import Path
from typing import Any

from sindyrl_ros.core.mcap_reader import LogFormatError
from sindyrl_ros.core.policy_loading import policy_from_json
from sindyrl_ros.core.progress import RunHistory
from sindyrl_ros.core.protocol import Decision, DynaProtocol, ProtocolSettings
from sindyrl_ros.core.recording import read_recording, recorded_steps
from sindyrl_ros.core.serialization import FormatError, json_safe, parse_json_text

__all__ = [
    'EpisodeRecord',
    'RunRecord',
    'parse_episode',
    'parse_model_card',
    'parse_policy',
    'read_earlier_run',
]

# The fields of an evaluation that summary.json lists for each one.
EVALUATION_FIELDS = (
    'real_steps',
    'eval_steps',
    'eval_return_mean',
    'policy_version',
    'model_version',
)


# ---------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class EpisodeRecord:
    """One episode as the plant reports it on ``/sindyrl/episode``.

    Attributes
    ----------
    episode : Any
        The plant's number for it (reported as given).
    length : int
        Steps of the episode.
    episode_return : float
        Its return.
    plant_steps : int or None
        Every step the plant made on this start, this episode's included (None: the plant
        does not say, and the episode's length is added instead).
    mode, end : str
        The controller mode most of its steps ran in, and why it ended (``'reset'``: cut
        short by a reset; '' when not said).
    """

    episode: Any
    length: int
    episode_return: float
    plant_steps: int | None
    mode: str
    end: str

    @property
    def cut_by_reset(self) -> bool:
        """Cut short by a reset: no protocol decision is taken at its end."""
        return self.end == 'reset'

    @property
    def is_evaluation(self) -> bool:
        """Its steps are evaluation steps (an evaluate episode not cut by a reset)."""
        return self.mode == 'evaluate' and not self.cut_by_reset


def _object(text: Any, where: str) -> dict:
    document = parse_json_text(text, where)
    if not isinstance(document, dict):
        raise FormatError(f'{where}: not a JSON object but {type(document).__name__}')
    return document


def _whole(document: dict, key: str, where: str) -> int:
    """``document[key]`` as a whole number >= 0 (as ``int()`` reads it)."""
    if key not in document:
        raise FormatError(f'{where}: no {key!r}')
    try:
        value = int(document[key])
    except (TypeError, ValueError):
        raise FormatError(f'{where}.{key}: {document[key]!r} is not a step count') from None
    if value < 0:
        raise FormatError(f'{where}.{key}: negative step count {value}')
    return value


def parse_episode(text: Any, where: str = 'sindyrl/episode') -> EpisodeRecord:
    """Read an episode record (JSON text; see :class:`EpisodeRecord`).

    Raises
    ------
    FormatError
        Not a JSON object, no ``length`` or ``return``, a step count that is not a whole
        number >= 0, or a return that is neither a number nor null (null: rewards were
        missing, the return is NaN); the message names the field.
    """
    record = _object(text, where)
    length = _whole(record, 'length', where)
    if 'return' not in record:
        raise FormatError(f"{where}: no 'return'")
    if record['return'] is None:
        # Rewards were missing (a learned reward the plant did not report): the steps count,
        # the return is unknown.
        episode_return = math.nan
    else:
        try:
            episode_return = float(record['return'])
        except (TypeError, ValueError):
            raise FormatError(f'{where}.return: {record["return"]!r} is not a number') from None
    plant_steps = _whole(record, 'real_steps', where) if 'real_steps' in record else None
    return EpisodeRecord(
        episode=record.get('episode'),
        length=length,
        episode_return=episode_return,
        plant_steps=plant_steps,
        mode=str(record.get('mode', '')),
        end=str(record.get('end', '')),
    )


def parse_model_card(text: Any, where: str = 'sindyrl/model') -> dict:
    """What the run reports of a model card (JSON text).

    Returns
    -------
    dict
        ``model_version``, ``equations`` (list of str), ``n_nonzero``,
        ``validation_nrmse``, ``validation_held_out``, ``transitions``.

    Raises
    ------
    FormatError
        Not a JSON object, no whole ``model_version``, ``validation`` not an object or
        ``equations`` not a list; the message names the field.
    """
    card = _object(text, where)
    if 'model_version' not in card:
        raise FormatError(f"{where}: no 'model_version'")
    try:
        version = int(card['model_version'])
    except (TypeError, ValueError):
        detail = f'{card["model_version"]!r} is not a version number'
        raise FormatError(f'{where}.model_version: {detail}') from None
    validation = card.get('validation') or {}
    if not isinstance(validation, dict):
        raise FormatError(f'{where}.validation: not an object but {type(validation).__name__}')
    equations = card.get('equations', [])
    if not isinstance(equations, list):
        raise FormatError(f'{where}.equations: not a list but {type(equations).__name__}')
    return {
        'model_version': version,
        'equations': [str(equation) for equation in equations],
        'n_nonzero': card.get('n_nonzero'),
        'validation_nrmse': validation.get('nrmse'),
        'validation_held_out': validation.get('held_out'),
        'transitions': card.get('transitions'),
    }


def parse_policy(
    text: Any,
    observation_names: Sequence[str],
    action_names: Sequence[str],
    where: str = '/sindyrl/policy',
) -> dict:
    """What the run reports of a policy document (checked in full, for the task's names).

    Returns
    -------
    dict
        ``policy_version``, ``source_model_version``, ``kind``, ``nn_parameters`` (the
        trainer's count, else the policy's own), ``sparse_policy_coefficients`` and the
        trainer's ``surrogate_return`` with its ``surrogate_return_episodes`` and
        ``surrogate_return_cut_short``.

    Raises
    ------
    FormatError
        Whatever :func:`~sindyrl_ros.core.policy_loading.policy_from_json` refuses.
    """
    policy = policy_from_json(text, where, observation_names, action_names)
    metadata = policy.metadata
    return {
        'policy_version': metadata.get('policy_version'),
        'source_model_version': metadata.get('source_model_version'),
        'kind': policy.kind,
        'nn_parameters': metadata.get('nn_parameters', policy.n_parameters),
        'sparse_policy_coefficients': metadata.get('sparse_policy_coefficients'),
        'surrogate_return': metadata.get('surrogate_return'),
        'surrogate_return_episodes': metadata.get('surrogate_return_episodes'),
        'surrogate_return_cut_short': metadata.get('surrogate_return_cut_short'),
    }


def read_earlier_run(run_dir: str | os.PathLike) -> tuple[RunHistory, dict[str, int]]:
    """What the earlier starts of the run in ``run_dir`` left: its progress log's history
    and the real steps its recording (``run_dir/recording``) holds, per controller mode.

    Raises
    ------
    ValueError
        The progress log or the recording cannot be read (the message says which), or
        neither holds anything: no earlier run to resume.
    """
    history = RunHistory.read(run_dir)
    recording = Path(run_dir) / 'recording'
    try:
        recorded = recorded_steps(read_recording(recording)) if recording.exists() else {}
    except (OSError, LogFormatError) as error:
        raise ValueError(f'cannot read {recording}: {error}') from None
    if history.starts == 0 and not recorded:
        raise ValueError(
            f'{run_dir} holds no earlier run (no progress.jsonl entry, no recording): '
            'nothing to resume'
        )
    return history, recorded


# ---------------------------------------------------------------------- the record


class RunRecord:
    """A run's counts, models, policies, evaluations and holds; its summary (module docstring).

    Owns the run's :class:`~sindyrl_ros.core.protocol.DynaProtocol` (``protocol``), which
    :meth:`resume` rebuilds from the earlier starts. Times are monotonic seconds passed in.

    Parameters
    ----------
    task : str
        The task's name.
    settings : ProtocolSettings
        Budget, threshold, chunks and holds of the protocol.
    eval_episodes : int
        Deterministic episodes per evaluation.
    started : float
        When this start of the run began.
    """

    def __init__(
        self, task: str, settings: ProtocolSettings, eval_episodes: int, started: float
    ) -> None:
        self.task = task
        self.settings = settings
        self.eval_episodes = int(eval_episodes)
        self.started = float(started)
        self.protocol = DynaProtocol(settings)
        self.starts = 1
        self.plant_steps = 0  # every real step the plant made (training + evaluation)
        self.eval_steps = 0
        self.episodes = 0
        self.evaluations: list[dict] = []
        self.model: dict = {}  # the newest model card's summary
        self.models: dict[int, dict] = {}  # every model's, by version
        self.policy: dict = {}  # the newest policy's summary
        self.evaluating_policy: dict = {}
        self.eval_returns: list[float] = []
        self.held_wall_time = 0.0  # summed over the holds that ended
        self.hold_started: float | None = None
        self.stop_reason = ''
        self.node_status: dict[str, dict] = {}  # the other nodes' last /diagnostics, for people
        self.history: RunHistory | None = None  # what resume() went on from
        # The plant's own step count (in its episode records) starts from 0 on each start.
        self._plant_steps_before = 0

    @property
    def real_steps(self) -> int:
        """Real training steps: every plant step that was not an evaluation step."""
        return max(0, self.plant_steps - self.eval_steps)

    @property
    def model_version(self) -> int:
        """The newest accepted model's version (0: none yet)."""
        return int(self.model.get('model_version', 0) or 0)

    # -- resume ----------------------------------------------------------------------
    def resume(self, history: RunHistory, recorded: dict[str, int]) -> dict:
        """Go on from the run's earlier starts (see :func:`read_earlier_run`).

        Returns
        -------
        dict
            What was taken over, for the ``start`` event: ``real_steps``, ``eval_steps``,
            ``recorded_steps``, ``progress_real_steps``, ``evaluations``, ``holds``,
            ``released_policy_version``.
        """
        recorded_eval = recorded.get('evaluate', 0)
        recorded_training = sum(n for mode, n in recorded.items() if mode != 'evaluate')
        self.eval_steps = max(history.eval_steps, recorded_eval)
        self._plant_steps_before = max(history.real_steps, recorded_training) + self.eval_steps
        self.plant_steps = self._plant_steps_before
        self.evaluations = list(history.evaluations)
        self.held_wall_time = history.held_wall_time_s
        self.protocol = DynaProtocol(
            self.settings,
            real_steps=self.real_steps,
            holds=history.holds,
            released_policy=history.released_policy_version,
            released_model=history.released_model_version,
            evaluated_policy=self.evaluations[-1]['policy_version'] if self.evaluations else None,
        )
        self.starts = history.starts + 1
        self.history = history
        return {
            'real_steps': self.real_steps,
            'eval_steps': self.eval_steps,
            'recorded_steps': recorded,
            'progress_real_steps': history.real_steps,
            'evaluations': len(self.evaluations),
            'holds': self.protocol.holds,
            'released_policy_version': self.protocol.released_policy,
        }

    @property
    def holds_first(self) -> bool:
        """A resumed, holding run past its initial chunk starts with a hold."""
        s = self.settings
        return bool(
            self.history is not None
            and s.hold_for_policy
            and (self.protocol.holds > 0 or self.real_steps >= s.initial_steps)
        )

    # -- inputs ----------------------------------------------------------------------
    def count_episode(self, episode: EpisodeRecord) -> None:
        """Count an episode's steps (real training or evaluation)."""
        self.episodes += 1
        if episode.is_evaluation:
            self.eval_steps += episode.length
        if episode.plant_steps is not None:
            self.plant_steps = max(
                self.plant_steps, self._plant_steps_before + episode.plant_steps
            )
        else:
            self.plant_steps += episode.length

    def add_model(self, model: dict) -> None:
        """An accepted model (:func:`parse_model_card`) is the newest."""
        self.model = model
        self.models[model['model_version']] = model

    def add_policy(self, policy: dict) -> None:
        """A policy (:func:`parse_policy`) is the newest; the protocol learns of it."""
        self.policy = policy
        self.protocol.policy_arrived(policy['policy_version'], policy['source_model_version'])

    # -- evaluations -----------------------------------------------------------------
    def begin_evaluation(self) -> None:
        """The newest policy is (again) the one evaluated, from its first episode."""
        self.evaluating_policy = dict(self.policy)
        self.eval_returns = []

    def add_evaluation_return(self, episode_return: float) -> bool:
        """One evaluation episode's return; True once ``eval_episodes`` of them came."""
        self.eval_returns.append(float(episode_return))
        return len(self.eval_returns) >= self.eval_episodes

    def end_evaluation(self, now: float) -> tuple[dict, Decision]:
        """Record the evaluation (its mean return against the real steps so far) and ask the
        protocol what comes next (finish, or explore on)."""
        returns = self.eval_returns[: self.eval_episodes]
        mean = sum(returns) / len(returns)
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
            'wall_time_s': now - self.started,
        }
        self.evaluations.append(evaluation)
        return evaluation, decision

    @property
    def last_return(self) -> float | None:
        """The mean return of the last evaluation (None: none yet)."""
        return self.evaluations[-1]['eval_return_mean'] if self.evaluations else None

    # -- holds -----------------------------------------------------------------------
    def hold_began(self, now: float) -> None:
        """The plant is held: the protocol counts the hold, its wall time runs."""
        self.protocol.held()
        self.hold_started = float(now)

    def hold_ended(self, now: float) -> float:
        """The hold is over; returns how long it lasted (seconds)."""
        held = now - self.hold_started if self.hold_started is not None else 0.0
        self.held_wall_time += held
        self.hold_started = None
        return held

    def held_wall_time_s(self, now: float) -> float:
        """Wall time the plant was held, the hold in progress included."""
        running = now - self.hold_started if self.hold_started is not None else 0.0
        return self.held_wall_time + running

    # -- results ---------------------------------------------------------------------
    def reported_model(self) -> dict:
        """The model the last evaluated (else the newest) policy was trained on."""
        last = self.evaluations[-1] if self.evaluations else {}
        source = last.get('source_model_version', self.policy.get('source_model_version'))
        return self.models.get(source, {} if source is not None else self.model)

    def summary(self, now: float) -> dict:
        """The content of summary.json (JSON-safe: NaN and infinities as null)."""
        last = self.evaluations[-1] if self.evaluations else {}
        model = self.reported_model()
        return json_safe(
            {
                'task': self.task,
                'reached': self.protocol.reached,
                'threshold': self.settings.threshold,
                'budget': self.settings.budget,
                'stop_reason': self.stop_reason,
                'real_steps': self.real_steps,
                'eval_steps': self.eval_steps,
                'steps_to_threshold': self.protocol.steps_to_threshold,
                'eval_return_mean': last.get('eval_return_mean'),
                'eval_returns': last.get('eval_returns', []),
                'evaluated_policy_version': last.get('policy_version'),
                # The model the reported policy was trained on, not merely the newest.
                'model_equations': model.get('equations', []),
                'model_version': model.get('model_version'),
                'model_nonzero': model.get('n_nonzero'),
                'newest_model_version': self.model.get('model_version'),
                'policy_version': self.policy.get('policy_version'),
                'policy_kind': self.policy.get('kind'),
                'nn_parameters': self.policy.get('nn_parameters'),
                'sparse_policy_coefficients': self.policy.get('sparse_policy_coefficients'),
                'episodes': self.episodes,
                'evaluations': [
                    {key: evaluation[key] for key in EVALUATION_FIELDS}
                    for evaluation in self.evaluations
                ],
                'node_diagnostics': self.node_status,
                'starts': self.starts,
                'hold_for_policy': self.settings.hold_for_policy,
                'holds': self.protocol.holds,
                'held_wall_time_s': self.held_wall_time_s(now),
                'wall_time_s': now - self.started,
            }
        )
