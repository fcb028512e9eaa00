"""Declared parameters: a bad params file stops a node at start-up, naming the key and file.

Real node processes with real params files; several start in parallel to keep this fast.
"""

import pytest
from ros_testing import node_command, write_params

pytestmark = pytest.mark.ros

CONTROLLER = {
    'observation_names': ['cos_theta', 'sin_theta', 'theta_dot'],
    'action_names': ['torque'],
    'action_low': [-2],  # integers are accepted for numbers
    'action_high': [2],
    'control_period': 0.05,
}
SENSOR = {
    'observation_names': ['cos_theta', 'sin_theta', 'theta_dot'],
    'observation_features': [
        'cos(pendulum_joint.position)',
        'sin(pendulum_joint.position)',
        'pendulum_joint.velocity',
    ],
}


def test_bad_parameters_stop_the_node_with_key_and_file(start_process, tmp_path):
    # (name, node module, sections, extra ros args, expected text in the FATAL message)
    cases = [
        (
            'unknown_key',
            'sensor_ingestion',
            {'sensor_ingestion': {**SENSOR, 'max_agee': 0.5}},
            [],
            ["'max_agee'"],
        ),
        (
            'unknown_key_in_wildcard',
            'controller',
            {'/**': {**CONTROLLER, 'not_a_parameter': 1}},
            [],
            ["'not_a_parameter'"],
        ),
        (
            'wrong_type',
            'controller',
            {'/**': CONTROLLER, 'controller': {'control_rate': 'fast'}},
            [],
            ["'control_rate'", 'expected a number'],
        ),
        (
            'out_of_range',
            'controller',
            {'/**': CONTROLLER, 'controller': {'exploration_noise': 50.0}},
            [],
            ["'exploration_noise'", 'outside the allowed range'],
        ),
        (
            'not_a_choice',
            'controller',
            {'/**': CONTROLLER, 'controller': {'trigger': 'sometimes'}},
            [],
            ["'trigger'", "not one of ['observation', 'timer', 'stamp']"],
        ),
        (
            'inconsistent',
            'controller',
            {'/**': {**CONTROLLER, 'action_low': [-2.0, -1.0]}},
            [],
            ["'action_low'", 'expected 1 values'],
        ),
        (
            'bad_policy_file',
            'controller',
            {'/**': CONTROLLER, 'controller': {'policy_file': 'POLICY'}},
            [],
            ["'policy_file'", 'policy.json', 'not valid JSON'],
        ),
        (
            'bad_feature',
            'sensor_ingestion',
            {
                'sensor_ingestion': {
                    **SENSOR,
                    'observation_features': ['tan(a.position)', 'b.x', 'c.velocity'],
                }
            },
            [],
            ["'observation_features'", "unknown function 'tan'"],
        ),
        (
            'unknown_command_line_key',
            'sensor_ingestion',
            {'sensor_ingestion': SENSOR},
            ['-p', 'controller:mode:=x', '-p', 'sensor_ingestion:bogus:=1'],
            ["'bogus'", '-p on the command line'],
        ),
    ]
    policy = tmp_path / 'policy.json'
    policy.write_text('{"format": "sindyrl_ros/policy", "vers')  # truncated
    processes = []
    for name, module, sections, extra, expected in cases:
        for section in sections.values():
            if section.get('policy_file') == 'POLICY':
                section['policy_file'] = str(policy)
        params = write_params(tmp_path / f'{name}.yaml', sections)
        process = start_process(node_command(module, params, *extra), name=name)
        processes.append((name, params, process, expected))
    # A good file with integers for numbers starts normally.
    good = write_params(tmp_path / 'good.yaml', {'/**': CONTROLLER})
    good_process = start_process(node_command('controller', good), name='good')

    for name, params, process, expected in processes:
        code = process.process.wait(timeout=60)
        output = process.output()
        assert code == 2, (name, output)
        assert 'FATAL' in output, (name, output)
        for text in expected:
            assert text in output, (name, text, output)
        if name not in ('unknown_command_line_key', 'bad_policy_file'):
            assert str(params) in output, (name, output)
    assert good_process.wait_for_output('controller ready', timeout=60), good_process.output()
    assert good_process.alive()
    assert good_process.stop() == 0


def test_parameter_file_sections_and_feature_specs():
    """The pieces behind the checks: rcl's section matching and the feature-spec parser."""
    from sindyrl_ros.core.features import parse_feature
    from sindyrl_ros.ros.parameters import _ros_arguments, _section_matches

    assert _section_matches('/**', '/plant')
    assert _section_matches('plant', '/plant')
    assert _section_matches('/**/plant', '/robot/plant')
    assert _section_matches('/robot/*', '/robot/plant')
    assert not _section_matches('/*', '/robot/plant')
    assert not _section_matches('controller', '/plant')
    assert _ros_arguments(
        ['prog', '--ros-args', '--params-file', 'a.yaml', '-p', 'x:=1', '--', '-p', 'y']
    ) == (['a.yaml'], ['x'])
    assert parse_feature('cos(hinge.position)') == ('cos', 'joint', 'hinge', 'position')
    assert parse_feature(' slider.velocity ') == ('', 'joint', 'slider', 'velocity')
    assert parse_feature('imu.roll') == ('', 'imu', 'imu', 'roll')
    assert parse_feature('wrap(odom.yaw)') == ('wrap', 'odom', 'odom', 'yaw')
    for bad in (
        'hinge',
        'exp(hinge.position)',
        'cos(hinge.position',
        'imu.speed',
        '__import__("os").position',
        'cos(sin(a.position))',
    ):
        with pytest.raises(ValueError):
            parse_feature(bad)
