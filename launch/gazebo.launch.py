"""Learn the cart-pole swing-up in Gazebo: `ros2 launch sindyrl_ros gazebo.launch.py`.

Starts the Gazebo server as ros_gz_sim's ``gzserver`` node (gz_server.launch.py; Harmonic on
Jazzy, Ionic on Kilted) with description/empty.sdf, and the GUI (``gz sim -g``) unless
``headless:=true``; spawns the cart-pole of description/cartpole.urdf (published by
robot_state_publisher), whose gz_ros2_control plugin runs the controller manager; then, each
step once the previous one has succeeded: the joint_state_broadcaster spawner, the
effort_controller spawner (config/gazebo_controllers.yaml) and the sindyrl_ros training
graph. ros_gz_bridge carries /clock from Gazebo (config/gazebo_bridge.yaml); every sindyrl_ros
node runs on it (use_sim_time). When the run supervisor reports the run over, everything
shuts down.

Episodes, holds and resets: the episodes node of the graph (backend 'gazebo') cuts and
scores the episodes and drives the simulator through the ROS 2 standard
simulation_interfaces services the ``gzserver`` node offers (/gzserver/reset_simulation,
/gzserver/set_simulation_state): the world is reset after every episode and really paused
while models and policies are trained. A ros_gz_sim without them (older than the
simulation_interfaces support) leaves the run waiting, and the episodes node says for which
service.

With `policy:=<file>` it runs that saved policy instead of learning (the deployment graph:
sensor ingestion and the controller, exploration off), e.g. a policy learnt on the embedded
simulator: the model is built so that the same normalised action moves it the same way.

The sindyrl_ros nodes come from sindyrl_ros.graph (backend 'gazebo'), like
`train.launch.py backend:=gazebo` and `sindyrl-ros train --backend gazebo`; the processes here
that are not sindyrl_ros's (Gazebo, the bridge, robot_state_publisher, the spawners) are
launch_ros nodes of their own packages.
"""

from pathlib import Path
import xml.etree.ElementTree as ElementTree

from launch import LaunchDescription
from launch.actions import (
    DeclareLaunchArgument,
    ExecuteProcess,
    IncludeLaunchDescription,
    LogInfo,
    OpaqueFunction,
    RegisterEventHandler,
    Shutdown,
)
from launch.event_handlers import OnProcessExit
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
import launch_ros.actions
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

from sindyrl_ros import graph
from sindyrl_ros.launch_support import ros_nodes

# This file's package share directory (installed share/sindyrl_ros, or the source tree).
SHARE = Path(__file__).resolve().parents[1]
URDF = SHARE / 'description' / 'cartpole.urdf'
WORLD = SHARE / 'description' / 'empty.sdf'
CONTROLLERS = SHARE / 'config' / 'gazebo_controllers.yaml'
BRIDGE = SHARE / 'config' / 'gazebo_bridge.yaml'
WORLD_NAME = 'sindyrl_cartpole'  # <world name> in empty.sdf
MODEL_NAME = 'cartpole'
# Tasks that have a Gazebo model.
GAZEBO_TASKS = ('cartpole_swingup',)
CONTROLLER_PLUGIN = 'gz_ros2_control::GazeboSimROS2ControlPlugin'


def robot_description(urdf: Path = URDF, controllers: Path = CONTROLLERS) -> str:
    """The cart-pole URDF with the controllers file as an absolute path.

    gz_ros2_control hands its <parameters> to the controller manager as a params file, so it
    must be a path that exists where Gazebo runs: the installed one, filled in here instead of
    with xacro.
    """
    root = ElementTree.parse(urdf).getroot()
    plugins = [plugin for plugin in root.iter('plugin') if plugin.get('name') == CONTROLLER_PLUGIN]
    if len(plugins) != 1:
        raise RuntimeError(f'{urdf}: expected one {CONTROLLER_PLUGIN} plugin')
    parameters = plugins[0].find('parameters')
    if parameters is None:
        raise RuntimeError(f'{urdf}: the {CONTROLLER_PLUGIN} plugin has no <parameters>')
    parameters.text = str(controllers)
    return ElementTree.tostring(root, encoding='unicode')


def _then(step: str, actions: list):
    """An OnProcessExit callback: start `actions` if `step` succeeded, else stop the launch."""

    def on_exit(event, context):
        if event.returncode == 0:
            return actions
        reason = f'gazebo.launch.py: {step} exited with code {event.returncode}'
        return [LogInfo(msg=reason), Shutdown(reason=reason)]

    return on_exit


def _run_over(event, context):
    """The run supervisor exits when the run is over (0) or failed: stop Gazebo and all."""
    if event.returncode == 0:
        reason = 'gazebo.launch.py: the run is over (see summary.json in the run directory)'
    else:
        reason = f'gazebo.launch.py: the run supervisor exited with code {event.returncode}'
    return [LogInfo(msg=reason), Shutdown(reason=reason)]


def _gazebo_graph(context):
    headless = LaunchConfiguration('headless').perform(context) == 'true'
    config = LaunchConfiguration('config').perform(context)
    task_file = config or graph.task_config(LaunchConfiguration('task').perform(context))
    run_dir = LaunchConfiguration('run_dir').perform(context) or None
    policy = LaunchConfiguration('policy').perform(context)

    # The server as ros_gz_sim's gzserver node: it runs the world at once (the learning
    # graph follows /clock) and offers the simulation_interfaces services.
    gazebo = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(
            PathJoinSubstitution(
                [FindPackageShare('ros_gz_sim'), 'launch', 'gz_server.launch.py']
            )
        ),
        launch_arguments={'world_sdf_file': str(WORLD)}.items(),
    )
    gui = [] if headless else [ExecuteProcess(cmd=['gz', 'sim', '-g'], output='screen')]
    clock_bridge = launch_ros.actions.Node(
        package='ros_gz_bridge',
        executable='parameter_bridge',
        name='clock_bridge',
        parameters=[{'config_file': str(BRIDGE)}],
        output='screen',
    )
    state_publisher = launch_ros.actions.Node(
        package='robot_state_publisher',
        executable='robot_state_publisher',
        parameters=[
            {
                # value_type str: launch_ros must not read the XML as YAML.
                'robot_description': ParameterValue(robot_description(), value_type=str),
                'use_sim_time': True,
            }
        ],
        output='screen',
    )
    spawn = launch_ros.actions.Node(
        package='ros_gz_sim',
        executable='create',
        arguments=['-world', WORLD_NAME, '-topic', 'robot_description', '-name', MODEL_NAME],
        output='screen',
    )
    joint_state_broadcaster = launch_ros.actions.Node(
        package='controller_manager',
        executable='spawner',
        arguments=['joint_state_broadcaster', '--controller-manager', '/controller_manager'],
        output='screen',
    )
    effort_controller = launch_ros.actions.Node(
        package='controller_manager',
        executable='spawner',
        arguments=[
            'effort_controller',
            '--controller-manager',
            '/controller_manager',
            '--param-file',
            str(CONTROLLERS),
        ],
        output='screen',
    )

    if policy:
        specs = graph.deploy_graph(task_file, policy_file=policy, backend='gazebo')
    else:
        specs = graph.training_graph(task_file, backend='gazebo', run_dir=run_dir)
    sindyrl_nodes = ros_nodes(specs)
    actions = [
        gazebo,
        *gui,
        clock_bridge,
        state_publisher,
        spawn,
        RegisterEventHandler(
            OnProcessExit(
                target_action=spawn,
                on_exit=_then('spawning the cart-pole', [joint_state_broadcaster]),
            )
        ),
        RegisterEventHandler(
            OnProcessExit(
                target_action=joint_state_broadcaster,
                on_exit=_then('the joint_state_broadcaster spawner', [effort_controller]),
            )
        ),
        RegisterEventHandler(
            OnProcessExit(
                target_action=effort_controller,
                on_exit=_then('the effort_controller spawner', sindyrl_nodes),
            )
        ),
    ]
    for spec, node in zip(specs, sindyrl_nodes, strict=True):
        if spec.name == 'run_supervisor':
            actions.append(
                RegisterEventHandler(OnProcessExit(target_action=node, on_exit=_run_over))
            )
    return actions


def generate_launch_description():
    return LaunchDescription(
        [
            DeclareLaunchArgument(
                'headless',
                default_value='false',
                choices=['true', 'false'],
                description='true: Gazebo server only, no GUI (gz sim -g)',
            ),
            DeclareLaunchArgument(
                'task',
                default_value='cartpole_swingup',
                choices=list(GAZEBO_TASKS),
                description='shipped task whose config/<task>.yaml is used (one with a '
                'Gazebo model)',
            ),
            DeclareLaunchArgument(
                'config',
                default_value='',
                description='your own task parameter file instead of config/<task>.yaml',
            ),
            DeclareLaunchArgument(
                'policy',
                default_value='',
                description='saved policy JSON file to run instead of learning',
            ),
            DeclareLaunchArgument(
                'run_dir',
                default_value='',
                description='where the MCAP log, models, policies and summary.json go',
            ),
            OpaqueFunction(function=_gazebo_graph),
        ]
    )
