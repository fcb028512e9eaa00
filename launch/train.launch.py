"""Learn a controller with SINDy-RL: `ros2 launch sindyrl_ros train.launch.py task:=pendulum`.

The nodes, their names, parameter files and overrides come from sindyrl_ros.graph, the same
description the `sindyrl-ros train` command uses.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration

from sindyrl_ros import graph
from sindyrl_ros.launch_support import ros_nodes


def _nodes(context):
    config = LaunchConfiguration('config').perform(context)
    task = LaunchConfiguration('task').perform(context)
    task_file = config or graph.task_config(task)
    run_dir = LaunchConfiguration('run_dir').perform(context) or None
    port = LaunchConfiguration('port').perform(context) or None
    specs = graph.training_graph(
        task_file,
        backend=LaunchConfiguration('backend').perform(context),
        run_dir=run_dir,
        port=port,
        resume=LaunchConfiguration('resume').perform(context).lower() in ('true', '1'),
    )
    return ros_nodes(specs)


def generate_launch_description():
    return LaunchDescription(
        [
            DeclareLaunchArgument(
                'task', default_value='pendulum', choices=list(graph.TASKS),
                description='shipped task whose config/<task>.yaml is used',
            ),
            DeclareLaunchArgument(
                'backend', default_value='sim', choices=list(graph.BACKENDS),
                description='sim: embedded simulated plant (lockstep, sim time); '
                'gazebo: plant from gazebo.launch.py; serial: a rig behind the serial bridge '
                '(docs/rig_protocol.md, wall clock); ros2_control: your robot (its '
                'joint_state_broadcaster and forward command controller, wall clock; episodes '
                'and resets by the episodes node, configured in the task file)',
            ),
            DeclareLaunchArgument(
                'port', default_value='',
                description="backend serial: the rig's serial device (default: the config's)",
            ),
            DeclareLaunchArgument(
                'config', default_value='',
                description='your own task parameter file instead of config/<task>.yaml',
            ),
            DeclareLaunchArgument(
                'run_dir', default_value='',
                description='where the MCAP log, models, policies and summary.json go',
            ),
            DeclareLaunchArgument(
                'resume', default_value='false', choices=['true', 'false'],
                description='continue the run in run_dir after a crash or a stop: its '
                'recording, last model and policy, and real steps (which count against the '
                'budget)',
            ),
            OpaqueFunction(function=_nodes),
        ]
    )
