"""The serial backend in the one graph description and in `sindyrl-ros train --emulate`."""

from pathlib import Path

import pytest
import yaml

from sindyrl_ros import cli, graph, runs
from sindyrl_ros.emulated_rig import EmulatedRig


def test_serial_training_graph_has_the_bridge_as_plant_on_the_wall_clock():
    task_file = graph.task_config('pendulum')
    specs = {spec.name: spec for spec in graph.training_graph(task_file, 'serial', port='/x')}
    assert 'plant' not in specs
    assert list(specs) == [
        'serial_bridge',
        'sensor_ingestion',
        'controller',
        'model_updater',
        'policy_trainer',
        'run_supervisor',
    ]
    assert all(spec.parameters['use_sim_time'] is False for spec in specs.values())
    assert specs['controller'].parameters['trigger'] == 'observation'
    bridge = specs['serial_bridge'].parameters
    assert bridge['start_paused'] and bridge['reset_on_connect'] and bridge['port'] == '/x'
    # The port given on the command line is addressed to the bridge, so it beats the file.
    assert '-p' in specs['serial_bridge'].ros_arguments()
    assert 'serial_bridge:port:=' + "'/x'" in specs['serial_bridge'].ros_arguments()
    without_port = graph.training_graph(task_file, 'serial')[0]
    assert 'port' not in without_port.parameters


def test_emulated_rig_tells_every_node_its_faster_control_period(tmp_path):
    document = yaml.safe_load(graph.task_config('pendulum').read_text())
    document['controller']['ros__parameters']['soft_start_time'] = 0.4
    task_file = tmp_path / 'pendulum.yaml'
    task_file.write_text(yaml.safe_dump(document))
    arguments = cli.build_parser().parse_args(
        ['train', '--backend', 'serial', '--emulate', '--emulator-speed', '4']
    )
    rig = EmulatedRig(task_file, tmp_path, arguments.emulator_speed, {})
    assert rig.task == 'pendulum' and rig.port == tmp_path / 'rig'
    specs = rig.adapt(runs.training_specs(arguments, tmp_path, str(rig.port)))
    for spec in specs:
        assert spec.parameters['control_period'] == pytest.approx(0.05 / 4), spec.name
    controller = next(spec for spec in specs if spec.name == 'controller')
    assert controller.parameters['soft_start_time'] == pytest.approx(0.1)
    bridge = next(spec for spec in specs if spec.name == 'serial_bridge')
    assert bridge.parameters['port'] == str(tmp_path / 'rig')
    # At real time nothing changes.
    same = EmulatedRig(task_file, tmp_path, 1.0, {})
    plain = runs.training_specs(arguments, tmp_path)
    assert same.adapt(plain) == plain


def test_emulate_needs_the_serial_backend_and_a_registered_task(tmp_path):
    arguments = cli.build_parser().parse_args(['train', '--emulate', '--run-dir', str(tmp_path)])
    with pytest.raises(SystemExit, match='--backend serial'):
        runs.train(arguments)
    custom = tmp_path / 'custom.yaml'
    custom.write_text(yaml.safe_dump({'/**': {'ros__parameters': {'task': 'my_robot'}}}))
    with pytest.raises(SystemExit, match='registered tasks only'):
        EmulatedRig(Path(custom), tmp_path, 1.0, {})
    with pytest.raises(SystemExit, match='not positive'):
        EmulatedRig(graph.task_config('pendulum'), tmp_path, 0.0, {})
