"""Parameters of the controller node.

What the node does with them: :mod:`sindyrl_ros.nodes.controller`.
"""

from __future__ import annotations

from sindyrl_ros.params import (
    DIAGNOSTICS_PERIOD_PARAMETER,
    SHARED_PARAMETERS,
    WAIT_REPORT_PARAMETER,
    ParamSpec,
)

__all__ = ['PARAMETERS', 'CONTROLLER_PARAMETERS']

CONTROLLER_PARAMETERS = [
    ParamSpec(
        'trigger',
        'observation',
        'observation: answer each observation once (lockstep sim, a rig); timer: fixed-rate '
        'loop at control_rate; stamp: answer the first observation of each control period '
        "by the observations' stamps (a robot whose joint states come faster)",
        read_only=True,
        choices=('observation', 'timer', 'stamp'),
    ),
    ParamSpec(
        'clock',
        'ros',
        'Clock of the timer loop: ros (sim time under use_sim_time) or steady (hardware)',
        read_only=True,
        choices=('ros', 'steady'),
    ),
    ParamSpec(
        'control_rate',
        0.0,
        'Control loop rate in Hz; 0 = 1 / control_period',
        range=(0.0, 10000.0),
        read_only=True,
    ),
    ParamSpec(
        'controller_name',
        'effort_controller',
        'Commands go to /<controller_name>/commands',
        read_only=True,
    ),
    ParamSpec(
        'policy_file',
        '',
        'Policy JSON (core.policies format) loaded at start; empty = wait for /sindyrl/policy',
        read_only=True,
    ),
    ParamSpec(
        'mode',
        'explore',
        'explore: exploration noise (random actions without a '
        'policy); evaluate: deterministic policy',
        choices=('explore', 'evaluate'),
    ),
    ParamSpec(
        'exploration_noise',
        0.1,
        'Explore mode: Gaussian noise standard deviation as a fraction of half the action '
        'range (0.1 on a +-2 limit: 0.2)',
        range=(0.0, 10.0),
    ),
    ParamSpec(
        'rate_limit',
        0.0,
        'Maximum action change per second (action units / s); 0 = no limit',
        range=(0.0, 1e12),
    ),
    ParamSpec(
        'soft_start_time',
        0.5,
        'Seconds over which a newly swapped-in policy is blended in from the previous '
        'command (on the loop clock: observation stamps, ROS or steady time); 0 = jump',
        range=(0.0, 60.0),
    ),
    ParamSpec(
        'observation_timeout',
        0.5,
        'Wall seconds without an observation before the watchdog sends the safe command',
        range=(0.001, 3600.0),
    ),
    ParamSpec(
        'safe_command',
        [],
        'Command sent by the watchdog, e-stop and shutdown; empty = zeros',
        read_only=True,
        type='DOUBLE_ARRAY',
    ),
    ParamSpec(
        'start_active',
        True,
        'false: start deactivated (the safe command on every tick) until ~/activate true; '
        'on a robot the package does not own, the episodes node activates it when the run '
        'supervisor resumes the robot',
        read_only=True,
    ),
    ParamSpec('seed', 0, 'Seed of the exploration noise', range=(0, 2**31 - 1), read_only=True),
    ParamSpec(
        'sanity_check_observations',
        100,
        'Recent observations kept to check a new policy before it is swapped in',
        range=(1, 1_000_000),
        read_only=True,
    ),
    DIAGNOSTICS_PERIOD_PARAMETER,
    WAIT_REPORT_PARAMETER,
]

# Everything this node declares (what a parameter file may set for it).
PARAMETERS = SHARED_PARAMETERS + CONTROLLER_PARAMETERS
