"""Launch files start real nodes with real parameter files, from the one graph description.

`launch` and `launch_ros` are not installable from pip (no ROS 2 distro here), so this test
stands in for them with minimal recording stubs: each launch file is executed for real, its
`generate_launch_description()` is called, its OpaqueFunction is performed, and the Node actions
it creates are recorded. Everything else (graph description, parameter files, node parameter
declarations) is the real thing.
"""

import ast
import importlib
from pathlib import Path

from launch_standins import run_launch_file
import pytest
from test_package_structure import console_scripts, setup_arguments
import yaml

from sindyrl_ros import cli, graph, runs

ROOT = Path(__file__).resolve().parents[1]
LAUNCH_FILES = sorted((ROOT / 'launch').glob('*.launch.py'))


def created_nodes(path: Path, overrides: dict[str, str], monkeypatch) -> list[dict]:
    """Execute a launch file with the given arguments; return the Node kwargs it created."""
    _, created = run_launch_file(path, overrides, monkeypatch)
    return [node.kwargs for node in created]


def declared_parameters(executable: str) -> set[str]:
    """The parameter names a node declares (read from its module's PARAMETERS)."""
    module = importlib.import_module(graph.NODE_MODULES[executable])
    return {spec.name for spec in module.PARAMETERS}


def sections_for(node_name: str, document: dict) -> dict:
    """The ros__parameters of a params file that apply to `node_name`."""
    values = {}
    for key in ('/**', node_name, f'/{node_name}'):
        section = document.get(key) or {}
        values.update(section.get('ros__parameters', {}))
    return values


CASES = [
    ('train.launch.py', {'task': task, 'backend': backend})
    for task in graph.TASKS
    for backend in graph.BACKENDS
] + [
    ('deploy.launch.py', {'task': task, 'backend': backend, 'policy': '/tmp/policy.json'})
    for task in graph.TASKS
    for backend in graph.BACKENDS
]


@pytest.mark.parametrize(('launch_file', 'overrides'), CASES)
def test_launch_file_nodes_exist_and_their_parameters_are_declared(
    launch_file, overrides, monkeypatch
):
    created = created_nodes(ROOT / 'launch' / launch_file, overrides, monkeypatch)
    assert created, f'{launch_file} starts no node'
    scripts = console_scripts(setup_arguments())
    for node in created:
        executable = node['executable']
        assert node['package'] == 'sindyrl_ros'
        assert executable in scripts, f'{launch_file}: {executable} is not a console script'
        assert scripts[executable] == f'{graph.NODE_MODULES[executable]}:main'
        declared = declared_parameters(executable)
        overrides = next((e for e in node['parameters'] if isinstance(e, dict)), {})
        for entry in node['parameters']:
            if isinstance(entry, dict):
                undeclared = set(entry) - declared - {'use_sim_time'}
                assert not undeclared, f'{executable}: overrides {undeclared} not declared'
                continue
            path = Path(entry)
            assert path.is_file(), f'{launch_file}: parameter file {path} does not exist'
            document = yaml.safe_load(path.read_text())
            values = sections_for(node['name'], document)
            # rcl lets a node's own section beat a plain override, so the keys the graph sets
            # per backend must not be in it, or they would be silently ignored.
            own = (document.get(node['name']) or {}).get('ros__parameters', {})
            shadowed = set(own) & set(overrides)
            assert not shadowed, f'{path.name}: {node["name"]} section shadows {shadowed}'
            undeclared = set(values) - declared - {'use_sim_time'}
            assert not undeclared, (
                f'{path.name}: keys {sorted(undeclared)} are not parameters of {executable}'
            )


@pytest.mark.parametrize('launch_file', [path.name for path in LAUNCH_FILES])
def test_launch_files_take_nodes_from_the_graph_description(launch_file):
    """Each launch file gets its nodes from sindyrl_ros.graph, not from a list of its own."""
    tree = ast.parse((ROOT / 'launch' / launch_file).read_text())
    called = {
        node.func.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
    }
    names = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    assert called & {'training_graph', 'deploy_graph'}, f'{launch_file} does not use graph'
    assert 'Node' not in names, f'{launch_file} builds Node actions itself'


@pytest.mark.parametrize('task', graph.TASKS)
def test_launch_file_and_cli_start_the_same_nodes(task, monkeypatch, tmp_path):
    created = created_nodes(
        ROOT / 'launch' / 'train.launch.py',
        {'task': task, 'backend': 'sim', 'run_dir': str(tmp_path)},
        monkeypatch,
    )
    arguments = cli.build_parser().parse_args(['train', '--task', task])
    specs = runs.training_specs(arguments, tmp_path)
    from_launch = [
        (
            node['executable'],
            node['name'],
            [str(p) for p in node['parameters'][:-1]],
            node['parameters'][-1],
        )
        for node in created
    ]
    from_cli = [
        (spec.executable, spec.name, [str(p) for p in spec.parameter_files], spec.parameters)
        for spec in specs
    ]
    assert from_launch == from_cli


def test_deploy_launch_file_and_cli_start_the_same_nodes(monkeypatch):
    created = created_nodes(
        ROOT / 'launch' / 'deploy.launch.py',
        {'task': 'pendulum', 'policy': '/tmp/policy.json'},
        monkeypatch,
    )
    arguments = cli.build_parser().parse_args(['deploy', '--policy', '/tmp/policy.json'])
    specs = runs.deploy_specs(arguments)
    assert [node['executable'] for node in created] == [spec.executable for spec in specs]
    assert [node['parameters'][-1] for node in created] == [spec.parameters for spec in specs]


def test_every_graph_node_is_a_console_script():
    scripts = console_scripts(setup_arguments())
    for executable, module in graph.NODE_MODULES.items():
        assert scripts.get(executable) == f'{module}:main', executable
