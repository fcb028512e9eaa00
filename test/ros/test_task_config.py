"""A new task is a config file: real node processes start from config/example_mountain_car.yaml,
and a task file with a mistake stops them naming the parameter and the file."""

import importlib
from pathlib import Path

import pytest
from ros_testing import node_command, write_params
import yaml

from sindyrl_ros import graph

pytestmark = pytest.mark.ros

CONFIG = Path(__file__).resolve().parents[2] / 'config'
EXAMPLE = CONFIG / 'example_mountain_car.yaml'


def declared(executable: str) -> set[str]:
    module = importlib.import_module(graph.NODE_MODULES[executable])
    return {spec.name for spec in module.PARAMETERS} | {'use_sim_time'}


def task_files() -> list[Path]:
    """The parameter files of the node graph (those with a /** section), not Gazebo's."""
    return [
        path
        for path in sorted(CONFIG.glob('*.yaml'))
        if isinstance(yaml.safe_load(path.read_text()), dict)
        and '/**' in yaml.safe_load(path.read_text())
    ]


@pytest.mark.parametrize('path', task_files(), ids=lambda p: p.name)
def test_every_key_of_a_config_file_is_a_parameter_of_its_node(path):
    document = yaml.safe_load(path.read_text())
    shared = document.pop('/**')['ros__parameters']
    for executable in graph.NODE_MODULES:
        undeclared = set(shared) - declared(executable)
        assert not undeclared, f'{path.name} /**: {sorted(undeclared)} not in {executable}'
    for section, content in document.items():
        executable = section.strip('/')
        assert executable in graph.NODE_MODULES, f'{path.name}: no node {section}'
        undeclared = set(content['ros__parameters']) - declared(executable)
        assert not undeclared, f'{path.name} {section}: {sorted(undeclared)} not declared'


def test_nodes_start_from_the_example_and_refuse_a_broken_task(start_process, tmp_path):
    shared = yaml.safe_load(EXAMPLE.read_text())['/**']['ros__parameters']
    # (name, /** changes, expected text in the FATAL message)
    cases = [
        ('missing_bounds', {'observation_high': None}, ["'observation_high'", 'env_id']),
        ('typo_env', {'env_id': 'MountainCarContinous-v0'}, ["'env_id'", "doesn't exist"]),
        ('unsafe_reward', {'reward': "__import__('os').getcwd()"}, ["'reward'", 'not allowed']),
        ('odd_angle_pairs', {'angle_pairs': [0]}, ["'angle_pairs'", 'odd length']),
    ]
    broken = []
    for name, changes, expected in cases:
        values = {k: v for k, v in {**shared, **changes}.items() if v is not None}
        params = write_params(tmp_path / f'{name}.yaml', {'/**': values})
        process = start_process(
            node_command('model_updater', params, '-p', f'run_dir:={tmp_path / name}'), name=name
        )
        broken.append((name, params, process, expected))
    started = {}
    for executable in ('model_updater', 'policy_trainer', 'run_supervisor'):
        command = node_command(executable, EXAMPLE, '-p', f'run_dir:={tmp_path / "run"}')
        started[executable] = start_process(command, name=executable)

    for name, params, process, expected in broken:
        assert process.process.wait(timeout=60) == 2, (name, process.output())
        output = process.output()
        assert 'FATAL' in output and str(params) in output, (name, output)
        for text in expected:
            assert text in output, (name, text, output)
    ready = {
        'model_updater': 'model updater ready: task mountain_car',
        'policy_trainer': 'policy trainer ready: task mountain_car',
        'run_supervisor': 'run supervisor ready: task mountain_car',
    }
    for executable, process in started.items():
        assert process.wait_for_output(ready[executable], timeout=60), process.output()
    # The supervisor's success threshold is the one the file gives the task.
    assert 'threshold 90' in started['run_supervisor'].output()
    for process in started.values():
        assert process.stop() == 0, process.output()


@pytest.mark.parametrize('executable', ['controller', 'serial_bridge'])
def test_a_file_that_widens_a_registered_tasks_limits_stops_the_nodes_that_command(
    executable, start_process, tmp_path
):
    """±20 N·m for the pendulum (limit ±2): the nodes that command an actuator refuse to
    start (FATAL, exit 2, naming action_high and the file), instead of clamping silently or
    commanding ±20."""
    params = write_params(
        tmp_path / 'wide.yaml',
        {
            '/**': {
                'task': 'pendulum',
                'observation_names': ['cos_theta', 'sin_theta', 'theta_dot'],
                'action_names': ['torque'],
                'action_low': [-2.0],
                'action_high': [20.0],
                'control_period': 0.05,
            },
            'serial_bridge': {'port': str(tmp_path / 'no_rig'), 'joint_names': ['pendulum_joint']},
        },
    )
    process = start_process(node_command(executable, params), name=executable)
    assert process.process.wait(timeout=60) == 2, process.output()
    output = process.output()
    assert 'FATAL' in output and "'action_high'" in output and 'widens' in output, output
    assert str(params) in output and 'Traceback' not in output, output
