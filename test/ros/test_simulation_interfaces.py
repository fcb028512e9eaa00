"""The simulation_interfaces services (as Gazebo, Isaac Sim and O3DE offer them) across DDS.

test/simulation_standin.py runs as a separate process standing in for the simulator; this
test process calls its four services and checks the answers and the state they change. In
the pip-wheels venv simulation_interfaces is built by tools/build_interfaces.sh; in a ROS 2
distro it comes from ros-$ROS_DISTRO-simulation-interfaces.
"""

import json
from pathlib import Path
import sys

import pytest
from ros_testing import spin_until

pytestmark = pytest.mark.ros

STANDIN = Path(__file__).resolve().parents[1] / 'simulation_standin.py'
NAMESPACE = '/sim_test/gzserver'


def _records(process) -> list[dict]:
    records = []
    for line in process.output().splitlines():
        if line.startswith('{'):
            records.append(json.loads(line))
    return records


# RIHS01 type hashes of simulation_interfaces 2.1.0 (ros-simulation/simulation_interfaces@172a1b1)
# from a build of the whole upstream package; equal in every release since 1.1.0, since these
# six definitions have not changed. A simulator built from upstream advertises the same.
UPSTREAM_HASHES = {
    'ResetSimulation_Request': '2c766d09c3aa30f01fadc55a42fd760b63db358c7d1d3b6a64ea9978225ffbc7',
    'ResetSimulation_Response': '718428121e0f1755720878d3c28f1688da7581ee5a5d56d26d10d941a28a50a0',
    'SetSimulationState_Request': (
        '73283477d36ba619db2ac37a3e599077ca244502c9d8ca2a7183afcb2224f476'
    ),
    'SetSimulationState_Response': (
        '6351aebf2bbf06e2993977918b944240f7403b532a9e4a344c53e71a56afd174'
    ),
    'GetSimulationState_Request': (
        'c6d65bc5c0a95ca2886bc57f146f803e01722c84ddb5acd5f32a4417f55eecfb'
    ),
    'GetSimulationState_Response': (
        'dc80ce852a5ab04c2b23cdd47910cee1bcc46e0f1931cac85825e6916b15517f'
    ),
    'StepSimulation_Request': 'cda33f6887815f3dce0f90e61fd8efd39bda13ae264ddede15c33fbad890630e',
    'StepSimulation_Response': '5b4acf2d0ce7c3fc125d0bef2acb9b5a81377e80db6b696b81beeffb9824fb5c',
}


def test_constants_match_the_specification():
    pytest.importorskip('simulation_interfaces')
    from simulation_interfaces.msg import Result, SimulationState
    from simulation_interfaces.srv import ResetSimulation, SetSimulationState, StepSimulation

    assert (Result.RESULT_FEATURE_UNSUPPORTED, Result.RESULT_OK, Result.RESULT_NOT_FOUND,
            Result.RESULT_INCORRECT_STATE, Result.RESULT_OPERATION_FAILED) == (0, 1, 2, 3, 4)
    assert (SimulationState.STATE_STOPPED, SimulationState.STATE_PLAYING,
            SimulationState.STATE_PAUSED, SimulationState.STATE_QUITTING,
            SimulationState.STATE_NO_WORLD, SimulationState.STATE_LOADING_WORLD) == tuple(range(6))
    assert (SetSimulationState.Response.ALREADY_IN_TARGET_STATE,
            SetSimulationState.Response.STATE_TRANSITION_ERROR,
            SetSimulationState.Response.INCORRECT_TRANSITION) == (101, 102, 103)
    request = ResetSimulation.Request
    assert (request.SCOPE_DEFAULT, request.SCOPE_TIME, request.SCOPE_STATE, request.SCOPE_SPAWNED,
            request.SCOPE_ALL) == (0, 1, 2, 4, 255)
    assert ResetSimulation.Request().scope == request.SCOPE_DEFAULT
    assert StepSimulation.Request().steps == 1


def test_calls_to_a_standin_simulator(ros_context, start_process):
    pytest.importorskip('simulation_interfaces')
    import rclpy.node
    from simulation_interfaces.msg import Result, SimulationState
    from simulation_interfaces.srv import (
        GetSimulationState,
        ResetSimulation,
        SetSimulationState,
        StepSimulation,
    )

    context, executor = ros_context
    standin = start_process(
        [sys.executable, str(STANDIN), '--namespace', NAMESPACE], name='standin'
    )
    assert standin.wait_for_output('"event": "ready"', timeout=30), standin.output()
    ready = _records(standin)[0]
    assert ready['services'] == [
        f'{NAMESPACE}/{name}' for name in (
            'reset_simulation', 'set_simulation_state', 'get_simulation_state', 'step_simulation'
        )
    ]

    node = rclpy.node.Node('simulation_client', context=context)
    executor.add_node(node)
    clients = {
        'reset': node.create_client(ResetSimulation, f'{NAMESPACE}/reset_simulation'),
        'set': node.create_client(SetSimulationState, f'{NAMESPACE}/set_simulation_state'),
        'get': node.create_client(GetSimulationState, f'{NAMESPACE}/get_simulation_state'),
        'step': node.create_client(StepSimulation, f'{NAMESPACE}/step_simulation'),
    }
    assert spin_until(
        executor, lambda: all(c.service_is_ready() for c in clients.values()), timeout=30
    ), 'stand-in services never discovered'

    # What the stand-in advertises over DDS carries the upstream type hashes.
    advertised = {}
    for service in ready['services']:
        for topic in (f'rq{service}Request', f'rr{service}Reply'):
            for info in node.get_subscriptions_info_by_topic(topic, no_mangle=True) + (
                node.get_publishers_info_by_topic(topic, no_mangle=True)
            ):
                name = info.topic_type.rsplit('::', 1)[-1].rstrip('_')
                advertised[name] = str(info.topic_type_hash)
    assert advertised == {k: f'RIHS01_{v}' for k, v in UPSTREAM_HASHES.items()}

    def call(kind: str, request):
        future = clients[kind].call_async(request)
        assert spin_until(executor, future.done, timeout=10), f'{kind}: no answer'
        return future.result()

    def set_state(state: int) -> int:
        request = SetSimulationState.Request()
        request.state.state = state
        return call('set', request).result.result

    def get_state() -> int:
        response = call('get', GetSimulationState.Request())
        assert response.result.result == Result.RESULT_OK
        return response.state.state

    assert get_state() == SimulationState.STATE_PLAYING
    response = call('step', StepSimulation.Request(steps=3))
    assert response.result.result == Result.RESULT_OPERATION_FAILED
    assert 'paused' in response.result.error_message

    assert set_state(SimulationState.STATE_PAUSED) == Result.RESULT_OK
    assert get_state() == SimulationState.STATE_PAUSED
    assert set_state(SimulationState.STATE_PAUSED) == (
        SetSimulationState.Response.ALREADY_IN_TARGET_STATE
    )
    assert call('step', StepSimulation.Request(steps=5)).result.result == Result.RESULT_OK
    assert call('step', StepSimulation.Request()).result.result == Result.RESULT_OK
    assert _records(standin)[-1]['steps'] == 6

    response = call('reset', ResetSimulation.Request(scope=ResetSimulation.Request.SCOPE_TIME))
    assert response.result.result == Result.RESULT_FEATURE_UNSUPPORTED
    response = call('reset', ResetSimulation.Request())
    assert response.result.result == Result.RESULT_OK
    assert _records(standin)[-1]['steps'] == 0
    assert get_state() == SimulationState.STATE_PAUSED  # a reset keeps the state

    assert set_state(SimulationState.STATE_QUITTING) == Result.RESULT_FEATURE_UNSUPPORTED
    assert set_state(SimulationState.STATE_STOPPED) == Result.RESULT_OK
    assert get_state() == SimulationState.STATE_STOPPED
    assert call('step', StepSimulation.Request()).result.result == (
        Result.RESULT_OPERATION_FAILED
    )
    assert set_state(SimulationState.STATE_PLAYING) == Result.RESULT_OK
    assert get_state() == SimulationState.STATE_PLAYING

    calls = [r for r in _records(standin) if 'service' in r]
    assert [r['service'] for r in calls].count('step_simulation') == 4
    assert calls[-1]['counts'] == {
        'reset_simulation': 2,
        'set_simulation_state': 5,
        'get_simulation_state': 5,
        'step_simulation': 4,
    }
    assert standin.alive(), standin.output()
    node.destroy_node()
