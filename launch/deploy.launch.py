"""Run a saved policy on the plant, no learning:
`ros2 launch sindyrl_ros deploy.launch.py task:=pendulum policy:=/path/policy.json`.

Sensor ingestion and the controller (exploration off, limits from the task config), plus the
simulated plant for backend:=sim. Nodes come from sindyrl_ros.graph, like `sindyrl-ros deploy`.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration

from sindyrl_ros import graph
from sindyrl_ros.launch_support import ros_nodes


def _nodes(context):
    config = LaunchConfiguration('config').perform(context)
    task_file = config or graph.task_config(LaunchConfiguration('task').perform(context))
    specs = graph.deploy_graph(
        task_file,
        policy_file=LaunchConfiguration('policy').perform(context),
        backend=LaunchConfiguration('backend').perform(context),
    )
    return ros_nodes(specs)


def generate_launch_description():
    return LaunchDescription(
        [
            DeclareLaunchArgument('policy', description='saved policy JSON file to run'),
            DeclareLaunchArgument('task', default_value='pendulum', choices=list(graph.TASKS)),
            DeclareLaunchArgument(
                'backend', default_value='sim', choices=list(graph.BACKENDS),
                description='sim: embedded simulated plant; gazebo: plant from gazebo.launch.py; '
                'serial: a rig behind the serial bridge (port in the config)',
            ),
            DeclareLaunchArgument(
                'config', default_value='',
                description='your own task parameter file instead of config/<task>.yaml',
            ),
            OpaqueFunction(function=_nodes),
        ]
    )
