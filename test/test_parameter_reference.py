"""docs/parameters.md is the nodes' parameter declarations, rendered, and kept current."""

import importlib
import re
import sys
import types

import pytest

from sindyrl_ros import cli, graph, param_reference
from sindyrl_ros.params import SHARED_PARAMETERS, ParamSpec

REFERENCE = param_reference.default_path()
REGENERATE = f'run `{param_reference.REGENERATE}` and commit docs/parameters.md'


def _sections(text: str) -> dict[str, str]:
    """'shared' and each node's name -> the text of its section."""
    parts = re.split(r'^## ', text, flags=re.MULTILINE)
    sections = {}
    for part in parts[1:]:
        heading, _, body = part.partition('\n')
        match = re.fullmatch(r'`(\w+)`', heading.strip())
        sections[match.group(1) if match else 'shared'] = body
    return sections


def _row(spec: ParamSpec) -> str:
    """The start of a parameter's table row: name and the ROS type its node declares."""
    kind = spec.type_name()
    return f'| `{spec.name}` | {param_reference._TYPE_NAMES[kind]} |'


def test_reference_is_current():
    assert REFERENCE.is_file(), f'{REFERENCE} is missing: {REGENERATE}'
    assert REFERENCE.read_text(encoding='utf-8') == param_reference.render(), (
        f'{REFERENCE} is out of date with the node parameter declarations: {REGENERATE}'
    )


def test_rendering_is_deterministic():
    assert param_reference.render() == param_reference.render()


def test_every_parameter_of_every_node_is_in_its_section():
    sections = _sections(REFERENCE.read_text(encoding='utf-8'))
    shared_names = {spec.name for spec in SHARED_PARAMETERS}
    for spec in SHARED_PARAMETERS:
        assert _row(spec) in sections['shared'], f'shared {spec.name}: {REGENERATE}'
    nodes = [name for name in sections if name != 'shared']
    assert nodes == list(graph.NODE_MODULES), f'node sections differ: {REGENERATE}'
    for executable, module_name in graph.NODE_MODULES.items():
        specs = importlib.import_module(module_name).PARAMETERS
        assert specs, f'{module_name} declares no parameters'
        for spec in specs:
            if spec.name in shared_names:
                assert _row(spec) not in sections[executable], (
                    f'shared {spec.name} repeated under {executable}'
                )
            else:
                assert _row(spec) in sections[executable], (
                    f'{executable} {spec.name}: {REGENERATE}'
                )


def test_a_new_node_module_is_picked_up(monkeypatch):
    module = types.ModuleType('sindyrl_ros_test_episodes')
    module.__doc__ = 'Episodes: a node added later.\n\nMore text.'
    module.PARAMETERS = SHARED_PARAMETERS + [
        ParamSpec('gap', 0.5, 'Seconds | between *episodes*', range=(0.0, 10.0)),
        ParamSpec('kind', 'a', 'Which one', read_only=True, choices=('a', 'b')),
    ]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(graph.NODE_MODULES, 'episodes', module.__name__)
    section = _sections(param_reference.render())['episodes']
    assert 'Episodes: a node added later.' in section
    assert 'It also reads the shared task parameters.' in section
    gap = '| `gap` | double | `0.5` | `0.0` … `10.0` | no | Seconds \\| between \\*episodes\\* |'
    assert gap in section
    assert "| `kind` | string | `'a'` | `a`, `b` | yes | Which one |" in section
    assert '`task`' not in section


def test_a_node_module_without_parameters_is_named(monkeypatch):
    module = types.ModuleType('sindyrl_ros_test_bare')
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(graph.NODE_MODULES, 'bare', module.__name__)
    with pytest.raises(AttributeError, match='sindyrl_ros_test_bare.*PARAMETERS'):
        param_reference.render()


def test_check_fails_on_a_stale_file_and_names_the_command(tmp_path, capsys):
    path = tmp_path / 'parameters.md'
    assert cli.main(['params', '--check', '--out', str(path)]) == 1
    assert f'{param_reference.REGENERATE} --out {path}' in capsys.readouterr().err

    stale = param_reference.render().replace('| `seed` |', '| `old_seed` |', 1)
    path.write_text(stale, encoding='utf-8')
    assert param_reference.stale(path) is not None
    assert cli.main(['params', '--check', '--out', str(path)]) == 1
    error = capsys.readouterr().err
    assert 'out of date' in error and f'{param_reference.REGENERATE} --out {path}' in error
    assert path.read_text(encoding='utf-8') == stale  # --check writes nothing

    assert cli.main(['params', '--out', str(path)]) == 0
    assert path.read_text(encoding='utf-8') == param_reference.render()
    assert cli.main(['params', '--check', '--out', str(path)]) == 0
    assert param_reference.stale(path) is None


def test_params_writes_to_standard_output(capsys):
    assert cli.main(['params', '--out', '-']) == 0
    assert capsys.readouterr().out == param_reference.render()
