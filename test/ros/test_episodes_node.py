"""The episodes node over real DDS: episodes, holds and resets of a plant it does not own.

The test process plays the rest of the graph: it offers the controller's
``/controller/activate`` (recording every call), publishes observations and the
controller's answers, and calls ``/plant/pause`` and ``/plant/reset`` as the run supervisor
does. The node runs in its own process with the operator provider (the operator is the
test: it publishes ``/sindyrl/operator_ready``) and, in the second test, the
simulation_interfaces provider against a stand-in simulator process
(test/simulation_standin.py).
"""

import json
from pathlib import Path
import sys

import numpy as np
import pytest
from ros_testing import DiagnosticsWatcher, node_command, spin_until, write_params

from sindyrl_ros.core.tasks import get_task

pytestmark = pytest.mark.ros

PERIOD_NS = 50_000_000
STANDIN = Path(__file__).resolve().parents[1] / 'simulation_standin.py'
NAMESPACE = '/gzserver'


class GraphStandIn:
    """The controller's activate service, the sensor and controller topics, the
    supervisor's service calls and the episode records, in the test process."""

    def __init__(self, node, executor) -> None:
        from sensor_msgs.msg import JointState
        from std_msgs.msg import Empty, String
        from std_srvs.srv import SetBool, Trigger

        from sindyrl_ros.ros.qos import EPISODE_QOS, RELIABLE_QOS, TRANSITION_QOS

        self.node, self.executor = node, executor
        self.activations: list[bool] = []
        self.episodes: list[dict] = []
        self.JointState, self.Empty = JointState, Empty
        self.SetBool, self.Trigger = SetBool, Trigger
        node.create_service(SetBool, '/controller/activate', self._on_activate)
        self.observations = node.create_publisher(
            JointState, '/sindyrl/observation', TRANSITION_QOS
        )
        self.actions = node.create_publisher(JointState, '/sindyrl/action', TRANSITION_QOS)
        self.operator = node.create_publisher(Empty, '/sindyrl/operator_ready', RELIABLE_QOS)
        node.create_subscription(
            String,
            '/sindyrl/episode',
            lambda m: self.episodes.append(json.loads(m.data)),
            EPISODE_QOS,
        )
        self.pause_client = node.create_client(SetBool, '/plant/pause')
        self.reset_client = node.create_client(Trigger, '/plant/reset')
        self.stamp_ns = 1_000_000_000

    def _on_activate(self, request, response):
        self.activations.append(bool(request.data))
        response.success = True
        response.message = 'active' if request.data else 'deactivated'
        return response

    def call(self, client, request, timeout: float = 15.0):
        future = client.call_async(request)
        assert spin_until(self.executor, future.done, timeout=timeout), client.srv_name
        return future.result()

    def step(self, observation, action, mode='explore') -> None:
        """An observation and the controller's answer to it, one control period apart."""
        from builtin_interfaces.msg import Time

        stamp = Time(sec=self.stamp_ns // 10**9, nanosec=self.stamp_ns % 10**9)
        message = self.JointState(name=['cos_theta', 'sin_theta', 'theta_dot'])
        message.header.stamp = stamp
        message.position = [float(v) for v in observation]
        self.observations.publish(message)
        answer = self.JointState(name=['torque'])
        answer.header.stamp = stamp
        answer.header.frame_id = mode
        answer.effort = [float(action)]
        self.actions.publish(answer)
        self.stamp_ns += PERIOD_NS
        spin_until(self.executor, lambda: False, timeout=0.02)


def pendulum_states(count: int, seed: int = 0):
    import gymnasium

    env = gymnasium.make('Pendulum-v1')
    observation, _ = env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    observations, torques = [observation], []
    for _ in range(count - 1):
        torque = float(rng.uniform(-2, 2))
        observation, *_ = env.step(np.array([torque], dtype=np.float32))
        observations.append(observation)
        torques.append(torque)
    torques.append(0.0)
    return np.array(observations), np.array(torques)


def test_episodes_are_cut_scored_and_reset_by_the_operator(ros_context, start_process, tmp_path):
    import rclpy.node

    context, executor = ros_context
    params = write_params(
        tmp_path / 'episodes.yaml',
        {
            '/**': {'task': 'pendulum', 'episode_length': 5},
            'episodes': {'reset': 'operator', 'reset_timeout': 0.0, 'wait_report': 1.0},
        },
    )
    node = rclpy.node.Node('graph_standin', context=context)
    executor.add_node(node)
    graph = GraphStandIn(node, executor)
    watcher = DiagnosticsWatcher(node)
    episodes = start_process(node_command('episodes', params), name='episodes')

    # Started held: the controller is deactivated before anything moves.
    assert spin_until(executor, lambda: graph.activations == [False], timeout=30), (
        episodes.output()
    )
    assert spin_until(executor, graph.pause_client.service_is_ready, timeout=30)
    # Steps while held do not count.
    observations, torques = pendulum_states(12)
    for k in range(3):
        graph.step(observations[k], torques[k], mode='safe')
    response = graph.call(graph.pause_client, graph.SetBool.Request(data=False))
    assert response.success, response.message
    assert graph.activations == [False, True]

    # Five answered steps end an episode of length 5 (the sixth state ends the fifth step):
    # the record is scored with the task's reward, and the operator is asked for a reset.
    for k in range(6):
        graph.step(observations[k], torques[k])
    assert spin_until(executor, lambda: len(graph.episodes) == 1, timeout=15), episodes.output()
    (record,) = graph.episodes
    reward = get_task('pendulum').reward_function()
    expected = reward(observations[:5], torques[:5, None], observations[1:6]).sum()
    assert record['length'] == 5 and record['end'] == 'episode_length'
    assert record['mode'] == 'explore' and record['real_steps'] == 5
    assert record['return'] == pytest.approx(expected, rel=1e-5)
    assert spin_until(executor, lambda: graph.activations[-1] is False, timeout=10)
    assert episodes.wait_for_output('WAITING: operator', timeout=10), episodes.output()
    assert spin_until(
        executor, lambda: 'operator' in watcher.messages.get('/episodes', ''), timeout=10
    ), watcher.messages.get('/episodes')
    # Steps during the reset do not count either.
    for k in range(6, 9):
        graph.step(observations[k], 0.0, mode='safe')
    graph.operator.publish(graph.Empty())
    assert spin_until(executor, lambda: graph.activations[-1] is True, timeout=10), (
        episodes.output()
    )

    # The supervisor's own reset waits for the operator as well, then answers.
    future = graph.reset_client.call_async(graph.Trigger.Request())
    assert episodes.wait_for_output('operator, please reset', timeout=10)
    spin_until(executor, lambda: len(graph.activations) >= 5, timeout=10)
    assert not future.done()
    graph.operator.publish(graph.Empty())
    assert spin_until(executor, future.done, timeout=10), episodes.output()
    assert future.result().success, future.result().message
    assert spin_until(
        executor, lambda: watcher.count('/episodes', 'operator_resets') == 2, timeout=5
    ), watcher.latest.get('/episodes')
    assert watcher.count('/episodes', 'steps') == 5
    assert 'Traceback' not in episodes.output()


def test_simulation_interfaces_pause_and_reset_a_standin_simulator(
    ros_context, start_process, tmp_path
):
    pytest.importorskip('simulation_interfaces')
    import rclpy.node

    context, executor = ros_context
    standin = start_process(
        [sys.executable, str(STANDIN), '--namespace', NAMESPACE], name='standin'
    )
    assert standin.wait_for_output('"event": "ready"', timeout=30), standin.output()
    params = write_params(
        tmp_path / 'episodes.yaml',
        {
            '/**': {'task': 'pendulum', 'episode_length': 4},
            'episodes': {'reset': 'simulation_interfaces', 'simulation_services': NAMESPACE},
        },
    )
    node = rclpy.node.Node('graph_standin', context=context)
    executor.add_node(node)
    graph = GraphStandIn(node, executor)
    episodes = start_process(node_command('episodes', params), name='episodes')
    assert spin_until(executor, graph.pause_client.service_is_ready, timeout=30), episodes.output()

    def calls(service: str) -> list[dict]:
        return [
            json.loads(line)
            for line in standin.output().splitlines()
            if line.startswith('{') and f'"service": "{service}"' in line
        ]

    def last_state() -> int | None:
        # The stand-in prints each call after answering it: its line may come a little later.
        states = calls('set_simulation_state')
        return states[-1]['state'] if states else None

    # Resume: the simulation plays and the controller drives.
    assert graph.call(graph.pause_client, graph.SetBool.Request(data=False)).success
    assert graph.activations[-1] is True
    assert spin_until(executor, lambda: last_state() == 1, timeout=5)  # STATE_PLAYING
    # An episode of 4 steps ends: the simulation is reset through ResetSimulation.
    observations, torques = pendulum_states(6)
    for k in range(5):
        graph.step(observations[k], torques[k])
    assert spin_until(executor, lambda: len(graph.episodes) == 1, timeout=15)
    assert spin_until(executor, lambda: len(calls('reset_simulation')) == 1, timeout=15), (
        standin.output() + episodes.output()
    )
    # Hold: the simulation is paused, really, and the controller holds the safe command.
    assert graph.call(graph.pause_client, graph.SetBool.Request(data=True)).success
    assert spin_until(executor, lambda: last_state() == 2, timeout=5)  # STATE_PAUSED
    assert graph.activations[-1] is False
    # The supervisor's reset while held: reset, still paused afterwards (no call to play).
    state_calls = len(calls('set_simulation_state'))
    response = graph.call(graph.reset_client, graph.Trigger.Request())
    assert response.success, response.message
    assert spin_until(executor, lambda: len(calls('reset_simulation')) == 2, timeout=5)
    spin_until(executor, lambda: False, timeout=0.5)
    assert last_state() == 2 and len(calls('set_simulation_state')) == state_calls
    assert 'Traceback' not in episodes.output()


def test_a_reset_service_that_never_answers_fails_the_reset_with_its_name(
    ros_context, start_process, tmp_path
):
    import rclpy.node

    context, executor = ros_context
    params = write_params(
        tmp_path / 'episodes.yaml',
        {
            '/**': {'task': 'pendulum'},
            'episodes': {
                'reset': 'service',
                'reset_service': '/robot/home',
                'reset_timeout': 1.5,
                'wait_report': 0.5,
            },
        },
    )
    node = rclpy.node.Node('graph_standin', context=context)
    executor.add_node(node)
    graph = GraphStandIn(node, executor)
    episodes = start_process(node_command('episodes', params), name='episodes')
    assert spin_until(executor, graph.reset_client.service_is_ready, timeout=30)
    response = graph.call(graph.reset_client, graph.Trigger.Request())
    assert not response.success
    assert 'took longer than 1.5 s' in response.message, response.message
    assert episodes.wait_for_output('WAITING: the reset service /robot/home', timeout=5)
    # The robot stays held: a failed reset never lets it move.
    assert graph.activations and graph.activations[-1] is False
