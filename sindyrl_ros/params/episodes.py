"""Parameters of the episodes node.

What the node does with them: :mod:`sindyrl_ros.nodes.episodes`.
"""

from __future__ import annotations

from sindyrl_ros.params import (
    DIAGNOSTICS_PERIOD_PARAMETER,
    SHARED_PARAMETERS,
    WAIT_REPORT_PARAMETER,
    ParamSpec,
)

__all__ = ['PARAMETERS', 'EPISODES_PARAMETERS', 'PROVIDERS']

PROVIDERS = ('service', 'settle', 'operator', 'simulation_interfaces', 'none')

EPISODES_PARAMETERS = [
    ParamSpec(
        'reset',
        'operator',
        'How the robot is reset after each episode and on /plant/reset: service (its own '
        'std_srvs/Trigger, reset_service), settle (hold the safe command until '
        'settle_features are still), operator (a person; Enter or /sindyrl/operator_ready), '
        'simulation_interfaces (the simulator standard services), none (it resets itself)',
        read_only=True,
        choices=PROVIDERS,
    ),
    ParamSpec(
        'reset_service',
        '/reset',
        'reset service: the std_srvs/Trigger service that resets (homes) the robot',
        read_only=True,
    ),
    ParamSpec(
        'simulation_services',
        '',
        'simulation_interfaces reset: namespace of the simulator services (reset_simulation, '
        "set_simulation_state); '' = the root namespace, e.g. /gzserver for ros_gz_sim",
        read_only=True,
    ),
    ParamSpec(
        'reset_timeout',
        30.0,
        'Seconds a reset may take before it fails (and the run ends with an error); 0 = no '
        'limit (the operator provider waits for a person)',
        range=(0.0, 86400.0),
        read_only=True,
    ),
    ParamSpec(
        'reset_hold',
        0.0,
        'Seconds the safe command is held after a reset (a plant that resets itself while '
        'its host is idle, or one that must come to rest)',
        range=(0.0, 3600.0),
        read_only=True,
    ),
    ParamSpec(
        'settle_features',
        [],
        'settle reset: observation names whose absolute value must stay below '
        'settle_tolerance (e.g. [theta_dot])',
        read_only=True,
        type='STRING_ARRAY',
    ),
    ParamSpec(
        'settle_tolerance',
        0.05,
        'settle reset: largest absolute value of each settle feature that counts as still',
        range=(1e-9, 1e9),
        read_only=True,
    ),
    ParamSpec(
        'settle_time',
        1.0,
        'settle reset: seconds the settle features must stay still',
        range=(0.0, 3600.0),
        read_only=True,
    ),
    ParamSpec(
        'start_paused',
        True,
        'Hold the robot (the controller on its safe command) until the run supervisor resumes it',
        read_only=True,
    ),
    ParamSpec(
        'observation_wait',
        1.0,
        'Seconds a step waits for its observations (and a reported reward) before its '
        'reward counts as missing',
        range=(0.01, 3600.0),
        read_only=True,
    ),
    ParamSpec(
        'gap_factor',
        1.5,
        'A step longer than gap_factor control periods is no step (a silent sensor or '
        'controller breaks the episode data)',
        range=(1.0, 100.0),
        read_only=True,
    ),
    ParamSpec(
        'controller_service',
        '/controller/activate',
        'The controller std_srvs/SetBool that deactivates (safe command) and activates it',
        read_only=True,
    ),
    ParamSpec(
        'service_timeout',
        5.0,
        'Seconds to wait for the controller or simulator to answer a call',
        range=(0.1, 3600.0),
        read_only=True,
    ),
    WAIT_REPORT_PARAMETER,
    DIAGNOSTICS_PERIOD_PARAMETER,
]

PARAMETERS = SHARED_PARAMETERS + EPISODES_PARAMETERS
