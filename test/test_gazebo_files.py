"""The Gazebo backend's files: cart-pole model, controllers, bridge, world and launch file.

Gazebo, gz_ros2_control and `ros2 launch` cannot be installed here, so this checks what can be
checked without them, against the real references: the URDF's joints, limits, masses and
damping against dm_control's cartpole.xml (the cartpole_swingup task's simulator), and its
dynamics against dm_control's own physics (MuJoCo loads URDF); the ros2_control block, the
controllers file and the bridge file against the topic contract and the task config; and
gazebo.launch.py executed for real with recording stand-ins for launch / launch_ros (as
test_launch_files.py does), including the order in which its processes start.
"""

from pathlib import Path
import xml.etree.ElementTree as ElementTree

import dm_control
from launch_standins import Exited, run_launch_file
import mujoco
import numpy as np
import pytest
from test_package_structure import setup_arguments
import yaml

from sindyrl_ros import graph
from sindyrl_ros.nodes import controller as controller_node

ROOT = Path(__file__).resolve().parents[1]
URDF = ROOT / 'description' / 'cartpole.urdf'
WORLD = ROOT / 'description' / 'empty.sdf'
CONTROLLERS = ROOT / 'config' / 'gazebo_controllers.yaml'
BRIDGE = ROOT / 'config' / 'gazebo_bridge.yaml'
TASK_FILE = ROOT / 'config' / 'cartpole_swingup.yaml'
LAUNCH_FILE = ROOT / 'launch' / 'gazebo.launch.py'
DM_CARTPOLE = Path(dm_control.__file__).parent / 'suite' / 'cartpole.xml'


# ----------------------------------------------------------------------------- references


def task_parameters() -> dict:
    """The shared ros__parameters of config/cartpole_swingup.yaml."""
    return yaml.safe_load(TASK_FILE.read_text())['/**']['ros__parameters']


def node_section(node: str) -> dict:
    return (yaml.safe_load(TASK_FILE.read_text()).get(node) or {}).get('ros__parameters', {})


def dm_cartpole() -> dict:
    """What cartpole.xml says about the cart-pole (parsed, not copied)."""
    root = ElementTree.parse(DM_CARTPOLE).getroot()
    pole_class = root.find("default/default[@class='pole']")
    cart = root.find(".//body[@name='cart']")
    slider = cart.find("joint[@name='slider']")
    motor = root.find("actuator/motor[@joint='slider']")
    pole_geom = pole_class.find('geom')
    fromto = np.array(pole_geom.get('fromto').split(), dtype=float)
    return {
        'cart_mass': float(cart.find("geom[@name='cart']").get('mass')),
        'cart_half_size': np.array(cart.find("geom[@name='cart']").get('size').split(), float),
        'cart_height': float(cart.get('pos').split()[2]),
        'slider_axis': np.array(slider.get('axis').split(), dtype=float),
        'slider_range': np.array(slider.get('range').split(), dtype=float),
        'slider_damping': float(slider.get('damping')),
        'pole_mass': float(pole_geom.get('mass')),
        'pole_length': float(np.linalg.norm(fromto[3:] - fromto[:3])),
        'pole_radius': float(pole_geom.get('size')),
        'hinge_axis': np.array(pole_class.find('joint').get('axis').split(), dtype=float),
        'hinge_damping': float(pole_class.find('joint').get('damping')),
        'gear': float(motor.get('gear')),
        'ctrlrange': np.array(motor.get('ctrlrange').split(), dtype=float),
    }


def dm_model() -> mujoco.MjModel:
    """dm_control's compiled cart-pole (inertias as MuJoCo computes them for the capsule)."""
    from dm_control.suite import cartpole

    return mujoco.MjModel.from_xml_string(*cartpole.get_model_and_assets())


def urdf_root() -> ElementTree.Element:
    return ElementTree.parse(URDF).getroot()


def urdf_joint(name: str) -> ElementTree.Element:
    joint = urdf_root().find(f"joint[@name='{name}']")
    assert joint is not None, f'cartpole.urdf has no joint {name}'
    return joint


def urdf_link(name: str) -> ElementTree.Element:
    link = urdf_root().find(f"link[@name='{name}']")
    assert link is not None, f'cartpole.urdf has no link {name}'
    return link


def vector(element: ElementTree.Element, attribute: str) -> np.ndarray:
    return np.array(element.get(attribute).split(), dtype=float)


def inertia_diagonal(link: ElementTree.Element) -> np.ndarray:
    inertia = link.find('inertial/inertia')
    for off_diagonal in ('ixy', 'ixz', 'iyz'):
        assert float(inertia.get(off_diagonal)) == 0.0
    return np.array([float(inertia.get(key)) for key in ('ixx', 'iyy', 'izz')])


# ----------------------------------------------------------------------------- the model


def test_urdf_joints_are_the_task_configs_joints():
    plant = node_section('plant')
    assert plant['joint_names'] == ['slider', 'hinge']
    features = ' '.join(node_section('sensor_ingestion')['observation_features'])
    assert 'slider.' in features and 'hinge.' in features
    movable = [
        joint.get('name') for joint in urdf_root().findall('joint') if joint.get('type') != 'fixed'
    ]
    assert movable == plant['joint_names']


def test_urdf_geometry_limits_and_axes_match_dm_control():
    dm = dm_cartpole()
    slider, hinge = urdf_joint('slider'), urdf_joint('hinge')
    assert slider.get('type') == 'prismatic'
    assert hinge.get('type') == 'continuous'  # the pole swings freely, no limit
    assert hinge.find('limit') is None
    np.testing.assert_array_equal(vector(slider.find('axis'), 'xyz'), dm['slider_axis'])
    np.testing.assert_array_equal(vector(hinge.find('axis'), 'xyz'), dm['hinge_axis'])
    limit = slider.find('limit')
    assert [float(limit.get('lower')), float(limit.get('upper'))] == list(dm['slider_range'])

    def links(joint):
        return joint.find('parent').get('link'), joint.find('child').get('link')

    assert links(slider) == ('rail', 'cart') and links(hinge) == ('cart', 'pole')
    rail = urdf_joint('world_to_rail')
    assert rail.get('type') == 'fixed' and rail.find('parent').get('link') == 'world'
    np.testing.assert_array_equal(vector(rail.find('origin'), 'xyz'), [0, 0, dm['cart_height']])
    np.testing.assert_allclose(
        vector(urdf_link('cart').find('visual/geometry/box'), 'size'), 2 * dm['cart_half_size']
    )
    pole = urdf_link('pole').find('visual/geometry/cylinder')
    assert float(pole.get('length')) == dm['pole_length']
    assert float(pole.get('radius')) == dm['pole_radius']
    # dm_control disables contacts; a collision shape would hit the floor when hanging.
    assert urdf_root().findall('.//collision') == []


def test_urdf_masses_damping_and_effort_are_dm_controls_over_the_gear():
    """A normalised action of 1 must move the cart as dm_control's 10 N (gear 10) does."""
    dm, model = dm_cartpole(), dm_model()
    gear = dm['gear']
    assert gear == 10.0
    action_low, action_high = task_parameters()['action_low'], task_parameters()['action_high']
    assert [action_low[0], action_high[0]] == list(dm['ctrlrange'])
    slider = urdf_joint('slider')
    assert float(slider.find('limit').get('effort')) == dm['ctrlrange'][1] == action_high[0]
    for joint, damping in (('slider', 'slider_damping'), ('hinge', 'hinge_damping')):
        value = float(urdf_joint(joint).find('dynamics').get('damping'))
        assert value * gear == pytest.approx(dm[damping], rel=1e-12)
    for link, mass in (('cart', 'cart_mass'), ('pole', 'pole_mass')):
        value = float(urdf_link(link).find('inertial/mass').get('value'))
        assert value * gear == pytest.approx(dm[mass], rel=1e-12)
        body = model.body('pole_1' if link == 'pole' else 'cart').id
        np.testing.assert_allclose(
            np.sort(inertia_diagonal(urdf_link(link))) * gear,
            np.sort(model.body_inertia[body]),
            rtol=1e-12,
        )
        np.testing.assert_allclose(
            vector(urdf_link(link).find('inertial/origin'), 'xyz'),
            model.body_ipos[body],
            atol=1e-12,
        )


def test_urdf_moves_like_dm_controls_cartpole():
    """The URDF (loaded by MuJoCo) with force = action follows dm_control's trajectory.

    Same integrator and step as dm_control, so any difference comes from the model: masses,
    inertias, axes, damping, the hinge's zero (upright) and the action scaling. The cart is
    kept off the end stops, whose soft-contact model is MuJoCo's, not the URDF's.
    """
    reference = dm_model()
    spec = mujoco.MjSpec.from_string(URDF.read_text())
    spec.option.timestep = reference.opt.timestep
    spec.option.integrator = reference.opt.integrator
    model = spec.compile()
    assert [model.joint(i).name for i in range(model.njnt)] == ['slider', 'hinge']
    np.testing.assert_array_equal(model.opt.gravity, reference.opt.gravity)
    reference_data, data = mujoco.MjData(reference), mujoco.MjData(model)
    rng = np.random.default_rng(0)
    for state in (reference_data, data):
        state.qpos[:] = [0.05, np.pi - 0.1]  # the swing-up's start: hanging
        state.qvel[:] = [0.2, -0.3]
    largest_error, largest_swing = 0.0, 0.0
    for _ in range(1000):
        cart_x, cart_x_dot = data.qpos[0], data.qvel[0]
        action = np.clip(rng.uniform(-1, 1) - 0.5 * cart_x - 0.3 * cart_x_dot, -1, 1)
        reference_data.ctrl[0] = action
        data.qfrc_applied[0] = action  # what ForwardCommandController does with the command
        mujoco.mj_step(reference, reference_data)
        mujoco.mj_step(model, data)
        largest_error = max(
            largest_error,
            np.abs(reference_data.qpos - data.qpos).max(),
            np.abs(reference_data.qvel - data.qvel).max(),
        )
        largest_swing = max(largest_swing, abs(data.qpos[1] - np.pi))
        assert abs(data.qpos[0]) < 1.6
    assert largest_swing > 0.5  # the pole really swung
    assert largest_error < 1e-9  # measured: 2e-14


def ros2_control_joints() -> dict[str, dict]:
    block = urdf_root().find('ros2_control')
    assert block is not None and block.get('type') == 'system'
    assert block.findtext('hardware/plugin') == 'gz_ros2_control/GazeboSimSystem'
    joints = {}
    for joint in block.findall('joint'):
        joints[joint.get('name')] = {
            'command': {
                interface.get('name'): {
                    param.get('name'): float(param.text) for param in interface.findall('param')
                }
                for interface in joint.findall('command_interface')
            },
            'state': {
                interface.get('name'): {
                    param.get('name'): float(param.text) for param in interface.findall('param')
                }
                for interface in joint.findall('state_interface')
            },
        }
    return joints


def test_ros2_control_block_commands_effort_on_the_slider_and_reads_both_joints():
    joints = ros2_control_joints()
    assert list(joints) == ['slider', 'hinge']
    parameters = task_parameters()
    assert joints['slider']['command'] == {
        'effort': {'min': parameters['action_low'][0], 'max': parameters['action_high'][0]}
    }
    assert joints['hinge']['command'] == {}  # the pole is passive
    for joint in joints.values():
        assert set(joint['state']) == {'position', 'velocity'}
    # dm_control's swing-up starts with the pole hanging down (hinge at pi).
    assert joints['hinge']['state']['position']['initial_value'] == pytest.approx(np.pi)
    assert joints['slider']['state']['position']['initial_value'] == 0.0


def test_gazebo_plugin_loads_gz_ros2_control_with_the_controllers_file():
    plugins = urdf_root().findall('gazebo/plugin')
    assert len(plugins) == 1
    plugin = plugins[0]
    assert plugin.get('filename') == 'gz_ros2_control-system'
    assert plugin.get('name') == 'gz_ros2_control::GazeboSimROS2ControlPlugin'
    assert plugin.findtext('parameters') == CONTROLLERS.name  # made absolute by the launch file
    assert CONTROLLERS.is_file()


# ----------------------------------------------------------------------------- controllers


def test_controllers_file_forwards_commands_on_the_topic_the_controller_publishes():
    document = yaml.safe_load(CONTROLLERS.read_text())
    manager = document['controller_manager']['ros__parameters']
    control_period = task_parameters()['control_period']
    assert isinstance(manager['update_rate'], int)
    assert manager['update_rate'] >= 1 / control_period
    assert manager['joint_state_broadcaster']['type'] == (
        'joint_state_broadcaster/JointStateBroadcaster'
    )
    forward = 'forward_command_controller/ForwardCommandController'
    assert manager['effort_controller']['type'] == forward
    effort = document['effort_controller']['ros__parameters']
    assert effort['type'] == forward
    assert effort['interface_name'] == 'effort'
    # Each joint the controller commands has that command interface in the model.
    joints = ros2_control_joints()
    assert effort['joints'] == [name for name, j in joints.items() if 'effort' in j['command']]
    assert effort['joints'] == ['slider']
    # ForwardCommandController listens on /<name>/commands: the sindyrl controller's topic.
    defaults = {spec.name: spec.default for spec in controller_node.PARAMETERS}
    configured = {**task_parameters(), **node_section('controller')}
    controller_name = configured.get('controller_name', defaults['controller_name'])
    assert f'/{controller_name}/commands' == '/effort_controller/commands'


def test_bridge_carries_only_the_clock_from_gazebo_to_ros():
    entries = yaml.safe_load(BRIDGE.read_text())
    assert entries == [
        {
            'ros_topic_name': '/clock',
            'gz_topic_name': '/clock',
            'ros_type_name': 'rosgraph_msgs/msg/Clock',
            'gz_type_name': 'gz.msgs.Clock',
            'direction': 'GZ_TO_ROS',
        }
    ]


def test_world_has_mujocos_gravity_and_the_systems_the_launch_needs():
    world = ElementTree.parse(WORLD).getroot().find('world')
    np.testing.assert_array_equal(
        np.array(world.findtext('gravity').split(), dtype=float), dm_model().opt.gravity
    )
    step = float(world.findtext('physics/max_step_size'))
    control_period = task_parameters()['control_period']
    assert control_period / step == pytest.approx(round(control_period / step))
    plugins = {plugin.get('name') for plugin in world.findall('plugin')}
    # Physics steps the model; UserCommands serves `ros_gz_sim create`; SceneBroadcaster the GUI.
    assert {
        'gz::sim::systems::Physics',
        'gz::sim::systems::UserCommands',
        'gz::sim::systems::SceneBroadcaster',
    } <= plugins


def test_setup_installs_the_description_files():
    entries = dict(setup_arguments()['data_files'])
    installed = entries['share/sindyrl_ros/description']
    assert {'description/cartpole.urdf', 'description/empty.sdf'} <= set(installed)
    assert 'config/gazebo_controllers.yaml' in entries['share/sindyrl_ros/config']
    assert 'config/gazebo_bridge.yaml' in entries['share/sindyrl_ros/config']
    assert 'launch/gazebo.launch.py' in entries['share/sindyrl_ros/launch']


# ----------------------------------------------------------------------------- launch file


def run_gazebo_launch(overrides: dict, monkeypatch):
    """Execute gazebo.launch.py; return (entities its OpaqueFunction made, created Nodes)."""
    return run_launch_file(LAUNCH_FILE, overrides, monkeypatch)


def exit_handlers(entities) -> dict:
    """target Node -> on_exit callback, from the RegisterEventHandler entities."""
    handlers = {}
    for entity in entities:
        if type(entity).__name__ == 'RegisterEventHandler':
            handler = entity.kwargs.get('event_handler') or entity.args[0]
            assert type(handler).__name__ == 'OnProcessExit'
            handlers[id(handler.kwargs['target_action'])] = handler.kwargs['on_exit']
    return handlers


def on_exit(handlers: dict, node, returncode: int) -> list:
    callback = handlers[id(node)]
    return list(callback(Exited(returncode), None))


def only(nodes, package, executable):
    found = [
        n for n in nodes if (n.kwargs['package'], n.kwargs['executable']) == (package, executable)
    ]
    assert len(found) == 1, f'expected one {package}/{executable}, got {len(found)}'
    return found[0]


@pytest.mark.parametrize('headless', ['true', 'false'])
def test_launch_starts_gazebo_with_the_world(headless, monkeypatch):
    entities, _ = run_gazebo_launch({'headless': headless}, monkeypatch)
    includes = [e for e in entities if type(e).__name__ == 'IncludeLaunchDescription']
    assert len(includes) == 1
    source = includes[0].args[0]
    path = source.args[0]
    assert type(path).__name__ == 'PathJoinSubstitution'
    # The server as the gzserver node: it offers the simulation_interfaces services the
    # episodes node resets and pauses the world with.
    share, *rest = path.args[0]
    assert share.args == ('ros_gz_sim',) and rest == ['launch', 'gz_server.launch.py']
    arguments = dict(includes[0].kwargs['launch_arguments'])
    world = Path(arguments['world_sdf_file'])
    assert world.is_absolute() and world.samefile(WORLD)
    guis = [e for e in entities if type(e).__name__ == 'ExecuteProcess']
    assert [g.kwargs['cmd'] for g in guis] == ([] if headless == 'true' else [['gz', 'sim', '-g']])


def test_launch_publishes_the_model_spawns_it_and_bridges_the_clock(monkeypatch):
    entities, created = run_gazebo_launch({}, monkeypatch)
    started = [e for e in entities if type(e).__name__ == 'Node']
    publisher = only(started, 'robot_state_publisher', 'robot_state_publisher')
    parameters = publisher.kwargs['parameters'][0]
    assert parameters['use_sim_time'] is True
    value = parameters['robot_description']
    assert type(value).__name__ == 'ParameterValue' and value.kwargs == {'value_type': str}
    description = ElementTree.fromstring(value.args[0])
    assert [j.get('name') for j in description.iter('joint')] == [
        j.get('name') for j in urdf_root().iter('joint')
    ]
    controllers_path = Path(description.find('gazebo/plugin').findtext('parameters'))
    assert controllers_path.is_absolute() and controllers_path.samefile(CONTROLLERS)

    spawn = only(started, 'ros_gz_sim', 'create')
    arguments = spawn.kwargs['arguments']
    assert arguments[arguments.index('-topic') + 1] == 'robot_description'
    world_name = ElementTree.parse(WORLD).getroot().find('world').get('name')
    assert arguments[arguments.index('-world') + 1] == world_name

    bridge = only(started, 'ros_gz_bridge', 'parameter_bridge')
    config_file = Path(bridge.kwargs['parameters'][0]['config_file'])
    assert config_file.is_absolute() and config_file.samefile(BRIDGE)
    # Nothing of sindyrl_ros starts before the controllers are up.
    assert not [n for n in started if n.kwargs['package'] == 'sindyrl_ros']
    assert len(created) == 5 + len(graph.training_graph(TASK_FILE, backend='gazebo'))


def test_launch_spawns_controllers_then_the_learning_graph_in_order(monkeypatch, tmp_path):
    entities, created = run_gazebo_launch({'run_dir': str(tmp_path)}, monkeypatch)
    handlers = exit_handlers(entities)
    spawn = only(created, 'ros_gz_sim', 'create')
    manager = yaml.safe_load(CONTROLLERS.read_text())['controller_manager']['ros__parameters']

    (broadcaster,) = on_exit(handlers, spawn, 0)
    assert broadcaster.kwargs['executable'] == 'spawner'
    assert broadcaster.kwargs['package'] == 'controller_manager'
    assert broadcaster.kwargs['arguments'][0] == 'joint_state_broadcaster'
    assert 'joint_state_broadcaster' in manager

    (effort,) = on_exit(handlers, broadcaster, 0)
    arguments = effort.kwargs['arguments']
    assert (effort.kwargs['package'], effort.kwargs['executable']) == (
        'controller_manager',
        'spawner',
    )
    assert arguments[0] == 'effort_controller' and 'effort_controller' in manager
    assert Path(arguments[arguments.index('--param-file') + 1]).samefile(CONTROLLERS)

    learning = on_exit(handlers, effort, 0)
    specs = graph.training_graph(TASK_FILE, backend='gazebo', run_dir=str(tmp_path))
    assert [n.kwargs['name'] for n in learning] == [spec.name for spec in specs]
    assert 'plant' not in [spec.name for spec in specs]  # Gazebo is the plant
    for node, spec in zip(learning, specs, strict=True):
        assert node.kwargs['package'] == 'sindyrl_ros'
        assert node.kwargs['executable'] == spec.executable
        files, overrides = node.kwargs['parameters'][:-1], node.kwargs['parameters'][-1]
        assert [Path(f).resolve() for f in files] == [TASK_FILE.resolve()]
        assert overrides == spec.parameters
        assert overrides['use_sim_time'] is True
    controller = learning[[s.name for s in specs].index('controller')].kwargs['parameters'][-1]
    assert controller['trigger'] == 'stamp' and controller['start_active'] is False
    # The episodes node stands in for a plant node, and drives Gazebo's simulation services.
    episodes = learning[[s.name for s in specs].index('episodes')].kwargs['parameters'][-1]
    assert episodes['reset'] == 'simulation_interfaces'
    assert episodes['simulation_services'] == '/gzserver'
    assert episodes['start_paused'] is True

    # When the run supervisor exits (run over), everything stops.
    supervisor = learning[[s.name for s in specs].index('run_supervisor')]
    assert [type(a).__name__ for a in on_exit(handlers, supervisor, 0)] == ['LogInfo', 'Shutdown']


def test_launch_with_a_policy_runs_the_deployment_graph(monkeypatch, tmp_path):
    policy = tmp_path / 'policy.json'
    entities, created = run_gazebo_launch({'policy': str(policy)}, monkeypatch)
    handlers = exit_handlers(entities)
    (broadcaster,) = on_exit(handlers, only(created, 'ros_gz_sim', 'create'), 0)
    (effort,) = on_exit(handlers, broadcaster, 0)
    deployed = on_exit(handlers, effort, 0)
    specs = graph.deploy_graph(TASK_FILE, policy_file=str(policy), backend='gazebo')
    assert [n.kwargs['name'] for n in deployed] == ['sensor_ingestion', 'controller']
    assert [n.kwargs['parameters'][-1] for n in deployed] == [s.parameters for s in specs]
    controller = deployed[1].kwargs['parameters'][-1]
    assert controller['policy_file'] == str(policy) and controller['mode'] == 'evaluate'
    assert controller['use_sim_time'] is True and controller['trigger'] == 'stamp'
    assert not [e for e in deployed if e.kwargs['name'] == 'run_supervisor']
    assert len(handlers) == 3  # no run supervisor to wait for


@pytest.mark.parametrize('step', ['create', 'joint_state_broadcaster', 'effort_controller'])
def test_launch_stops_when_a_step_before_learning_fails(step, monkeypatch):
    entities, created = run_gazebo_launch({}, monkeypatch)
    handlers = exit_handlers(entities)
    node = only(created, 'ros_gz_sim', 'create')
    while step != 'create' and node.kwargs['arguments'][0] != step:
        (node,) = on_exit(handlers, node, 0)  # the steps before it succeed
    actions = on_exit(handlers, node, 1)
    assert [type(a).__name__ for a in actions] == ['LogInfo', 'Shutdown']
    assert 'code 1' in actions[1].kwargs['reason']


def test_launch_refuses_tasks_without_a_gazebo_model(monkeypatch):
    with pytest.raises(AssertionError):
        run_gazebo_launch({'task': 'pendulum'}, monkeypatch)
