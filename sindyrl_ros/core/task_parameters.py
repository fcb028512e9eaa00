"""A robot task from the shared ROS parameters: a new task is a configuration file, not code.

Every node reads the ``/**`` section of the task's parameter file. Without ``env_id`` it
names a registered task (:data:`sindyrl_ros.core.tasks.TASKS`) and may only narrow it
(tighter action limits, another control period, its own reward, threshold, episode
length or divergence bounds). With ``env_id`` the section defines a new task around any
gymnasium environment: its observation and action names, limits, (cos, sin) angle pairs,
divergence bounds, episode length, success threshold and reward. A name that is not
registered, without ``env_id``, defines a robot task without a simulator in the same way
(every part given): only a real plant (ros2_control, Gazebo, a serial rig) provides its data.
An optional ``termination`` expression of the observation names ends an episode early.

The reward is one of

* a name in :data:`sindyrl_ros.core.reward.REWARDS`;
* an expression of observation and action names, e.g.
  ``'100 * ((position >= 0.45) & (velocity >= 0)) - 0.1 * force**2'``, parsed by
  :func:`sindyrl_ros.core.reward_expression.expression_reward` against a whitelist (never
  ``eval``); observation names refer to the observation after the step;
* ``'learned'``: the plant reports its reward on ``/sindyrl/reward``, the model updater
  fits a :class:`sindyrl_ros.core.reward.SparseRewardModel` with every model and the
  policy trainer trains on it.

This module does the translation without ROS, so that the nodes and the tests build a
task from a parameter file in exactly the same way; a problem is a
:class:`TaskParameterError` naming the parameter, which the nodes turn into a start-up
error naming the parameter and the file that set it.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
import re
from typing import Any

import numpy as np

from sindyrl_ros.core.reward import LEARNED_REWARD, REWARDS
from sindyrl_ros.core.serialization import FormatError
from sindyrl_ros.core.tasks import TASKS, TaskSpec
from sindyrl_ros.params import ParameterError

__all__ = [
    'TASK_PARAMETERS',
    'TaskParameterError',
    'check_reward',
    'task_from_parameters',
]

# The shared parameters that define a task (plus use_sim_time, which is rclpy's).
TASK_PARAMETERS = (
    'task',
    'env_id',
    'observation_names',
    'action_names',
    'action_low',
    'action_high',
    'control_period',
    'reward',
    'threshold',
    'episode_length',
    'angle_pairs',
    'observation_low',
    'observation_high',
    'termination',
    'saturation_names',
    'saturation_low',
    'saturation_high',
)
# TaskSpec field -> the parameter that sets it, for error messages.
_FIELD_PARAMETER = {'name': 'task', 'dt': 'control_period', 'saturation': 'saturation_names'}


class TaskParameterError(ParameterError):
    """A shared task parameter is missing, malformed or does not fit the task."""


def _given(values: Mapping[str, Any], key: str) -> bool:
    """Whether a value is set: not missing, not empty, not zero."""
    value = values.get(key)
    if value is None:
        return False
    if isinstance(value, (list, tuple, np.ndarray, str)):
        return len(value) > 0
    return bool(value)


def _names(values: Mapping[str, Any], key: str) -> list[str]:
    names = values.get(key)
    names = [] if names is None else names
    if isinstance(names, str) or not all(isinstance(name, str) for name in names):
        raise TaskParameterError(key, f'expected a list of names, got {names!r}')
    return list(names)


def _numbers(values: Mapping[str, Any], key: str, length: int | None = None) -> list[float]:
    """A list of finite numbers (empty when not given), checked against ``length``."""
    numbers = values.get(key)
    numbers = [] if numbers is None else numbers
    if isinstance(numbers, (str, bytes)) or not isinstance(numbers, (list, tuple, np.ndarray)):
        raise TaskParameterError(key, f'expected a list of numbers, got {numbers!r}')
    result = []
    for number in numbers:
        if isinstance(number, bool) or not isinstance(number, (int, float, np.number)):
            raise TaskParameterError(key, f'expected a list of numbers, got {list(numbers)!r}')
        if not np.isfinite(number):
            raise TaskParameterError(key, f'{number!r} is not a finite number')
        result.append(float(number))
    if result and length is not None and len(result) != length:
        raise TaskParameterError(key, f'expected {length} values, got {len(result)}')
    return result


def _angle_pairs(values: Mapping[str, Any], n: int) -> list[list[int]] | None:
    """``[cos0, sin0, cos1, sin1, ...]`` as index pairs; None when not given."""
    flat = values.get('angle_pairs')
    if flat is None or len(flat) == 0:
        return None
    if isinstance(flat, (str, bytes)) or not all(
        isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in flat
    ):
        raise TaskParameterError('angle_pairs', f'expected a list of integers, got {flat!r}')
    if len(flat) % 2:
        raise TaskParameterError(
            'angle_pairs',
            f'{list(flat)} has an odd length: give the observation indices of each angle '
            'as a cos, sin pair (flattened: [cos0, sin0, cos1, sin1, ...])',
        )
    return [[int(flat[k]), int(flat[k + 1])] for k in range(0, len(flat), 2)]


def _check_env_id(env_id: str) -> None:
    """Refuse an id gymnasium does not know (typos stop every node, not only the plant).

    ``module:Env-v0`` ids import ``module`` when the plant makes the environment; they are
    not imported here.
    """
    import gymnasium

    if ':' in env_id:
        return
    if env_id.startswith('sindyrl_ros/'):
        from sindyrl_ros.core import envs

        envs.register_envs()
    try:
        gymnasium.spec(env_id)
    except gymnasium.error.Error as error:
        raise TaskParameterError('env_id', str(error)) from None


def check_reward(task: TaskSpec) -> None:
    """Refuse a reward that is not a known name, a valid expression or ``'learned'``, or that
    is not finite everywhere in the task's box.

    A named reward or an expression is evaluated at start-up on the middle of the task's
    bounds, on random observations within ``observation_low``/``observation_high`` and
    actions within the action limits, and on the corners of those bounds (all of them up
    to 10 dimensions, 1,024 random ones above). A reward written for other observations
    (too few features) fails here, not in the middle of training, and so does one that is
    NaN or infinite somewhere (``1e9**1e9``, ``log(0*theta_dot)``): one non-finite reward
    in a batch poisons every gradient of the policy trained on it.

    Raises
    ------
    TaskParameterError
        For parameter ``reward``.
    """
    if task.reward == LEARNED_REWARD:
        return
    text = repr(task.reward)
    if len(text) > 200:  # a refused expression may be 10,000 characters
        text = f'{text[:200]}... ({len(text)} characters)'
    try:
        reward = task.reward_function()
    except ValueError as error:
        raise TaskParameterError(
            'reward',
            f'{text} is not a reward: {error} (a reward is a name in '
            f'{sorted(REWARDS)}, an expression of the observation and action names, or '
            f'{LEARNED_REWARD!r})',
        ) from None
    # The box's middle, random points inside it and its corners; next observations: the
    # same points (a state at a corner may stay there), random ones in between.
    rng = np.random.default_rng(0)
    n, m = task.observation_dim, task.action_dim
    low = np.concatenate([task.observation_low, task.action_low])
    high = np.concatenate([task.observation_high, task.action_high])
    if n + m <= 10:
        bits = (np.arange(2 ** (n + m))[:, None] >> np.arange(n + m)) & 1
    else:
        bits = rng.integers(0, 2, (1024, n + m))
    points = np.vstack(
        [0.5 * (low + high), rng.uniform(low, high, (256, n + m)), np.where(bits, high, low)]
    )
    observations, actions = points[:, :n].copy(), points[:, n:].copy()
    next_observations = observations.copy()
    next_observations[1:257] = rng.uniform(low[:n], high[:n], (256, n))
    count = len(observations)
    try:
        with np.errstate(all='ignore'):
            scores = np.asarray(reward(observations, actions, next_observations))
    except Exception as error:  # a named reward indexing features this task lacks
        raise TaskParameterError(
            'reward',
            f'{text} cannot score observations {list(task.observation_names)} and '
            f'actions {list(task.action_names)}: {type(error).__name__}: {error}',
        ) from None
    if scores.shape != (count,):
        raise TaskParameterError(
            'reward', f'{text} gives shape {scores.shape} for {count} transitions, not ({count},)'
        )
    try:
        finite = np.isfinite(scores.astype(np.float64))
    except (TypeError, ValueError):
        raise TaskParameterError(
            'reward', f'{text} gives {scores.dtype} values, not numbers'
        ) from None
    if not np.all(finite):
        index = int(np.flatnonzero(~finite)[0])
        where = ', '.join(
            [
                *(f'{n}={v:.6g}' for n, v in zip(task.observation_names, observations[index])),
                *(
                    f'next {n}={v:.6g}'
                    for n, v in zip(task.observation_names, next_observations[index])
                ),
                *(f'{n}={v:.6g}' for n, v in zip(task.action_names, actions[index])),
            ]
        )
        raise TaskParameterError(
            'reward',
            f'{text} is {scores[index]} (not finite) at {where}; {int(np.sum(~finite))} of '
            f'{count} sample transitions within the observation bounds and action limits are '
            'not finite',
        )


def _registered_document(values: Mapping[str, Any], given: Collection[str]) -> dict:
    """The registered task, narrowed by the parameters that were given."""
    name = values['task']
    task = TASKS[name]
    document = task.to_dict()
    for key in ('observation_names', 'action_names'):
        names = _names(values, key)
        if names and names != list(document[key]):
            raise TaskParameterError(
                key,
                f'{names} differs from task {name}: {document[key]} (set env_id to define '
                'a new task)',
            )
    n, m = task.observation_dim, task.action_dim
    # Limits may only be tighter than the task's (a safety margin on a real robot): a file
    # that widens them is refused, never silently clamped, so what every node, the serial
    # bridge and an export enforce is exactly what the file says.
    for key, wider in (('action_low', np.less), ('action_high', np.greater)):
        limits = _numbers(values, key, m)
        if not limits:
            continue
        if np.any(wider(limits, document[key])):
            raise TaskParameterError(
                key,
                f"{limits} widens task {name}'s limit {document[key]}: a task file may only "
                'narrow the limits of a registered task',
            )
        document[key] = [float(v) for v in limits]
    for key in ('observation_low', 'observation_high'):
        bounds = _numbers(values, key, n)
        if bounds:
            document[key] = bounds
    pairs = _angle_pairs(values, n)
    if pairs is not None and pairs != document['angle_pairs']:
        raise TaskParameterError(
            'angle_pairs',
            f'{pairs} differs from task {name}: {document["angle_pairs"]} (set env_id to '
            'define a new task)',
        )
    if _given(values, 'reward'):
        document['reward'] = values['reward']
    if 'threshold' in given:
        document['threshold'] = values['threshold']
    if _given(values, 'episode_length'):
        document['episode_length'] = values['episode_length']
    if _given(values, 'control_period'):
        document['dt'] = float(values['control_period'])
    if _termination(values):
        document['termination'] = _termination(values)
    saturation = _saturation(values)
    if saturation is not None:
        document['saturation'] = saturation
    return document


def _defined_document(values: Mapping[str, Any], given: Collection[str]) -> dict:
    """A new task around ``env_id``, or a robot without a simulator: every part given."""
    name = values.get('task') or ''
    env_id = values.get('env_id') or ''
    if not isinstance(env_id, str):
        raise TaskParameterError('env_id', f'expected a gymnasium id, got {env_id!r}')
    if name in TASKS:
        raise TaskParameterError(
            'task',
            f'{name!r} is a registered task: give the task env_id defines a name of its '
            'own, or leave env_id empty to use the registered one',
        )
    what = (
        f'a task defined by env_id ({env_id})'
        if env_id
        else (
            f'task {name!r} is not registered ({", ".join(sorted(TASKS))}), so the file defines '
            'a robot task without a simulator: it'
        )
    )
    observation_names = _names(values, 'observation_names')
    action_names = _names(values, 'action_names')
    n, m = len(observation_names), len(action_names)
    missing = []
    for key, ok in (
        ('observation_names', n > 0),
        ('action_names', m > 0),
        ('action_low', _given(values, 'action_low')),
        ('action_high', _given(values, 'action_high')),
        ('control_period', _given(values, 'control_period')),
        ('reward', _given(values, 'reward')),
        ('threshold', 'threshold' in given),
        ('episode_length', _given(values, 'episode_length')),
        ('observation_low', _given(values, 'observation_low')),
        ('observation_high', _given(values, 'observation_high')),
    ):
        if not ok:
            missing.append(key)
    if missing:
        # Without env_id the likelier mistake is the task's name (a typo of a registered one).
        parameter = missing[0] if env_id else 'task'
        raise TaskParameterError(parameter, f'{what} needs {", ".join(missing)} as well')
    if env_id:
        _check_env_id(env_id)
    pairs = _angle_pairs(values, n)
    return {
        'name': name,
        'env_id': env_id,
        'observation_names': observation_names,
        'action_names': action_names,
        'action_low': _numbers(values, 'action_low', m),
        'action_high': _numbers(values, 'action_high', m),
        'angle_pairs': pairs or [],
        'reward': values['reward'],
        'threshold': values['threshold'],
        'episode_length': values['episode_length'],
        'dt': float(values['control_period']),
        'observation_low': _numbers(values, 'observation_low', n),
        'observation_high': _numbers(values, 'observation_high', n),
        'termination': _termination(values),
        'saturation': _saturation(values) or {},
    }


def _saturation(values: Mapping[str, Any]) -> dict | None:
    """``{name: [low, high]}`` from saturation_names/_low/_high; None when not given."""
    names = _names(values, 'saturation_names')
    if not names:
        return None
    limits = {}
    for key in ('saturation_low', 'saturation_high'):
        limits[key] = _numbers(values, key, len(names))
        if len(limits[key]) != len(names):
            raise TaskParameterError(
                key, f'give one value per saturated observation {names}, got {limits[key]}'
            )
    return {
        name: [low, high]
        for name, low, high in zip(
            names, limits['saturation_low'], limits['saturation_high'], strict=True
        )
    }


def _termination(values: Mapping[str, Any]) -> str:
    termination = values.get('termination') or ''
    if not isinstance(termination, str):
        raise TaskParameterError('termination', f'expected an expression, got {termination!r}')
    return termination


def check_termination(task: TaskSpec) -> None:
    """Refuse a termination expression that does not compile or cannot judge a state.

    It is evaluated once on the middle and the corners of the observation bounds.

    Raises
    ------
    TaskParameterError
        For parameter ``termination``.
    """
    if not task.termination:
        return
    try:
        terminated = task.termination_function()
    except ValueError as error:
        raise TaskParameterError(
            'termination',
            f'{task.termination!r} is not a termination condition: {error} (an expression '
            f'of the observation names {list(task.observation_names)}, true where an episode '
            'ends)',
        ) from None
    observations = np.stack(
        [
            0.5 * (task.observation_low + task.observation_high),
            task.observation_low,
            task.observation_high,
        ]
    )
    try:
        ends = np.asarray(terminated(observations))
    except Exception as error:  # evaluation of a parsed, whitelisted expression
        raise TaskParameterError(
            'termination',
            f'{task.termination!r} cannot judge observations {list(task.observation_names)}: '
            f'{type(error).__name__}: {error}',
        ) from None
    if ends.shape != (3,):
        raise TaskParameterError(
            'termination', f'{task.termination!r} gives shape {ends.shape} for 3 states, not (3,)'
        )


def task_from_parameters(
    values: Mapping[str, Any], given: Collection[str] | None = None
) -> TaskSpec:
    """The task the shared parameters describe (see the module docstring).

    Parameters
    ----------
    values : mapping
        Shared parameter values by name (a node's declared values, or the ``/**``
        ``ros__parameters`` of a parameter file); missing keys count as not given.
    given : collection of str, optional
        Parameters that were set explicitly (params file or ``-p``); needed for
        ``threshold``, whose every value is meaningful. Default: every key of ``values``.

    Returns
    -------
    TaskSpec

    Raises
    ------
    TaskParameterError
        Naming the parameter that is missing, malformed or inconsistent.
    """
    given = set(values) if given is None else set(given)
    if not _given(values, 'task'):
        raise TaskParameterError(
            'task',
            f'name the task: a registered one ({", ".join(sorted(TASKS))}) or the name of '
            'the task env_id defines',
        )
    if _given(values, 'env_id') or values.get('task') not in TASKS:
        document = _defined_document(values, given)
    else:
        document = _registered_document(values, given)
    try:
        task = TaskSpec.from_dict(document, where='task')
    except FormatError as error:
        # 'task 'name'.observation_low: ...' -> the parameter observation_low
        match = re.search(r"task(?: '[^']*')?\.(\w+)", str(error))
        field = match.group(1) if match else 'task'
        raise TaskParameterError(_FIELD_PARAMETER.get(field, field), str(error)) from None
    check_reward(task)
    check_termination(task)
    return task
