"""The parameter reference (docs/parameters.md), rendered from the nodes' own declarations.

Every node module in :data:`sindyrl_ros.graph.NODE_MODULES` declares its parameters as a
module-level ``PARAMETERS`` list of :class:`sindyrl_ros.params.ParamSpec`; this module
turns those lists into Markdown, so the reference cannot drift from what the nodes accept
(``test/test_parameter_reference.py`` checks that the committed file is current). It is what
``ros2 param describe`` would show, for users of the pip venv, which has no ``ros2`` command.

Regenerate with ``sindyrl-ros params`` (``--check`` only reports whether the file is stale).
"""

from __future__ import annotations

from collections.abc import Sequence
import importlib
from pathlib import Path

from sindyrl_ros import graph

__all__ = ['REGENERATE', 'default_path', 'render', 'stale', 'write']

# What a user runs to bring docs/parameters.md up to date.
REGENERATE = 'sindyrl-ros params'
# ROS parameter types as `ros2 param describe` names them.
_TYPE_NAMES = {
    'BOOL': 'boolean',
    'INTEGER': 'integer',
    'DOUBLE': 'double',
    'STRING': 'string',
    'BYTE_ARRAY': 'byte array',
    'BOOL_ARRAY': 'boolean array',
    'INTEGER_ARRAY': 'integer array',
    'DOUBLE_ARRAY': 'double array',
    'STRING_ARRAY': 'string array',
}


def default_path() -> Path:
    """docs/parameters.md of the source tree (when this package runs from one), else ./docs."""
    root = Path(__file__).resolve().parents[1]
    if (root / 'setup.py').is_file():
        return root / 'docs' / 'parameters.md'
    return Path('docs') / 'parameters.md'


def _value(value) -> str:
    """A default or a bound as it is written in a YAML parameter file."""
    return '`' + graph.format_parameter(value).replace('|', '\\|') + '`'


# Characters of a description that Markdown would read as markup (tables, emphasis, HTML).
_MARKUP = str.maketrans({c: '\\' + c for c in '\\|*<>`'})


def _cell(text: str) -> str:
    """Text shown as written inside a Markdown table cell (one line, markup escaped)."""
    return ' '.join(str(text).split()).translate(_MARKUP)


def _type_name(spec) -> str:
    # The same type the node declares: ParamSpec.type, else the default's type.
    kind = spec.type_name()
    return _TYPE_NAMES.get(kind, kind.lower())


def _allowed(spec) -> str:
    parts = []
    if spec.range is not None:
        low, high = spec.range
        parts.append(f'{_value(low)} … {_value(high)}')
    if spec.choices is not None:
        parts.append(', '.join(f'`{choice}`' for choice in spec.choices))
    return '; '.join(parts)


def _table(specs: Sequence, strip: str = '') -> list[str]:
    lines = [
        '| name | type | default | range / choices | read-only | description |',
        '|---|---|---|---|---|---|',
    ]
    for spec in specs:
        description = spec.description
        if strip and description.endswith(strip):
            description = description[: -len(strip)]
        lines.append(
            f'| `{spec.name}` | {_type_name(spec)} | {_value(spec.default)} | '
            f'{_allowed(spec)} | {"yes" if spec.read_only else "no"} | {_cell(description)} |'
        )
    return lines


def _summary(module) -> str:
    """The first line of a node module's docstring."""
    doc = (module.__doc__ or '').strip()
    return _cell(doc.splitlines()[0]) if doc else ''


def _node_parameters(executable: str, module_name: str):
    module = importlib.import_module(module_name)
    specs = getattr(module, 'PARAMETERS', None)
    if specs is None:
        raise AttributeError(
            f'node module {module_name} (executable {executable}) has no module-level '
            'PARAMETERS list of params.ParamSpec: the parameter reference is built from it'
        )
    return module, list(specs)


def render() -> str:
    """docs/parameters.md: the shared task parameters, then each node's own, in graph order."""
    from sindyrl_ros import params

    shared = list(params.SHARED_PARAMETERS)
    shared_names = {spec.name for spec in shared}
    nodes = [
        (executable, module_name, *_node_parameters(executable, module_name))
        for executable, module_name in graph.NODE_MODULES.items()
    ]
    readers = [
        executable
        for executable, _, _, specs in nodes
        if shared_names <= {spec.name for spec in specs}
    ]
    if len(readers) == len(nodes):
        who = 'Every node reads them'
    else:
        who = f'The nodes {", ".join(f"`{name}`" for name in readers)} read them'
    lines = [
        '# Node parameters',
        '',
        '<!-- Generated from the PARAMETERS declarations of sindyrl_ros/nodes/*.py by '
        f'sindyrl_ros/param_reference.py: do not edit. Regenerate with `{REGENERATE}`. -->',
        '',
        f"_Generated from each node's `PARAMETERS` declaration; do not edit by hand. "
        f'Regenerate with `{REGENERATE}` (`{REGENERATE} --check` tells whether this file is '
        'current; a test checks it)._',
        '',
        'Every parameter below can be set in a ROS 2 parameter file (`<node>: ros__parameters:`'
        ', or `/**:` for every node) or with `--ros-args -p name:=value`. A node refuses to '
        'start on an unknown key, a wrong type or a value outside its range or choices, and '
        'names the key and the file. *Read-only* parameters are fixed once the node runs '
        '(`ros2 param set` is refused); the others can be changed while it runs, with the same '
        'checks. Ranges are inclusive and apply to every element of a list. `use_sim_time` is '
        "rclpy's own and not listed. How to write the task part of a file: "
        '[task_file.md](task_file.md).',
        '',
        '## Shared task parameters (`/**`)',
        '',
        f'{who} from the `/**` section of the parameter file: they describe the task, and all '
        'nodes must agree on them. Without `env_id` they name a registered task and may only '
        'narrow it; with `env_id` they define a new one.',
        '',
        *_table(shared, params.SHARED_DESCRIPTION),
    ]
    for executable, module_name, module, specs in nodes:
        own = [spec for spec in specs if spec.name not in shared_names]
        declared = {spec.name for spec in specs}
        if shared_names <= declared:
            reads = 'It also reads the shared task parameters.'
        elif shared_names & declared:
            names = ', '.join(f'`{s.name}`' for s in shared if s.name in declared)
            reads = f'Of the shared task parameters it reads {names}.'
        else:
            reads = 'It reads none of the shared task parameters.'
        lines += [
            '',
            f'## `{executable}`',
            '',
            f'{_summary(module)} (`{module_name}`; section `{executable}:` of the parameter '
            f'file.) {reads}',
            '',
        ]
        lines += _table(own) if own else ['No parameters of its own.']
    return '\n'.join(lines) + '\n'


def stale(path: Path | str | None = None) -> str | None:
    """Why the reference at ``path`` is not current (missing or different), or None."""
    path = default_path() if path is None else Path(path)
    command = REGENERATE if path.resolve() == default_path().resolve() else (
        f'{REGENERATE} --out {path}'
    )
    if not path.is_file():
        return f'{path} does not exist: run `{command}` to write it'
    if path.read_text(encoding='utf-8') != render():
        return (
            f'{path} is out of date with the node parameter declarations: run `{command}` to '
            'regenerate it'
        )
    return None


def write(path: Path | str | None = None) -> bool:
    """Write the reference to ``path``; returns whether the file changed."""
    path = default_path() if path is None else Path(path)
    text = render()
    if path.is_file() and path.read_text(encoding='utf-8') == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding='utf-8')
    return True
