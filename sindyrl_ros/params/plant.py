"""Parameters of the plant node.

What the node does with them: :mod:`sindyrl_ros.nodes.plant`.
"""

from __future__ import annotations

from sindyrl_ros.params import (
    DIAGNOSTICS_PERIOD_PARAMETER,
    SHARED_PARAMETERS,
    ParamSpec,
)

__all__ = ['PARAMETERS', 'PLANT_PARAMETERS']

PLANT_PARAMETERS = [
    ParamSpec(
        'mode',
        'lockstep',
        'lockstep: step when the command for the latest state '
        'arrives (deterministic); realtime: step on a wall-clock timer',
        read_only=True,
        choices=('lockstep', 'realtime'),
    ),
    ParamSpec(
        'seed',
        0,
        'Seed of the first environment reset (episodes follow from it)',
        range=(0, 2**31 - 1),
        read_only=True,
    ),
    ParamSpec(
        'controller_name',
        'effort_controller',
        'Commands are read from /<controller_name>/commands',
        read_only=True,
    ),
    ParamSpec(
        'joint_names',
        [],
        'Joint names published on /joint_states',
        read_only=True,
        type='STRING_ARRAY',
    ),
    ParamSpec(
        'joint_positions',
        [],
        'Per joint: the observation name giving its position, or '
        'atan2(<sin name>, <cos name>) for an angle seen as cos/sin',
        read_only=True,
        type='STRING_ARRAY',
    ),
    ParamSpec(
        'joint_velocities',
        [],
        'Per joint: the observation name giving its velocity '
        '(empty list: no velocities published)',
        read_only=True,
        type='STRING_ARRAY',
    ),
    ParamSpec(
        'lockstep_timeout',
        1.0,
        'Lockstep: wall seconds without a command before the state is published again',
        range=(0.01, 3600.0),
    ),
    ParamSpec(
        'wait_for_controller',
        True,
        'Lockstep: publish the first state only once '
        '/joint_states has a subscriber and the commands topic a publisher',
        read_only=True,
    ),
    ParamSpec(
        'start_paused',
        False,
        'Start held, as after /plant/pause true: the first state is published on resume '
        '(for a run supervisor that resumes the plant when it is ready)',
        read_only=True,
    ),
    ParamSpec(
        'command_timeout',
        0.0,
        'Realtime: wall seconds after which the last command is '
        'considered missing (zero command applied); 0 = two control periods',
        range=(0.0, 3600.0),
    ),
    ParamSpec(
        'reset_time_gap',
        1.0,
        'Simulated seconds added at each reset, so episodes are separated by a time gap',
        range=(0.0, 1e6),
        read_only=True,
    ),
    DIAGNOSTICS_PERIOD_PARAMETER,
]

# Everything this node declares (what a parameter file may set for it).
PARAMETERS = SHARED_PARAMETERS + PLANT_PARAMETERS
