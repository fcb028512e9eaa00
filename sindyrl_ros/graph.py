"""The one description of the sindyrl_ros node graph.

Both the launch files (`launch/*.launch.py`) and the `sindyrl-ros` command build their
processes from the functions here, so the two cannot drift apart: which nodes run, under which
names, with which parameter files, overrides and remappings, for each task and backend.

This module imports neither rclpy nor launch: it is plain data, usable from a ROS 2 distro,
from a pip venv and from tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import os
from pathlib import Path
import sys

PACKAGE = 'sindyrl_ros'
TASKS = ('pendulum', 'cartpole_swingup')
# Where the plant is: the embedded gymnasium/MuJoCo simulator, Gazebo (gz_ros2_control), a
# rig behind the serial bridge (which also keeps the episodes and serves /plant/reset and
# /plant/pause, as the simulated plant does), or any ros2_control robot (joint states in,
# forward command controller out). For Gazebo and ros2_control the package does not own the
# plant: the episodes node cuts and scores its episodes and resets it through the task
# file's reset provider (Gazebo: the simulation_interfaces services).
BACKENDS = ('sim', 'gazebo', 'serial', 'ros2_control')
# Sim time follows the backend: the simulators publish /clock, a real robot runs on wall time.
USES_SIM_TIME = {'sim': True, 'gazebo': True, 'serial': False, 'ros2_control': False}
# Backends whose plant the package does not own: the episodes node stands in for it.
EXTERNAL_PLANTS = ('gazebo', 'ros2_control')
# Gazebo's ros_gz_sim offers the simulation_interfaces services under this namespace.
GAZEBO_SIMULATION_SERVICES = '/gzserver'
# The pid of the process that starts the nodes (`sindyrl-ros`, `ros2 launch`), in each
# node's environment: a node whose parent died while it was still importing finds another
# parent and refuses to start (ros.runtime.run_node).
PARENT_PID_ENV = 'SINDYRL_ROS_PARENT_PID'


@dataclass(frozen=True)
class NodeSpec:
    """One process of the graph.

    executable is the console script (`ros2 run sindyrl_ros <executable>`), module the
    Python module whose `main()` it calls; name is the ROS node name.
    """

    name: str
    executable: str
    module: str
    parameter_files: tuple[Path, ...] = ()
    parameters: dict = field(default_factory=dict)
    remappings: tuple[tuple[str, str], ...] = ()

    def ros_arguments(self) -> list[str]:
        """The `--ros-args` part of this node's command line."""
        arguments = ['--ros-args', '-r', f'__node:={self.name}']
        for path in self.parameter_files:
            arguments += ['--params-file', str(path)]
        # Addressed to this node: rcl lets a node's own section of a params file beat a plain
        # `-p key:=value`, but not a node-addressed one given after the file.
        for key, value in self.parameters.items():
            arguments += ['-p', f'{self.name}:{key}:={format_parameter(value)}']
        for source, target in self.remappings:
            arguments += ['-r', f'{source}:={target}']
        return arguments


# executable -> module; setup.py's console_scripts list the same pairs (a test checks it).
NODE_MODULES = {
    'plant': 'sindyrl_ros.nodes.plant',
    'sensor_ingestion': 'sindyrl_ros.nodes.sensor_ingestion',
    'controller': 'sindyrl_ros.nodes.controller',
    'model_updater': 'sindyrl_ros.nodes.model_updater',
    'policy_trainer': 'sindyrl_ros.nodes.policy_trainer',
    'run_supervisor': 'sindyrl_ros.nodes.run_supervisor',
    'serial_bridge': 'sindyrl_ros.nodes.serial_bridge',
    'episodes': 'sindyrl_ros.nodes.episodes',
}


def format_parameter(value) -> str:
    """A value as `-p key:=value` expects it (YAML syntax)."""
    if isinstance(value, bool):
        return 'true' if value else 'false'
    if isinstance(value, (list, tuple)):
        return '[' + ', '.join(format_parameter(item) for item in value) + ']'
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'" if value else "''"
    return repr(value)


def config_dir() -> Path:
    """Where the parameter files are: installed share directory, or the source tree."""
    override = os.environ.get('SINDYRL_ROS_CONFIG_DIR')
    if override:
        return Path(override)
    candidates = []
    try:
        from ament_index_python.packages import get_package_share_directory

        candidates.append(Path(get_package_share_directory(PACKAGE)) / 'config')
    except (ImportError, LookupError, ValueError, OSError):  # not installed with colcon
        pass
    candidates.append(Path(sys.prefix) / 'share' / PACKAGE / 'config')
    candidates.append(Path(__file__).resolve().parents[1] / 'config')
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(
        f'no sindyrl_ros config directory in any of: {", ".join(map(str, candidates))}'
    )


def task_config(task: str) -> Path:
    """The ROS parameter file of a shipped task, e.g. config/pendulum.yaml."""
    if task not in TASKS:
        raise ValueError(f'unknown task {task!r}; shipped tasks: {", ".join(TASKS)}')
    return config_dir() / f'{task}.yaml'


def _check(task_file: Path, backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f'unknown backend {backend!r}; choose one of {", ".join(BACKENDS)}')
    if not Path(task_file).is_file():
        raise FileNotFoundError(f'parameter file {task_file} does not exist')


def _node(executable: str, files, parameters: dict) -> NodeSpec:
    return NodeSpec(
        name=executable,
        executable=executable,
        module=NODE_MODULES[executable],
        parameter_files=tuple(Path(path) for path in files),
        parameters=dict(parameters),
    )


def _trigger(backend: str) -> str:
    """How the controller is triggered while learning (see the controller's docstring)."""
    return 'stamp' if backend in EXTERNAL_PLANTS else 'observation'


def _plant_side(backend: str, files, parameters: dict, training: bool) -> list[NodeSpec]:
    """The node that is the plant for this backend.

    For a plant the package does not own (Gazebo, started by gazebo.launch.py, or a
    ros2_control robot) a training run gets the episodes node in its place; deploying a
    policy needs nothing there.
    """
    if backend == 'sim':
        return [_node('plant', files, dict(parameters, mode='lockstep'))]
    if backend == 'serial':
        return [_node('serial_bridge', files, parameters)]
    if not training:
        return []
    episodes = {
        key: value for key, value in parameters.items() if key in ('use_sim_time', 'start_paused')
    }
    if backend == 'gazebo':
        episodes.update(
            reset='simulation_interfaces', simulation_services=GAZEBO_SIMULATION_SERVICES
        )
    return [_node('episodes', files, episodes)]


def training_graph(
    task_file: Path,
    backend: str = 'sim',
    run_dir: str | None = None,
    budget: int | None = None,
    port: str | None = None,
    resume: bool = False,
) -> list[NodeSpec]:
    """The nodes that learn a controller on the plant given by `backend`.

    Parameters
    ----------
    task_file : path of the task's ROS parameter file (config/<task>.yaml or the user's own).
    backend : 'sim' (embedded simulated plant, lockstep), 'gazebo' (plant started by
        gazebo.launch.py), 'serial' (a rig behind the serial bridge, on the wall clock) or
        'ros2_control' (a robot's joint_state_broadcaster and forward command controller, on
        the wall clock; episodes and resets by the episodes node).
    run_dir : where the MCAP log, models, policies and summary.json go (None: the file's value).
    budget : real training steps the run may use (None: the file's value).
    port : serial device of the rig (backend 'serial'; None: the file's value).
    resume : continue the run in run_dir (its recording, models, policies and steps).
    """
    _check(task_file, backend)
    sim_time = {'use_sim_time': USES_SIM_TIME[backend]}
    learning = dict(sim_time, **({'run_dir': run_dir} if run_dir else {}))
    if resume:
        learning['resume'] = True
    supervisor = dict(learning, **({'budget': int(budget)} if budget is not None else {}))
    # Lockstep needs the controller to answer each observation, and so does a rig: it samples
    # on its own timer, so its state rate is the control rate and each answer should reach
    # it before its next sample. A robot's joint states come at their own rate (100 Hz to
    # 1 kHz): the controller answers the first observation of each control period by the
    # observations' stamps, so recorded steps are one period long however late this
    # computer runs it, and it starts on its safe command until the episodes node activates
    # it (nothing moves before the run supervisor says so).
    controller = dict(sim_time, trigger=_trigger(backend))
    if backend in EXTERNAL_PLANTS:
        controller['start_active'] = False
    if backend == 'sim':
        # Soft start protects hardware from a jump at a policy swap; in simulation it would
        # only blur the first steps of each evaluation.
        controller['soft_start_time'] = 0.0
    files = (task_file,)
    # The plant (or rig) is held until the run supervisor resumes it: no real step is taken
    # before anyone counts it. A rig is also reset (homed) whenever its port opens, so the
    # first episode starts from a reset like every other.
    plant = dict(sim_time, start_paused=True)
    if backend == 'serial':
        plant['reset_on_connect'] = True
        if port:
            plant['port'] = str(port)
    nodes = _plant_side(backend, files, plant, training=True)
    nodes += [
        _node('sensor_ingestion', files, sim_time),
        _node('controller', files, controller),
        _node('model_updater', files, learning),
        _node('policy_trainer', files, learning),
        _node('run_supervisor', files, supervisor),
    ]
    return nodes


def deploy_graph(task_file: Path, policy_file: str, backend: str = 'sim') -> list[NodeSpec]:
    """Sensor ingestion and the controller running a saved policy: no learning, no exploration."""
    _check(task_file, backend)
    sim_time = {'use_sim_time': USES_SIM_TIME[backend]}
    controller = dict(sim_time, policy_file=str(policy_file), mode='evaluate')
    if backend == 'serial':
        # A rig runs on its own: a fixed-rate loop on the steady clock (immune to jumps).
        controller.update(trigger='timer', clock='steady')
    else:
        controller['trigger'] = _trigger(backend)
    files = (task_file,)
    nodes = _plant_side(backend, files, sim_time, training=False)
    nodes += [_node('sensor_ingestion', files, sim_time), _node('controller', files, controller)]
    return nodes
