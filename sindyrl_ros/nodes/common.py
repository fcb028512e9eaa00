"""What every sindyrl_ros node shares: QoS, declared parameters, diagnostics, message helpers.

Parameters are declared from a list of :class:`ParamSpec` so that each one carries a
description and a range, and so that a mistake in a params file stops the node at start-up
with a message naming the key and the file, instead of surfacing later as a crash or as a
silently ignored setting (rclpy ignores unknown keys on its own). :func:`run_node` runs a
node the same way in every process: signals handled by the node (so the controller can still
publish its safe command on shutdown), shutdown when the process that started the node dies,
exit code 2 for a configuration error.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import ctypes
from dataclasses import dataclass
import json
import math
import os
from pathlib import Path
import re
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from builtin_interfaces.msg import Time as TimeMsg
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
import numpy as np
from rcl_interfaces.msg import (
    FloatingPointRange,
    IntegerRange,
    ParameterDescriptor,
    SetParametersResult,
)
import rclpy
from rclpy.clock import Clock, ClockType
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray, MultiArrayDimension, String
import yaml

from sindyrl_ros.graph import PARENT_PID_ENV

if TYPE_CHECKING:
    from sindyrl_ros.core.tasks import TaskSpec

__all__ = [
    'SENSOR_QOS',
    'RELIABLE_QOS',
    'TRANSITION_QOS',
    'EPISODE_QOS',
    'Waits',
    'EpisodeReporter',
    'WAIT_REPORT_PARAMETER',
    'RESUME_PARAMETER',
    'LATCHED_QOS',
    'ParamSpec',
    'ParameterFileError',
    'ParameterValues',
    'SHARED_PARAMETERS',
    'task_from_parameters',
    'highest_version',
    'json_safe',
    'declare_parameters',
    'check_parameter_files',
    'configuration_error',
    'Diagnostics',
    'MessageError',
    'vector_message',
    'read_vector',
    'command_message',
    'command_stamp_ns',
    'stamp_to_ns',
    'ns_to_stamp',
    'run_node',
]

# Sensor streams: a late sample is worthless, so best effort and a short queue.
SENSOR_QOS = qos_profile_sensor_data
# Observations, actions, commands: every sample counts (the model updater pairs them).
RELIABLE_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE
)
# What the model updater records (observations, actions, rewards): a reliable writer keeps
# only `depth` samples for resending, so bursts need a deep history on both sides.
TRANSITION_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST, depth=1000, reliability=ReliabilityPolicy.RELIABLE
)
# Episode records: a run supervisor that starts later still gets the recent ones.
EPISODE_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=100,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.TRANSIENT_LOCAL,
)
# Models, policies, e-stop: a node that starts later still gets the latest value.
LATCHED_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=1,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.TRANSIENT_LOCAL,
)

# --------------------------------------------------------------------------- parameters


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
    type : rclpy.parameter.Parameter.Type, optional
        Needed when ``default`` is an empty list, whose element type is unknown.
    """

    name: str
    default: Any
    description: str
    range: tuple[float, float] | None = None
    read_only: bool = False
    choices: Sequence[str] | None = None
    type: Parameter.Type | None = None

    def parameter_type(self) -> Parameter.Type:
        if self.type is not None:
            return self.type
        if isinstance(self.default, list) and not self.default:
            raise ValueError(f'parameter {self.name!r}: an empty default list needs a type')
        return Parameter.Type.from_parameter_value(self.default)


_SHARED_DESCRIPTION = ' (shared by every node: the /** section of config/<task>.yaml)'

# The task's signal names and limits: every node must agree on them. Without env_id they
# name and may narrow a registered task; with env_id they define a new one (a new task is
# a config file: see sindyrl_ros.core.task_parameters).
SHARED_PARAMETERS = [
    ParamSpec(
        'task',
        '',
        'Task name: one in sindyrl_ros.core.tasks.TASKS, or the name of the task that '
        'env_id defines' + _SHARED_DESCRIPTION,
        read_only=True,
    ),
    ParamSpec(
        'env_id',
        '',
        'gymnasium id of the simulated plant of a task defined in the parameter file '
        "(e.g. MountainCarContinuous-v0; 'module:Env-v0' imports module); empty = the "
        'registered task named by task, or a robot task without a simulator when task is '
        'not registered' + _SHARED_DESCRIPTION,
        read_only=True,
    ),
    ParamSpec(
        'reward',
        '',
        'Reward: a name in sindyrl_ros.core.reward.REWARDS, an expression of observation '
        "and action names (e.g. '-position**2 - 0.1*force**2'; observation names are the "
        "observation after the step; parsed against a whitelist, never eval'd), or "
        "'learned' (fitted from the rewards the plant reports on /sindyrl/reward); empty = "
        "the registered task's" + _SHARED_DESCRIPTION,
        read_only=True,
    ),
    ParamSpec(
        'termination',
        '',
        'Expression of the observation names that ends an episode where true (the reward '
        "expression's whitelist; the observation after a step), e.g. 'abs(theta) > 0.2'; "
        'empty = episodes end after episode_length steps' + _SHARED_DESCRIPTION,
        read_only=True,
    ),
    ParamSpec(
        'saturation_names',
        [],
        'Observations the plant clips (e.g. a velocity limit: [theta_dot]): transitions that '
        'end on a clip are left out of the model fit and the model clips its predictions '
        "there; empty = the registered task's (or none)" + _SHARED_DESCRIPTION,
        read_only=True,
        type=Parameter.Type.STRING_ARRAY,
    ),
    ParamSpec(
        'saturation_low',
        [],
        'Lower clip of each of saturation_names' + _SHARED_DESCRIPTION,
        read_only=True,
        type=Parameter.Type.DOUBLE_ARRAY,
    ),
    ParamSpec(
        'saturation_high',
        [],
        'Upper clip of each of saturation_names' + _SHARED_DESCRIPTION,
        read_only=True,
        type=Parameter.Type.DOUBLE_ARRAY,
    ),
    ParamSpec(
        'threshold',
        0.0,
        'Mean evaluation return that counts as solved; required with env_id, otherwise the '
        "registered task's unless given" + _SHARED_DESCRIPTION,
        read_only=True,
    ),
    ParamSpec(
        'episode_length',
        0,
        "Steps per episode (real and surrogate); 0 = the registered task's (required with "
        'env_id)' + _SHARED_DESCRIPTION,
        range=(0, 100_000_000),
        read_only=True,
    ),
    ParamSpec(
        'angle_pairs',
        [],
        'Observation indices of angles seen as (cos, sin), flattened: '
        '[cos0, sin0, cos1, sin1, ...]; the model keeps each pair on the unit circle'
        + _SHARED_DESCRIPTION,
        range=(0, 10_000),
        read_only=True,
        type=Parameter.Type.INTEGER_ARRAY,
    ),
    ParamSpec(
        'observation_low',
        [],
        'Lower bound of plausible observations per feature: a surrogate state below is a '
        "divergence (required with env_id; empty = the registered task's)" + _SHARED_DESCRIPTION,
        read_only=True,
        type=Parameter.Type.DOUBLE_ARRAY,
    ),
    ParamSpec(
        'observation_high',
        [],
        'Upper bound of plausible observations per feature (see observation_low)'
        + _SHARED_DESCRIPTION,
        read_only=True,
        type=Parameter.Type.DOUBLE_ARRAY,
    ),
    ParamSpec(
        'observation_names',
        [],
        'Observation feature names, in order' + _SHARED_DESCRIPTION,
        read_only=True,
        type=Parameter.Type.STRING_ARRAY,
    ),
    ParamSpec(
        'action_names',
        [],
        'Action channel names, in order' + _SHARED_DESCRIPTION,
        read_only=True,
        type=Parameter.Type.STRING_ARRAY,
    ),
    ParamSpec(
        'action_low',
        [],
        'Lower action limit per channel' + _SHARED_DESCRIPTION,
        read_only=True,
        type=Parameter.Type.DOUBLE_ARRAY,
    ),
    ParamSpec(
        'action_high',
        [],
        'Upper action limit per channel' + _SHARED_DESCRIPTION,
        read_only=True,
        type=Parameter.Type.DOUBLE_ARRAY,
    ),
    ParamSpec(
        'control_period',
        0.0,
        'Control period in seconds (= the env dt); 0 = take it from the task'
        + _SHARED_DESCRIPTION,
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

WAIT_REPORT_PARAMETER = ParamSpec(
    'wait_report',
    5.0,
    'Seconds after which what the node waits for (a service, a first message, a reset) is '
    'logged as WAITING: ... and shown in /diagnostics',
    range=(0.1, 3600.0),
    read_only=True,
)

_ARRAY_ELEMENT = {
    Parameter.Type.BOOL_ARRAY: Parameter.Type.BOOL,
    Parameter.Type.INTEGER_ARRAY: Parameter.Type.INTEGER,
    Parameter.Type.DOUBLE_ARRAY: Parameter.Type.DOUBLE,
    Parameter.Type.STRING_ARRAY: Parameter.Type.STRING,
}
_TYPE_WORDS = {
    Parameter.Type.BOOL: 'a bool',
    Parameter.Type.INTEGER: 'an integer',
    Parameter.Type.DOUBLE: 'a number',
    Parameter.Type.STRING: 'a string',
    Parameter.Type.BOOL_ARRAY: 'a list of bools',
    Parameter.Type.INTEGER_ARRAY: 'a list of integers',
    Parameter.Type.DOUBLE_ARRAY: 'a list of numbers',
    Parameter.Type.STRING_ARRAY: 'a list of strings',
    Parameter.Type.BYTE_ARRAY: 'a list of bytes',
    Parameter.Type.NOT_SET: 'not set',
}
# Set by run_node: the argument list the node was started with (for --params-file).
_command_line: list[str] | None = None


def _ros_arguments(args: Sequence[str]) -> tuple[list[str], list[str]]:
    """The ``--params-file`` paths and ``-p`` keys in a command line, in order."""
    files: list[str] = []
    keys: list[str] = []
    inside = False
    tokens = list(args)
    index = 0
    while index < len(tokens):
        token = tokens[index]
        if token == '--ros-args':
            inside = True
        elif token == '--':
            inside = False
        elif inside and token == '--params-file' and index + 1 < len(tokens):
            files.append(tokens[index + 1])
            index += 1
        elif inside and token in ('-p', '--param') and index + 1 < len(tokens):
            keys.append(tokens[index + 1].split(':=', 1)[0])
            index += 1
        index += 1
    return files, keys


def _flatten(parameters: dict, prefix: str = '') -> dict[str, Any]:
    """Nested YAML mappings become dotted parameter names, as rcl reads them."""
    flat: dict[str, Any] = {}
    for key, value in parameters.items():
        name = f'{prefix}{key}'
        if isinstance(value, dict):
            flat.update(_flatten(value, name + '.'))
        else:
            flat[name] = value
    return flat


def _section_matches(pattern: str, fully_qualified_name: str) -> bool:
    """rcl's node-name matching: exact, or with ``*`` (one token) and ``**`` (any tokens)."""
    tokens = [token for token in pattern.strip('/').split('/') if token]
    regex = ''
    for token in tokens:
        if token == '**':
            regex += '(/[^/]+)*'
        else:
            regex += '/' + '[^/]*'.join(re.escape(part) for part in token.split('*'))
    return re.fullmatch(regex or '/', fully_qualified_name) is not None


def _node_sections(document: Any, prefix: str = '') -> list[tuple[str, dict]]:
    """(node path, ros__parameters) for every node section of a params file."""
    sections: list[tuple[str, dict]] = []
    if not isinstance(document, dict):
        return sections
    for key, value in document.items():
        path = f'{prefix}/{str(key).strip("/")}' if prefix else str(key)
        if isinstance(value, dict) and 'ros__parameters' in value:
            parameters = value['ros__parameters']
            sections.append((path, parameters if isinstance(parameters, dict) else {}))
        elif isinstance(value, dict):
            sections.extend(_node_sections(value, path))
    return sections


def _parameter_sources(node: Node, args: Sequence[str] | None = None) -> dict[str, list[str]]:
    """Where each parameter given to this node comes from: params file paths and/or '-p'."""
    if args is None:
        args = _command_line if _command_line is not None else sys.argv
    files, keys = _ros_arguments(args)
    fully_qualified_name = node.get_fully_qualified_name()
    sources: dict[str, list[str]] = {}
    for path in files:
        try:
            document = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError) as error:
            raise ParameterFileError(f'cannot read params file {path}: {error}') from error
        for section, parameters in _node_sections(document):
            if _section_matches(section, fully_qualified_name):
                for key in _flatten(parameters):
                    sources.setdefault(key, []).append(path)
    for key in keys:
        # '-p node:key:=value' applies to that node only (and beats its params-file section).
        node_pattern, _, key = key.rpartition(':')
        if node_pattern and not _section_matches(node_pattern, fully_qualified_name):
            continue
        sources.setdefault(key, []).append('-p on the command line')
    return sources


def _where(name: str, sources: dict[str, list[str]]) -> str:
    places = sources.get(name)
    return f'set in {" and ".join(places)}' if places else 'default value'


def configuration_error(node: Node, name: str, problem: str) -> ParameterFileError:
    """A start-up error about parameter ``name``, naming the file or flag that set it.

    For cross-parameter checks made by a node after :func:`declare_parameters` (e.g. two
    lists of different lengths).
    """
    sources = _parameter_sources(node)
    return ParameterFileError(
        f'parameter {name!r} of node {node.get_fully_qualified_name()} '
        f'({_where(name, sources)}): {problem}'
    )


def _coerce(spec: ParamSpec, parameter: Parameter) -> Any:
    """The override's value as the spec's type; integers are accepted for numbers."""
    expected = spec.parameter_type()
    given = parameter.type_
    value = parameter.value
    if given == Parameter.Type.NOT_SET and expected in _ARRAY_ELEMENT:
        return []  # rcl reads an empty YAML list as 'not set'
    if given == expected:
        return list(value) if expected in _ARRAY_ELEMENT else value
    if expected == Parameter.Type.DOUBLE and given == Parameter.Type.INTEGER:
        return float(value)
    if expected == Parameter.Type.DOUBLE_ARRAY and given == Parameter.Type.INTEGER_ARRAY:
        return [float(v) for v in value]
    raise ValueError(
        f'expected {_TYPE_WORDS[expected]}, got {_TYPE_WORDS.get(given, given.name)} {value!r}'
    )


def _check_value(spec: ParamSpec, value: Any) -> str | None:
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


def _descriptor(spec: ParamSpec) -> ParameterDescriptor:
    descriptor = ParameterDescriptor(description=spec.description, read_only=spec.read_only)
    constraints = []
    if spec.range is not None:
        constraints.append(f'range [{spec.range[0]}, {spec.range[1]}]')
        expected = spec.parameter_type()
        if expected == Parameter.Type.DOUBLE:
            descriptor.floating_point_range = [
                FloatingPointRange(from_value=float(spec.range[0]), to_value=float(spec.range[1]))
            ]
        elif expected == Parameter.Type.INTEGER:
            descriptor.integer_range = [
                IntegerRange(from_value=int(spec.range[0]), to_value=int(spec.range[1]))
            ]
    if spec.choices is not None:
        constraints.append(f'one of {list(spec.choices)}')
    descriptor.additional_constraints = '; '.join(constraints)
    return descriptor


class ParameterValues:
    """The node's parameter values as attributes, kept current when a parameter changes."""

    def __init__(self) -> None:
        self._values: dict[str, Any] = {}

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__['_values'][name]
        except KeyError:
            raise AttributeError(name) from None

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def as_dict(self) -> dict[str, Any]:
        return dict(self._values)


def declare_parameters(
    node: Node,
    specs: Sequence[ParamSpec],
    on_change: Callable[[str, Any], None] | None = None,
) -> ParameterValues:
    """Declare parameters with descriptions and ranges; refuse bad values at start-up.

    Values given by a params file or ``-p`` are checked here (type, range, choices); a bad
    one raises :class:`ParameterFileError` naming the key and the file. Later changes
    (``ros2 param set``) go through the same checks in an on-set callback and are refused
    with a reason. Call :func:`check_parameter_files` once all parameters are declared.

    Parameters
    ----------
    node : rclpy.node.Node
    specs : sequence of ParamSpec
    on_change : callable(name, value), optional
        Called after a parameter accepted a new value at run time.

    Returns
    -------
    ParameterValues
        Attribute access to the current values (``values.control_period``).
    """
    values = ParameterValues()
    overrides = getattr(node, '_parameter_overrides', {})  # params files + -p, parsed by rcl
    sources = _parameter_sources(node)
    by_name = {spec.name: spec for spec in specs}
    for spec in specs:
        value = spec.default
        if spec.name in overrides:
            try:
                value = _coerce(spec, overrides[spec.name])
            except ValueError as error:
                raise ParameterFileError(
                    f'parameter {spec.name!r} of node {node.get_fully_qualified_name()} '
                    f'({_where(spec.name, sources)}): {error}'
                ) from None
        problem = _check_value(spec, value)
        if problem is not None:
            raise ParameterFileError(
                f'parameter {spec.name!r} of node {node.get_fully_qualified_name()} '
                f'({_where(spec.name, sources)}): {problem}'
            )
        descriptor = _descriptor(spec)
        expected = spec.parameter_type()
        if isinstance(value, list) and not value:
            # An empty list has no element type: declare typed, then set it. read_only is
            # enforced by the on-set callback below for these.
            descriptor.read_only = False
            node.declare_parameter(spec.name, expected, descriptor, ignore_override=True)
            node.set_parameters([Parameter(spec.name, expected, [])])
        else:
            node.declare_parameter(spec.name, value, descriptor, ignore_override=True)
        values._values[spec.name] = value

    def refuse_bad_values(parameters: list[Parameter]) -> SetParametersResult:
        for parameter in parameters:
            spec = by_name.get(parameter.name)
            if spec is None:
                continue
            if spec.read_only:
                return SetParametersResult(
                    successful=False, reason=f'{spec.name} is read-only while running'
                )
            try:
                value = _coerce(spec, parameter)
            except ValueError as error:
                return SetParametersResult(successful=False, reason=f'{spec.name}: {error}')
            problem = _check_value(spec, value)
            if problem is not None:
                return SetParametersResult(successful=False, reason=f'{spec.name}: {problem}')
        return SetParametersResult(successful=True)

    def remember(parameters: list[Parameter]) -> None:
        for parameter in parameters:
            if parameter.name in by_name:
                value = _coerce(by_name[parameter.name], parameter)
                values._values[parameter.name] = value
                if on_change is not None:
                    on_change(parameter.name, value)

    node.add_on_set_parameters_callback(refuse_bad_values)
    node.add_post_set_parameters_callback(remember)
    return values


def check_parameter_files(node: Node) -> None:
    """Refuse keys in this node's params-file sections (or ``-p``) that it does not declare.

    Sections that apply: the node's name, its fully qualified name and wildcards such as
    ``/**``. rclpy silently ignores undeclared keys, which turns a typo into a setting
    that never takes effect; here it stops the node instead.

    Raises
    ------
    ParameterFileError
        Naming the unknown key and the file (or ``-p``) that holds it.
    """
    sources = _parameter_sources(node)
    for key, places in sources.items():
        if node.has_parameter(key) or key.startswith('qos_overrides.'):
            continue
        known = sorted(name for name in node._parameters if name != 'use_sim_time')
        raise ParameterFileError(
            f'unknown parameter {key!r} for node {node.get_fully_qualified_name()} '
            f'in {" and ".join(places)}; known parameters: {", ".join(known)}'
        )


def task_from_parameters(node: Node, parameters: ParameterValues) -> TaskSpec:
    """The task the shared parameters describe: a registered one, or one defined by env_id.

    Without ``env_id`` the parameters name a registered task; given names must equal its
    names (a model is keyed by them), action limits may only be tighter, and the control
    period may differ from the simulator's dt (a real robot's loop rate); reward,
    threshold, episode length and observation bounds may replace the task's. With
    ``env_id`` they define a new task (see :mod:`sindyrl_ros.core.task_parameters`).

    Raises
    ------
    ParameterFileError
        Naming the parameter that is missing or does not fit, and the file that set it.
    """
    from sindyrl_ros.core.task_parameters import (
        TASK_PARAMETERS,
        TaskParameterError,
    )
    from sindyrl_ros.core.task_parameters import (
        task_from_parameters as build_task,
    )

    values = {name: parameters[name] for name in TASK_PARAMETERS}
    given = set(getattr(node, '_parameter_overrides', {}))
    try:
        return build_task(values, given)
    except TaskParameterError as error:
        problem = error.problem
        if error.parameter not in given:
            # A missing parameter has no file of its own: name the file that defines the task.
            sources = _parameter_sources(node)
            origin = 'env_id' if values['env_id'] else 'task'
            if origin in sources:
                problem += f' (add it where {origin} is set: {" and ".join(sources[origin])})'
        raise configuration_error(node, error.parameter, problem) from None


def highest_version(directory: Path, prefix: str) -> int:
    """The largest version of the files ``<prefix><version>.json`` in ``directory``, or 0."""
    versions = [0]
    for path in Path(directory).glob(f'{prefix}*.json'):
        suffix = path.stem[len(prefix) :]
        if suffix.isdigit():
            versions.append(int(suffix))
    return max(versions)


def json_safe(value: Any) -> Any:
    """Metrics with NaN/inf replaced by None (JSON has no NaN) and numpy scalars as Python."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


# --------------------------------------------------------------------------- diagnostics


class Diagnostics:
    """Counters and status values of one node, published on /diagnostics at a fixed period.

    The publish timer runs on the steady clock: in lockstep simulation sim time stops
    while the plant waits, and diagnostics must keep flowing exactly then.

    Parameters
    ----------
    node : rclpy.node.Node
    period : float
        Seconds between two DiagnosticArray messages.
    log_throttle : float
        Seconds between two log lines about the same reject reason.
    """

    def __init__(self, node: Node, period: float, log_throttle: float = 2.0) -> None:
        self._node = node
        self.counters: dict[str, int] = {}
        self.values: dict[str, Any] = {}
        self.warnings: dict[str, str] = {}
        self.errors: dict[str, str] = {}
        self._log_throttle = log_throttle
        self._last_log: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._rejects_at_last_publish = 0
        self._publisher = node.create_publisher(DiagnosticArray, '/diagnostics', 10)
        self._timer = node.create_timer(
            period, self.publish, clock=Clock(clock_type=ClockType.STEADY_TIME)
        )

    def increment(self, key: str, amount: int = 1) -> None:
        self.counters[key] = self.counters.get(key, 0) + amount

    def set(self, key: str, value: Any) -> None:
        self.values[key] = value

    def reject(self, reason: str, detail: str, severity: str = 'warning') -> None:
        """Count a refused input under ``rejected.<reason>`` and log it (throttled per reason).

        ``severity`` is the logger method: 'warning' for bad sensor data (throttled), 'error'
        for rare events an operator must act on (a refused policy; never throttled).
        """
        self.increment(f'rejected.{reason}')
        now = time.monotonic()
        if severity == 'error' or now - self._last_log.get(reason, -math.inf) >= (
            self._log_throttle
        ):
            suppressed = self._suppressed.pop(reason, 0)
            more = f' ({suppressed} more since the last report)' if suppressed else ''
            text = f'refused ({reason}): {detail}{more}'
            # One call site per severity: rclpy refuses a call site whose severity changes.
            if severity == 'error':
                self._node.get_logger().error(text)
            else:
                self._node.get_logger().warning(text)
            self._last_log[reason] = now
        else:
            self._suppressed[reason] = self._suppressed.get(reason, 0) + 1

    def rejected_total(self) -> int:
        return sum(v for k, v in self.counters.items() if k.startswith('rejected.'))

    def publish(self) -> None:
        """Publish one DiagnosticStatus for this node: counters, values, level and summary."""
        rejects = self.rejected_total()
        if self.errors:
            level, message = DiagnosticStatus.ERROR, '; '.join(self.errors.values())
        elif self.warnings:
            level, message = DiagnosticStatus.WARN, '; '.join(self.warnings.values())
        elif rejects > self._rejects_at_last_publish:
            level = DiagnosticStatus.WARN
            message = f'{rejects - self._rejects_at_last_publish} inputs refused'
        else:
            level, message = DiagnosticStatus.OK, 'ok'
        self._rejects_at_last_publish = rejects
        entries = [KeyValue(key=k, value=str(v)) for k, v in sorted(self.counters.items())]
        entries += [KeyValue(key=k, value=str(v)) for k, v in sorted(self.values.items())]
        status = DiagnosticStatus(
            level=level,
            name=self._node.get_fully_qualified_name(),
            message=message,
            hardware_id=self._node.get_name(),
            values=entries,
        )
        array = DiagnosticArray(status=[status])
        array.header.stamp = self._node.get_clock().now().to_msg()
        self._publisher.publish(array)


# --------------------------------------------------------------------------- messages


class Waits:
    """What a node waits for, said once it has waited ``after`` seconds.

    A run that waits silently looks hung: each thing waited for (a service, a first
    message, an operator) is logged once as ``WAITING: <what> (<n> s so far)`` (the line
    ``sindyrl-ros train`` shows on the terminal) and listed in the node's ``/diagnostics``
    warning until it is over, which is logged too. Call :meth:`check` periodically.
    """

    def __init__(self, node: Node, diagnostics: Diagnostics, after: float) -> None:
        self._node = node
        self._diagnostics = diagnostics
        self.after = float(after)
        self._since: dict[str, float] = {}
        self._reported: set[str] = set()

    def start(self, what: str) -> None:
        """Waiting for ``what`` from now (no-op while already waiting for it)."""
        self._since.setdefault(what, time.monotonic())

    def stop(self, what: str) -> None:
        """No longer waiting for ``what``."""
        self._since.pop(what, None)

    def waiting(self, what: str, waiting: bool) -> None:
        """:meth:`start` or :meth:`stop`, as ``waiting`` says."""
        if waiting:
            self.start(what)
        else:
            self.stop(what)

    def check(self) -> None:
        now = time.monotonic()
        long = sorted(what for what, since in self._since.items() if now - since >= self.after)
        for what in long:
            if what not in self._reported:
                self._reported.add(what)
                self._node.get_logger().warning(
                    f'WAITING: {what} ({now - self._since[what]:.0f} s so far)'
                )
        for what in sorted(self._reported - set(self._since)):
            self._reported.discard(what)
            self._node.get_logger().info(f'no longer waiting: {what}')
        if long:
            self._diagnostics.warnings['waiting'] = 'waiting for ' + '; '.join(long)
        else:
            self._diagnostics.warnings.pop('waiting', None)


class EpisodeReporter:
    """Publishes the episode records of a plant's EpisodeLedger on /sindyrl/episode.

    One place for what the simulated plant, the serial bridge and the episodes node report
    about an episode: the record (JSON, transient local, for the run supervisor), the
    ``episodes`` counter and ``last_return`` in /diagnostics, and one log line.
    """

    def __init__(self, node: Node, diagnostics: Diagnostics) -> None:
        self._node = node
        self._diagnostics = diagnostics
        self._publisher = node.create_publisher(String, 'sindyrl/episode', EPISODE_QOS)
        self.episodes = 0
        diagnostics.counters['episodes'] = 0

    def publish(self, records: list[dict]) -> None:
        for record in records:
            self.episodes += 1
            self._diagnostics.counters['episodes'] = self.episodes
            self._diagnostics.set('last_return', f'{record["return"]:.6g}')
            self._publisher.publish(String(data=json.dumps(record)))
            missing = record.get('missing_rewards', 0)
            self._node.get_logger().info(
                f'episode {record["episode"]} ({record["mode"]}, {record["end"]}): return '
                f'{record["return"]:.3f}, {record["length"]} steps, {record["real_steps"]} '
                'real steps in all' + (f', {missing} rewards missing' if missing else '')
            )


class MessageError(Exception):
    """An incoming message that must not be used: ``reason`` (a counter key) and ``detail``."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f'{reason}: {detail}')
        self.reason = reason
        self.detail = detail


def stamp_to_ns(stamp: TimeMsg) -> int:
    """A message stamp as integer nanoseconds (exact, for comparisons and pairing)."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def ns_to_stamp(nanoseconds: int) -> TimeMsg:
    seconds, nanoseconds = divmod(int(nanoseconds), 1_000_000_000)
    return TimeMsg(sec=seconds, nanosec=nanoseconds)


def vector_message(
    names: Sequence[str], values: Any, stamp: TimeMsg, field: str = 'position'
) -> JointState:
    """A named, stamped vector as a JointState (the /sindyrl/observation and action format).

    Parameters
    ----------
    names : sequence of str, length k
    values : array_like, shape (k,)
    stamp : builtin_interfaces/Time
        Measurement time of the observation (or of the observation an action answers).
    field : {'position', 'velocity', 'effort'}
    """
    message = JointState()
    message.header.stamp = stamp
    message.name = list(names)
    setattr(message, field, [float(v) for v in values])
    return message


def read_vector(
    message: JointState,
    expected_names: Sequence[str],
    field: str = 'position',
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Values of a named vector, ordered as ``expected_names`` (matched by name).

    Extra names are ignored; the message's order does not matter.

    Returns
    -------
    ndarray, shape (len(expected_names),)

    Raises
    ------
    MessageError
        ``length_mismatch``, ``duplicate_name``, ``missing_name`` or ``nonfinite``.
    """
    names = list(message.name)
    values = getattr(message, field)
    if len(values) != len(names):
        raise MessageError(
            'length_mismatch', f'{len(names)} names but {len(values)} {field} values'
        )
    if len(set(names)) != len(names):
        raise MessageError('duplicate_name', f'names {names} repeat a name')
    index = {name: i for i, name in enumerate(names)}
    if out is None:
        out = np.empty(len(expected_names))
    for k, name in enumerate(expected_names):
        i = index.get(name)
        if i is None:
            raise MessageError('missing_name', f'{name!r} not in {names}')
        out[k] = values[i]
    if not np.all(np.isfinite(out)):
        bad = [n for n, v in zip(expected_names, out, strict=True) if not math.isfinite(v)]
        raise MessageError('nonfinite', f'non-finite {field} of {bad}')
    return out


# Commands carry the stamp of the observation they answer in the first dimension's label
# ('stamp_ns=<int>'), so a lockstep plant can tell a late command from a fresh one.
# ros2_control's ForwardCommandController ignores the layout, so the topic stays compatible.
_STAMP_LABEL = 'stamp_ns='


def command_message(
    values: Any, stamp_ns: int | None = None, message: Float64MultiArray | None = None
) -> Float64MultiArray:
    """A command for /<controller>/commands, optionally tagged with the answered stamp.

    Parameters
    ----------
    values : array_like, shape (m,)
    stamp_ns : int, optional
        Stamp of the observation this command answers.
    message : Float64MultiArray, optional
        A message to fill instead of a new one (the controller reuses one per tick).
    """
    if message is None:
        message = Float64MultiArray()
    message.data = (
        values.tolist() if isinstance(values, np.ndarray) else [float(v) for v in values]
    )
    if stamp_ns is None:
        message.layout.dim = []
    else:
        size = len(message.data)
        label = f'{_STAMP_LABEL}{int(stamp_ns)}'
        if len(message.layout.dim) == 1:
            dimension = message.layout.dim[0]
            dimension.label, dimension.size, dimension.stride = label, size, size
        else:
            message.layout.dim = [MultiArrayDimension(label=label, size=size, stride=size)]
    return message


def command_stamp_ns(message: Float64MultiArray) -> int | None:
    """The observation stamp a command answers, or None for an untagged command."""
    if message.layout.dim:
        label = message.layout.dim[0].label
        if label.startswith(_STAMP_LABEL):
            try:
                return int(label[len(_STAMP_LABEL) :])
            except ValueError:
                return None
    return None


# --------------------------------------------------------------------------- running

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _die_with_parent() -> int:
    """Ask Linux for SIGTERM when the parent dies; returns the parent's pid seen now.

    Why: a node outliving the program that started it (``sindyrl-ros train`` killed with
    ``kill -9``) would go on driving the plant with nobody supervising; every node starts
    in its own session, so no terminal or process-group signal reaches it either. The
    SIGTERM lands in :func:`run_node`'s handler, so the node stops exactly as on SIGTERM
    (the controller sends its safe command first).

    PR_SET_PDEATHSIG fires when the parent *thread* that forked this process exits, not
    the parent process: ``sindyrl-ros train``/``deploy`` (``cli.Graph.start``) start the
    nodes from their main thread, which lives until the end of the run, and under
    ``ros2 launch`` the launch process is the parent, so in both the signal means the
    parent is gone. Elsewhere than Linux, or where prctl is refused, the liveness check in
    :func:`run_node`'s spin loop is the only guard. A parent that died before this call
    (during the node's imports) cannot be told from its adopter by ``getppid``, unless the
    parent put its pid in the environment (``graph.PARENT_PID_ENV``, as ``sindyrl-ros`` and
    the launch files do): then that pid is the parent to watch, and the caller sees at once
    that it is gone.
    """
    parent = os.getppid()
    announced = os.environ.get(PARENT_PID_ENV, '')
    if announced.isdigit() and 0 < int(announced) < 2**22:
        parent = int(announced)
    if sys.platform.startswith('linux'):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(
                ctypes.c_int(_PR_SET_PDEATHSIG),
                ctypes.c_ulong(int(signal.SIGTERM)),
                ctypes.c_ulong(0),
                ctypes.c_ulong(0),
                ctypes.c_ulong(0),
            )
        except (OSError, AttributeError):  # no libc symbol: the spin-loop check remains
            pass
    return parent


def run_node(
    make_node: Callable[[], Node], args: Sequence[str] | None = None, name: str = 'sindyrl_ros'
) -> int:
    """Initialise rclpy, build the node, spin until SIGINT/SIGTERM, shut down cleanly.

    rclpy's own signal handlers would shut the context down before the node could act, so
    SIGINT and SIGTERM only set a flag here; the node's ``on_shutdown()`` (if any) then
    runs while it can still publish (the controller's safe command). The death of the
    process that started the node stops it the same way: a parent-death SIGTERM on Linux
    (see :func:`_die_with_parent`) and, as a fallback, a ``getppid()`` check on every turn
    of the spin loop (at least every 0.1 s).

    Parameters
    ----------
    make_node : callable
        Builds the node (its class); may raise :class:`ParameterFileError`.
    args : list of str, optional
        Command line (default ``sys.argv``), read for ``--params-file`` too.
    name : str
        Logger name for errors raised before the node exists (the node's name).

    Returns
    -------
    int
        Exit code: 0 after a signal, 2 for a configuration error (logged as FATAL).
    """
    global _command_line
    _command_line = list(args) if args is not None else list(sys.argv)
    stop = threading.Event()
    previous = {
        signum: signal.signal(signum, lambda *_: stop.set())
        for signum in (signal.SIGINT, signal.SIGTERM)
    }
    logger = rclpy.logging.get_logger(name)
    # After the handlers: the parent-death SIGTERM must find them installed.
    parent = _die_with_parent()
    if os.getppid() != parent:  # died between getppid and prctl: no signal will come
        logger.warning(f'parent process {parent} is gone before start-up: not starting')
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        return 0
    try:
        rclpy.init(args=_command_line, signal_handler_options=SignalHandlerOptions.NO)
    except Exception as error:  # rcl refuses the command line or an unparsable params file
        logger.fatal(f'cannot start: {error}')
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        return 2
    node = None
    code = 0
    try:
        node = make_node()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        while not stop.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=0.1)
            if os.getppid() != parent:  # orphaned: the fallback where no signal came
                stop.set()
    except ParameterFileError as error:
        logger.fatal(str(error))
        code = 2
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if os.getppid() != parent:
            logger.warning(
                f'parent process {parent} is gone: shutting down as on SIGTERM '
                '(the controller sends its safe command first)'
            )
        if node is not None:
            on_shutdown = getattr(node, 'on_shutdown', None)
            if on_shutdown is not None and rclpy.ok():
                on_shutdown()
            node.destroy_node()
        rclpy.try_shutdown()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return code


def lower_thread_priority(niceness: int) -> bool:
    """Give the calling thread a nice value (Linux: per thread) so learning yields to control.

    Fits and SAC training are long CPU-bound jobs; at a higher nice value the scheduler
    hands the core back to the controller as soon as it wakes. Returns False where the OS
    refuses or has no per-thread priorities.
    """
    if niceness <= 0:
        return True
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), int(niceness))
    except (AttributeError, OSError):
        return False
    return True
