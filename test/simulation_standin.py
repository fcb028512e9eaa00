"""A stand-in simulator offering the ROS 2 standard simulation_interfaces services.

Run it as its own process; it serves, in the node namespace given on the command line,

    reset_simulation      simulation_interfaces/srv/ResetSimulation
    set_simulation_state  simulation_interfaces/srv/SetSimulationState
    get_simulation_state  simulation_interfaces/srv/GetSimulationState
    step_simulation       simulation_interfaces/srv/StepSimulation

The default namespace, /gzserver, gives the names ros_gz_sim's gzserver uses (its node
`gzserver` creates them on a sub-node named after itself: /gzserver/reset_simulation, ...).

It keeps a simulation state (playing, paused, stopped) and a count of simulated steps, and
answers like the specification (simulation_interfaces 2.1.0) and Gazebo's implementation:

- set_simulation_state: STATE_PLAYING, STATE_PAUSED and STATE_STOPPED (pause and reset the
  steps) give RESULT_OK; the state it is already in gives ALREADY_IN_TARGET_STATE (Gazebo
  answers RESULT_OK there); any other state gives RESULT_FEATURE_UNSUPPORTED.
- step_simulation: only when paused (else RESULT_OPERATION_FAILED, as the service's comment
  says); adds `steps` to the step count and stays paused.
- reset_simulation: SCOPE_DEFAULT and SCOPE_ALL set the step count to zero and keep the
  state (as Gazebo does); other scopes give RESULT_FEATURE_UNSUPPORTED.
- get_simulation_state: the state, RESULT_OK.

Every call is printed to stdout as one JSON line, e.g.
{"service": "step_simulation", "calls": 1, "request": {"steps": 5}, "result": 1,
 "error_message": "", "state": 2, "steps": 5, "counts": {...}}; once the services exist it
prints {"event": "ready", "services": [<full names>], "state": 1}.

    python test/simulation_standin.py [--namespace /gzserver] [--name simulation_standin]
        [--initial-state playing|paused|stopped] [--ros-args ...]
"""

from __future__ import annotations

import argparse
import json
import sys

import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from simulation_interfaces.msg import Result, SimulationState
from simulation_interfaces.srv import (
    GetSimulationState,
    ResetSimulation,
    SetSimulationState,
    StepSimulation,
)

STATES = {
    'playing': SimulationState.STATE_PLAYING,
    'paused': SimulationState.STATE_PAUSED,
    'stopped': SimulationState.STATE_STOPPED,
}
UINT32_MAX = 2**32 - 1  # Gazebo's world control takes uint32 steps


class SimulationStandin(Node):
    def __init__(self, name: str, namespace: str, initial_state: int) -> None:
        super().__init__(name, namespace=namespace)
        self.state = initial_state
        self.steps = 0
        self.counts = {
            'reset_simulation': 0,
            'set_simulation_state': 0,
            'get_simulation_state': 0,
            'step_simulation': 0,
        }
        self._services = [
            self.create_service(ResetSimulation, 'reset_simulation', self._on_reset),
            self.create_service(SetSimulationState, 'set_simulation_state', self._on_set),
            self.create_service(GetSimulationState, 'get_simulation_state', self._on_get),
            self.create_service(StepSimulation, 'step_simulation', self._on_step),
        ]
        self._emit(event='ready', services=[s.service_name for s in self._services])

    def _emit(self, **fields) -> None:
        fields['state'] = self.state
        print(json.dumps(fields), flush=True)

    def _answer(self, service: str, request: dict, response, code: int, message: str = ''):
        self.counts[service] += 1
        response.result.result = code
        response.result.error_message = message
        self._emit(
            service=service, calls=self.counts[service], request=request, result=code,
            error_message=message, steps=self.steps, counts=dict(self.counts),
        )
        return response

    def _on_reset(self, request, response):
        if request.scope not in (
            ResetSimulation.Request.SCOPE_DEFAULT, ResetSimulation.Request.SCOPE_ALL
        ):
            return self._answer(
                'reset_simulation', {'scope': request.scope}, response,
                Result.RESULT_FEATURE_UNSUPPORTED,
                'Only reset scopes SCOPE_DEFAULT and SCOPE_ALL are supported',
            )
        self.steps = 0
        return self._answer(
            'reset_simulation', {'scope': request.scope}, response, Result.RESULT_OK
        )

    def _on_set(self, request, response):
        target = request.state.state
        fields = {'state': target}
        if target not in STATES.values():
            return self._answer(
                'set_simulation_state', fields, response, Result.RESULT_FEATURE_UNSUPPORTED,
                'Only the states [STATE_STOPPED, STATE_PAUSED, STATE_PLAYING] are supported',
            )
        if target == self.state:
            return self._answer(
                'set_simulation_state', fields, response,
                SetSimulationState.Response.ALREADY_IN_TARGET_STATE,
                'Simulation is already in the requested state',
            )
        if target == SimulationState.STATE_STOPPED:
            self.steps = 0
        self.state = target
        return self._answer('set_simulation_state', fields, response, Result.RESULT_OK)

    def _on_get(self, request, response):
        response.state.state = self.state
        return self._answer('get_simulation_state', {}, response, Result.RESULT_OK)

    def _on_step(self, request, response):
        fields = {'steps': request.steps}
        if self.state != SimulationState.STATE_PAUSED:
            return self._answer(
                'step_simulation', fields, response, Result.RESULT_OPERATION_FAILED,
                'Simulation has to be paused before stepping',
            )
        if request.steps > UINT32_MAX:
            return self._answer(
                'step_simulation', fields, response, Result.RESULT_OPERATION_FAILED,
                'The requested number of steps exceeds the maximum supported value (max uint32)',
            )
        self.steps += request.steps
        return self._answer('step_simulation', fields, response, Result.RESULT_OK)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--namespace', default='/gzserver', help='node namespace')
    parser.add_argument('--name', default='simulation_standin', help='node name')
    parser.add_argument('--initial-state', choices=sorted(STATES), default='playing')
    args = parser.parse_args(rclpy.utilities.remove_ros_args(argv)[1:])

    rclpy.init(args=argv)
    node = SimulationStandin(args.name, args.namespace, STATES[args.initial_state])
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == '__main__':
    main()
