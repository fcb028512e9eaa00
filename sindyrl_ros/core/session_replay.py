"""Recorded sessions the model updater fits on before new data comes, paired like live ones.

A run the model updater starts with ``resume`` fits at once on the sessions it recorded
before (in ``run_dir/recording``); one started with an ``initial_log`` fits on another
run's recording, copied into its own. Either way each recorded session is read, checked
against the task's names, and replayed into a :class:`TransitionAssembler` of its own,
configured exactly like the live session's (:func:`transition_assembler`): a restarted
simulator's clock starts at 0 again, so stamps of two sessions are never paired.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import json
import os
from pathlib import Path

import numpy as np

from sindyrl_ros.core.mcap_reader import TransitionLog
from sindyrl_ros.core.mcap_writer import REWARD_NAME
from sindyrl_ros.core.recording import SegmentedRecordingWriter, read_recording
from sindyrl_ros.core.serialization import FormatError, parse_json_text
from sindyrl_ros.core.transitions import TransitionAssembler

__all__ = [
    'read_sessions',
    'recording_metadata',
    'reorder',
    'replay_session',
    'transition_assembler',
]


def transition_assembler(
    task, gap_factor: float = 1.5, max_observation_jump: float = 0.25
) -> TransitionAssembler:
    """The pairing of one session's messages into transitions, for ``task``.

    Parameters
    ----------
    task : TaskSpec
        Its control period and observation bounds.
    gap_factor : float
        A step longer than this many control periods splits a trajectory.
    max_observation_jump : float
        A change of a feature by more than this fraction of its task range (high - low)
        in one step is a plant reset and splits a trajectory; 0 disables the check.

    Returns
    -------
    TransitionAssembler
    """
    span = task.observation_high - task.observation_low
    return TransitionAssembler(
        task.dt,
        gap_factor=gap_factor,
        max_jump=max_observation_jump * span if max_observation_jump > 0 else None,
    )


def recording_metadata(task) -> dict[str, str]:
    """What every segment of a run's recording says about the task it was recorded for."""
    return {
        'task': task.name,
        'observation_names': json.dumps(list(task.observation_names)),
        'action_names': json.dumps(list(task.action_names)),
        'control_period': repr(task.dt),
        'reward': task.reward,
    }


def read_sessions(
    path: str | os.PathLike, observation_names: Sequence[str]
) -> tuple[list[TransitionLog], list[str]]:
    """The sessions of a recording, checked against the task's observation names.

    Parameters
    ----------
    path : path-like
        A recording file, session or directory (see :func:`read_recording`).
    observation_names : sequence of str
        The task's; a session whose metadata records other names is refused (one that
        records none is taken as it is).

    Returns
    -------
    (logs, warnings) : list of TransitionLog, list of str
        One log per session, in order; a warning for each session that ends early (its
        writer was stopped without closing it).

    Raises
    ------
    OSError
        If the recording cannot be read.
    ValueError
        A :class:`LogFormatError` for a file that is not a recording, or naming the
        recorded observation names that are unreadable or differ from the task's.
    """
    path = Path(path)
    observation_names = list(observation_names)
    logs = read_recording(path)
    warnings = []
    for log in logs:
        names = log.metadata.get('observation_names')
        try:
            recorded = None if names is None else parse_json_text(names, 'observation_names')
        except FormatError as error:
            raise FormatError(f'{path}: {error}') from None
        if recorded is not None and recorded != observation_names:
            raise ValueError(
                f'{path} records observations {names}, the task has {observation_names}'
            )
        if not log.complete:
            warnings.append(
                f'{path}: a segment ends early (its writer was stopped without closing it); '
                f'using the {len(log.observations)} observations that are complete'
            )
    return logs, warnings


def reorder(
    names: Sequence[str], values: np.ndarray, expected: Sequence[str]
) -> np.ndarray | None:
    """``values`` (named ``names``) in the order of ``expected``; None if any is missing.

    Parameters
    ----------
    names : sequence of str
        Names of the recorded vector.
    values : numpy.ndarray, shape (len(names),)
    expected : sequence of str
        Names wanted, in the order wanted.

    Returns
    -------
    numpy.ndarray of shape (len(expected),), or None
        None where a name is missing or ``values`` does not match ``names`` in length.
    """
    index = {name: i for i, name in enumerate(names)}
    if any(name not in index for name in expected) or len(values) != len(names):
        return None
    return np.asarray([values[index[name]] for name in expected], dtype=np.float64)


def replay_session(
    log: TransitionLog,
    assembler: TransitionAssembler,
    observation_names: Sequence[str],
    action_names: Sequence[str],
    copy: SegmentedRecordingWriter | None = None,
    reject: Callable[[str], None] | None = None,
) -> TransitionAssembler:
    """Pair one recorded session's messages in ``assembler``; copy them when asked.

    Parameters
    ----------
    log : TransitionLog
        One session, from :func:`read_sessions`.
    assembler : TransitionAssembler
        A fresh one for this session (:func:`transition_assembler`).
    observation_names, action_names : sequence of str
        The task's: recorded vectors are put in this order (a recording may name them in
        another).
    copy : SegmentedRecordingWriter, optional
        Every message used is written here too, with its stamp, mode and log time.
    reject : callable(str), optional
        Told about each message left out because its names do not match the task's.

    Returns
    -------
    TransitionAssembler
        ``assembler``, holding the session.
    """

    def values_of(vector, expected) -> np.ndarray | None:
        values = reorder(vector.names, vector.values, expected)
        if values is None and reject is not None:
            reject(f'recorded names {list(vector.names)}, need {list(expected)}')
        return values

    observation_names, action_names = list(observation_names), list(action_names)
    for observation in log.observations:
        values = values_of(observation, observation_names)
        if values is None:
            continue
        if copy is not None:
            copy.write_observation(
                observation.stamp_ns, observation_names, values, observation.log_time_ns
            )
        assembler.add_observation(observation.stamp_ns, values)
    for action in log.actions:
        values = values_of(action, action_names)
        if values is None:
            continue
        if copy is not None:
            copy.write_action(
                action.stamp_ns, action_names, values, action.frame_id, action.log_time_ns
            )
        assembler.add_action(action.stamp_ns, values, action.frame_id)
    for reward in log.rewards:
        values = values_of(reward, (REWARD_NAME,))
        if values is None:
            continue
        if copy is not None:
            copy.write_reward(reward.stamp_ns, values[0], reward.log_time_ns)
        assembler.add_reward(reward.stamp_ns, values[0])
    return assembler
