"""No node commands an actuator once the process that started it is gone (kill -9).

The nodes run in their own sessions, so nothing but the parent-death handling of
``ros.runtime.run_node`` stops them when their parent dies; the controller must send its safe
command on the way out.
"""

import os
import signal
import sys
import time

import pytest
from ros_testing import child_pids, node_command, process_running, spin_until, write_params

pytestmark = pytest.mark.ros

SHARED = {
    'observation_names': ['cos_theta', 'sin_theta', 'theta_dot'],
    'action_names': ['torque'],
    'action_low': [-2.0],
    'action_high': [2.0],
    'control_period': 0.05,
}
SAFE = [0.5]  # not zero, so the safe command cannot be mistaken for anything else

# A parent that starts its argument list as a child, prints the child's pid and waits.
PARENT = """
import subprocess, sys, time
child = subprocess.Popen(sys.argv[1:])
print('child pid', child.pid, flush=True)
time.sleep(3600)
"""


def _kill(pids) -> None:
    """Clean up what a failing test leaves behind (processes this test started, by pid)."""
    for pid in pids:
        if process_running(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_controller_sends_the_safe_command_and_exits_when_its_parent_is_killed(
    ros_context, start_process, tmp_path
):
    import rclpy.node
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Float64MultiArray

    from sindyrl_ros.ros.messages import ns_to_stamp
    from sindyrl_ros.ros.qos import RELIABLE_QOS

    context, executor = ros_context
    params = write_params(
        tmp_path / 'controller.yaml',
        {
            '/**': SHARED,
            'controller': {
                'trigger': 'observation',
                'observation_timeout': 60.0,  # the watchdog must not be what sends SAFE
                'safe_command': SAFE,
                'seed': 3,
            },
        },
    )
    script = tmp_path / 'parent.py'
    script.write_text(PARENT)
    parent = start_process(
        [sys.executable, str(script), *node_command('controller', params)], name='parent'
    )
    node = rclpy.node.Node('parent_death_probe', context=context)
    executor.add_node(node)
    commands: list[list[float]] = []
    node.create_subscription(
        Float64MultiArray,
        '/effort_controller/commands',
        lambda message: commands.append(list(message.data)),
        RELIABLE_QOS,
    )
    observations = node.create_publisher(JointState, '/sindyrl/observation', RELIABLE_QOS)
    stamp_ns = 1_000_000_000

    def observe() -> None:
        nonlocal stamp_ns
        stamp_ns += 50_000_000
        message = JointState(name=SHARED['observation_names'], position=[1.0, 0.0, 0.0])
        message.header.stamp = ns_to_stamp(stamp_ns)
        observations.publish(message)

    assert parent.wait_for_output('child pid', timeout=20), parent.output()
    controller_pid = int(parent.output().split('child pid', 1)[1].split()[0])
    try:
        assert parent.wait_for_output('controller ready', timeout=60), parent.output()
        assert spin_until(executor, lambda: observations.get_subscription_count() > 0, 30)

        def explored() -> bool:
            observe()
            return len(commands) >= 5

        # Exploring: random commands, none of them the safe one.
        assert spin_until(executor, explored, timeout=30, step=0.05), parent.output()
        assert commands[-1] != SAFE

        os.kill(parent.process.pid, signal.SIGKILL)
        parent.process.wait(5)
        killed = time.monotonic()

        def controller_gone() -> bool:
            observe()  # keep it busy: it must stop on its own, not for want of input
            return not process_running(controller_pid)

        assert spin_until(executor, controller_gone, timeout=10, step=0.05), (
            f'controller still running 10 s after its parent died:\n{parent.output()[-2000:]}'
        )
        exit_after = time.monotonic() - killed
        spin_until(executor, lambda: False, timeout=0.5)  # the last messages in flight
    finally:
        _kill([controller_pid])
    assert commands[-1] == SAFE, commands[-5:]
    output = parent.output()
    assert 'is gone: shutting down' in output, output[-2000:]
    assert 'sending the safe command' in output, output[-2000:]
    assert exit_after < 5.0, exit_after


def test_killing_the_runner_stops_every_node_of_the_run(ros_context, start_process, tmp_path):
    import rclpy.node
    from sensor_msgs.msg import JointState
    import yaml

    from sindyrl_ros import graph
    from sindyrl_ros.ros.qos import SENSOR_QOS

    context, executor = ros_context
    node = rclpy.node.Node('runner_death_probe', context=context)
    executor.add_node(node)
    joint_states = []
    node.create_subscription(JointState, '/joint_states', joint_states.append, SENSOR_QOS)
    run_dir = tmp_path / 'run'
    # Free running: the plant keeps stepping while the model and policy are learned, so
    # whatever moment the runner is killed at, surviving nodes would go on stepping it.
    task = yaml.safe_load(graph.task_config('pendulum').read_text())
    task['run_supervisor']['ros__parameters']['hold_for_policy'] = False
    config = tmp_path / 'pendulum.yaml'
    config.write_text(yaml.safe_dump(task, sort_keys=False))
    runner = start_process(
        [
            sys.executable,
            '-m',
            'sindyrl_ros.cli',
            'train',
            '--config',
            str(config),
            '--budget',
            '100000',
            '--run-dir',
            str(run_dir),
        ],
        name='train',
    )
    nodes: list[int] = []
    try:
        # The plant has stepped under the controller's commands: a whole episode, as the
        # runner reports it (a best-effort subscriber in a loaded test process need not see
        # many of the joint states), and it goes on stepping.
        stepped = spin_until(executor, lambda: 'episode 1:' in runner.output(), timeout=180)
        assert stepped, runner.output()[-3000:]
        joint_states.clear()
        assert spin_until(executor, lambda: joint_states, timeout=30), 'the plant stopped'
        nodes = child_pids(runner.process.pid)
        assert len(nodes) >= 6, (nodes, runner.output()[-3000:])

        os.kill(runner.process.pid, signal.SIGKILL)  # the runner only, not the nodes' groups
        runner.process.wait(5)

        def all_gone() -> bool:
            return not any(process_running(pid) for pid in nodes)

        # A node still importing when its parent died (a loaded machine) exits as soon as
        # it reaches run_node; it has commanded nothing meanwhile (checked below).
        assert spin_until(executor, all_gone, timeout=60, step=0.1), [
            pid for pid in nodes if process_running(pid)
        ]
        spin_until(executor, lambda: False, timeout=0.3)  # drain what was in flight
        joint_states.clear()
        spin_until(executor, lambda: False, timeout=1.5)
        assert not joint_states, f'{len(joint_states)} joint states after the run was killed'
    finally:
        _kill(nodes)
    logs = {path.stem: path.read_text(errors='replace') for path in (run_dir / 'logs').glob('*')}
    # Not checked here: the 'parent ... is gone' line. A killed multi-threaded runner
    # exits thread by thread; when the thread that forked the nodes goes first, Linux
    # reparents them to another of its threads and sends the parent-death signal while
    # getppid() still names the runner. The node stops as on SIGTERM all the same.
    assert 'sending the safe command' in logs['controller'], logs['controller'][-2000:]


def test_a_node_whose_parent_died_while_it_started_does_not_start(ros_domain, tmp_path):
    """The parent names itself in the environment (graph.PARENT_PID_ENV, as `sindyrl-ros`
    and the launch files do); a node that finds another parent (the one that started it
    died during its imports, and it was adopted) exits before it creates anything."""
    import subprocess

    from ros_testing import ros_environment

    from sindyrl_ros.graph import PARENT_PID_ENV

    gone = subprocess.Popen([sys.executable, '-c', 'pass'])
    gone.wait()  # a pid that is not this node's parent
    params = write_params(tmp_path / 'controller.yaml', {'/**': SHARED})
    env = dict(ros_environment(ros_domain), **{PARENT_PID_ENV: str(gone.pid)})
    result = subprocess.run(
        node_command('controller', params), env=env, capture_output=True, text=True, timeout=120
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert f'parent process {gone.pid} is gone before start-up: not starting' in output
    assert 'controller ready' not in output
