"""Node parameters as data: what each one means, its default, type and allowed values.

Each node's list of :class:`ParamSpec` lives in this package (``params.<node>``), free of
rclpy, so that the parameter reference (``docs/parameters.md``), the launch files' and the
CLI's graph description and the tests read the same declarations the nodes declare with
:func:`sindyrl_ros.ros.parameters.declare_parameters`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
import math
from typing import Any

__all__ = [
    'ParamSpec',
    'ParameterError',
    'ParameterFileError',
    'SHARED_PARAMETERS',
    'SHARED_DESCRIPTION',
    'RESUME_PARAMETER',
    'WAIT_REPORT_PARAMETER',
    'DIAGNOSTICS_PERIOD_PARAMETER',
    'check_value',
]


class ParameterError(ValueError):
    """A setting that is missing, malformed or does not fit, found without ROS.

    Raised by the ROS-free rules (``core``, ``hardware``) that read a node's settings; the
    node turns it into a :class:`ParameterFileError` that names the file that set it.

    Attributes
    ----------
    parameter : str
        The parameter to fix (e.g. ``'safe_command'``).
    problem : str
        What is wrong with it.
    """

    def __init__(self, parameter: str, problem: str) -> None:
        super().__init__(f'{parameter}: {problem}')
        self.parameter = parameter
        self.problem = problem


class ParameterFileError(Exception):
    """A parameter from a params file or the command line is unknown, mistyped or out of range.

    Raised at start-up; :func:`run_node` logs it as FATAL and exits with code 2.
    """


@dataclass(frozen=True)
class ParamSpec:
    """One node parameter: its default, what it means, and what values are allowed.

    Parameters
    ----------
    name : str
    default : bool, int, float, str or list of one of them
        Also fixes the type (an int default makes an integer parameter).
    description : str
        Shown by ``ros2 param describe``; says what the value does and its unit.
    range : (min, max), optional
        Inclusive bounds for numbers (applied to every element of a number array).
    read_only : bool
        Structural settings (names, topics, modes) that cannot change while running.
    choices : sequence of str, optional
        Allowed values of a string parameter.
    type : str, optional
        The ROS parameter type's name (a member of rclpy's ``Parameter.Type``, e.g.
        ``'DOUBLE_ARRAY'``); needed when ``default`` is an empty list, whose element type
        is unknown.
    """

    name: str
    default: Any
    description: str
    range: tuple[float, float] | None = None
    read_only: bool = False
    choices: Sequence[str] | None = None
    type: str | None = None

    def type_name(self) -> str:
        """The ROS parameter type's name: ``'DOUBLE'``, ``'STRING_ARRAY'``, ...

        The type rclpy's ``Parameter.Type.from_parameter_value`` gives the default, or
        :attr:`type` where given.
        """
        if self.type is not None:
            return self.type
        if not isinstance(self.default, list):
            return _scalar_type(self.name, self.default)
        if not self.default:
            raise ValueError(f'parameter {self.name!r}: an empty default list needs a type')
        kinds = {_scalar_type(self.name, element) for element in self.default}
        if len(kinds) != 1:
            raise ValueError(f'parameter {self.name!r}: a default list of mixed types')
        return kinds.pop() + '_ARRAY'


def _scalar_type(name: str, value: Any) -> str:
    kinds = ((bool, 'BOOL'), (int, 'INTEGER'), (float, 'DOUBLE'), (str, 'STRING'))
    for kind, name_of_type in kinds:
        if isinstance(value, kind):
            return name_of_type
    raise ValueError(f'parameter {name!r}: a default of type {type(value).__name__}')



def check_value(spec: ParamSpec, value: Any) -> str | None:
    """Why ``value`` is not allowed for ``spec`` (range, choices, finiteness), or None."""
    values = value if isinstance(value, (list, tuple)) else [value]
    for element in values:
        if isinstance(element, float) and not math.isfinite(element):
            return f'{element!r} is not a finite number'
        if spec.range is not None and isinstance(element, (int, float)):
            low, high = spec.range
            if not low <= element <= high:
                return f'{element!r} is outside the allowed range [{low}, {high}]'
        if spec.choices is not None and element not in spec.choices:
            return f'{element!r} is not one of {list(spec.choices)}'
    return None



SHARED_DESCRIPTION = ' (shared by every node: the /** section of config/<task>.yaml)'

# The task's signal names and limits: every node must agree on them. Without env_id they
# name and may narrow a registered task; with env_id they define a new one (a new task is
# a config file: see sindyrl_ros.core.task_parameters).
SHARED_PARAMETERS = [
    ParamSpec(
        'task',
        '',
        'Task name: one in sindyrl_ros.core.tasks.TASKS, or the name of the task that '
        'env_id defines' + SHARED_DESCRIPTION,
        read_only=True,
    ),
    ParamSpec(
        'env_id',
        '',
        'gymnasium id of the simulated plant of a task defined in the parameter file '
        "(e.g. MountainCarContinuous-v0; 'module:Env-v0' imports module); empty = the "
        'registered task named by task, or a robot task without a simulator when task is '
        'not registered' + SHARED_DESCRIPTION,
        read_only=True,
    ),
    ParamSpec(
        'reward',
        '',
        'Reward: a name in sindyrl_ros.core.reward.REWARDS, an expression of observation '
        "and action names (e.g. '-position**2 - 0.1*force**2'; observation names are the "
        "observation after the step; parsed against a whitelist, never eval'd), or "
        "'learned' (fitted from the rewards the plant reports on /sindyrl/reward); empty = "
        "the registered task's" + SHARED_DESCRIPTION,
        read_only=True,
    ),
    ParamSpec(
        'termination',
        '',
        'Expression of the observation names that ends an episode where true (the reward '
        "expression's whitelist; the observation after a step), e.g. 'abs(theta) > 0.2'; "
        'empty = episodes end after episode_length steps' + SHARED_DESCRIPTION,
        read_only=True,
    ),
    ParamSpec(
        'saturation_names',
        [],
        'Observations the plant clips (e.g. a velocity limit: [theta_dot]): transitions that '
        'end on a clip are left out of the model fit and the model clips its predictions '
        "there; empty = the registered task's (or none)" + SHARED_DESCRIPTION,
        read_only=True,
        type='STRING_ARRAY',
    ),
    ParamSpec(
        'saturation_low',
        [],
        'Lower clip of each of saturation_names' + SHARED_DESCRIPTION,
        read_only=True,
        type='DOUBLE_ARRAY',
    ),
    ParamSpec(
        'saturation_high',
        [],
        'Upper clip of each of saturation_names' + SHARED_DESCRIPTION,
        read_only=True,
        type='DOUBLE_ARRAY',
    ),
    ParamSpec(
        'threshold',
        0.0,
        'Mean evaluation return that counts as solved; required with env_id, otherwise the '
        "registered task's unless given" + SHARED_DESCRIPTION,
        read_only=True,
    ),
    ParamSpec(
        'episode_length',
        0,
        "Steps per episode (real and surrogate); 0 = the registered task's (required with "
        'env_id)' + SHARED_DESCRIPTION,
        range=(0, 100_000_000),
        read_only=True,
    ),
    ParamSpec(
        'angle_pairs',
        [],
        'Observation indices of angles seen as (cos, sin), flattened: '
        '[cos0, sin0, cos1, sin1, ...]; the model keeps each pair on the unit circle'
        + SHARED_DESCRIPTION,
        range=(0, 10_000),
        read_only=True,
        type='INTEGER_ARRAY',
    ),
    ParamSpec(
        'observation_low',
        [],
        'Lower bound of plausible observations per feature: a surrogate state below is a '
        "divergence (required with env_id; empty = the registered task's)" + SHARED_DESCRIPTION,
        read_only=True,
        type='DOUBLE_ARRAY',
    ),
    ParamSpec(
        'observation_high',
        [],
        'Upper bound of plausible observations per feature (see observation_low)'
        + SHARED_DESCRIPTION,
        read_only=True,
        type='DOUBLE_ARRAY',
    ),
    ParamSpec(
        'observation_names',
        [],
        'Observation feature names, in order' + SHARED_DESCRIPTION,
        read_only=True,
        type='STRING_ARRAY',
    ),
    ParamSpec(
        'action_names',
        [],
        'Action channel names, in order' + SHARED_DESCRIPTION,
        read_only=True,
        type='STRING_ARRAY',
    ),
    ParamSpec(
        'action_low',
        [],
        'Lower action limit per channel' + SHARED_DESCRIPTION,
        read_only=True,
        type='DOUBLE_ARRAY',
    ),
    ParamSpec(
        'action_high',
        [],
        'Upper action limit per channel' + SHARED_DESCRIPTION,
        read_only=True,
        type='DOUBLE_ARRAY',
    ),
    ParamSpec(
        'control_period',
        0.0,
        'Control period in seconds (= the env dt); 0 = take it from the task'
        + SHARED_DESCRIPTION,
        range=(0.0, 10.0),
        read_only=True,
    ),
]

# Every node that can wait for something (a service, a first message, an operator) says so
# after this long (see Waits).
# The learning nodes of a run (model updater, policy trainer, run supervisor) continue the
# run in their run_dir instead of starting a new one: `sindyrl-ros train --resume <run dir>`.
RESUME_PARAMETER = ParamSpec(
    'resume',
    False,
    'Continue the run in run_dir (after a crash or a stop): its recorded transitions, its '
    'last accepted model and policy, and its real steps, which count against the budget',
    read_only=True,
)

# Every node publishes its counters and status on /diagnostics at this period.
DIAGNOSTICS_PERIOD_PARAMETER = ParamSpec(
    'diagnostics_period',
    1.0,
    'Seconds between /diagnostics messages',
    range=(0.01, 3600.0),
    read_only=True,
)

WAIT_REPORT_PARAMETER = ParamSpec(
    'wait_report',
    5.0,
    'Seconds after which what the node waits for (a service, a first message, a reset) is '
    'logged as WAITING: ... and shown in /diagnostics',
    range=(0.1, 3600.0),
    read_only=True,
)
