"""Declaring a node's parameters from its :class:`~sindyrl_ros.params.ParamSpec` list.

Each parameter carries a description and a range, and a mistake in a params file stops the
node at start-up with a message naming the key and the file, instead of surfacing later as a
crash or as a silently ignored setting (rclpy ignores unknown keys on its own).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
import re
import sys
from typing import TYPE_CHECKING, Any

from rcl_interfaces.msg import (
    FloatingPointRange,
    IntegerRange,
    ParameterDescriptor,
    SetParametersResult,
)
from rclpy.node import Node
from rclpy.parameter import Parameter
import yaml

from sindyrl_ros.params import ParameterFileError, ParamSpec, check_value

if TYPE_CHECKING:
    from sindyrl_ros.core.tasks import TaskSpec

__all__ = [
    'ParameterValues',
    'check_parameter_files',
    'configuration_error',
    'declare_parameters',
    'remember_command_line',
    'task_from_parameters',
]

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
    expected = Parameter.Type[spec.type_name()]
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


def _descriptor(spec: ParamSpec) -> ParameterDescriptor:
    descriptor = ParameterDescriptor(description=spec.description, read_only=spec.read_only)
    constraints = []
    if spec.range is not None:
        constraints.append(f'range [{spec.range[0]}, {spec.range[1]}]')
        expected = Parameter.Type[spec.type_name()]
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
        problem = check_value(spec, value)
        if problem is not None:
            raise ParameterFileError(
                f'parameter {spec.name!r} of node {node.get_fully_qualified_name()} '
                f'({_where(spec.name, sources)}): {problem}'
            )
        descriptor = _descriptor(spec)
        expected = Parameter.Type[spec.type_name()]
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
            problem = check_value(spec, value)
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


def remember_command_line(args: Sequence[str]) -> None:
    """The argument list the node was started with (read for ``--params-file``)."""
    global _command_line
    _command_line = list(args)
