"""The graph's per-backend overrides reach the node even when the task file sets the key.

rcl lets a node's own section of a params file beat a plain `-p key:=value`; graph.NodeSpec
addresses its overrides to the node (`-p name:key:=value`), which is checked here on a real
node process by asking it for its parameter over the parameter service.
"""

import sys

import pytest
from ros_testing import spin_until, write_params

from sindyrl_ros import graph

pytestmark = pytest.mark.ros


def test_node_addressed_override_beats_the_files_node_section(
    ros_context, start_process, tmp_path
):
    from rcl_interfaces.srv import GetParameters
    import rclpy.node

    task_file = write_params(
        tmp_path / 'task.yaml',
        {
            '/**': {
                'task': 'pendulum',
                'observation_names': ['cos_theta', 'sin_theta', 'theta_dot'],
                'action_names': ['torque'],
            },
            'sensor_ingestion': {
                'observation_features': [
                    'cos(pendulum_joint.position)',
                    'sin(pendulum_joint.position)',
                    'pendulum_joint.velocity',
                ],
                'max_age': 0.5,
            },
        },
    )
    spec = graph.NodeSpec(
        name='sensor_ingestion',
        executable='sensor_ingestion',
        module=graph.NODE_MODULES['sensor_ingestion'],
        parameter_files=(task_file,),
        parameters={'max_age': 0.25},
    )
    process = start_process(
        [sys.executable, '-m', spec.module, *spec.ros_arguments()], name='sensor'
    )
    context, executor = ros_context
    node = rclpy.node.Node('override_probe', context=context)
    executor.add_node(node)
    client = node.create_client(GetParameters, '/sensor_ingestion/get_parameters')
    assert spin_until(executor, client.service_is_ready, timeout=30), process.output()
    future = client.call_async(GetParameters.Request(names=['max_age']))
    assert spin_until(executor, future.done, timeout=10), process.output()
    assert future.result().values[0].double_value == 0.25
    node.destroy_node()
