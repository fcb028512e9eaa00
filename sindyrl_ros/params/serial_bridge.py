"""Parameters of the serial_bridge node.

What the node does with them: :mod:`sindyrl_ros.nodes.serial_bridge`.
"""

from __future__ import annotations

from sindyrl_ros.params import (
    DIAGNOSTICS_PERIOD_PARAMETER,
    SHARED_PARAMETERS,
    ParamSpec,
)

__all__ = ['PARAMETERS', 'BRIDGE_PARAMETERS']

BRIDGE_PARAMETERS = [
    ParamSpec(
        'port',
        '/dev/ttyACM0',
        'Serial device of the rig; prefer a stable name such as /dev/serial/by-id/...',
        read_only=True,
    ),
    ParamSpec(
        'baud',
        115200,
        'Baud rate (ignored by USB CDC devices)',
        range=(300, 20_000_000),
        read_only=True,
    ),
    ParamSpec(
        'joint_names',
        [],
        'Names of the rig joints, in the order of the STATE frames',
        read_only=True,
        type='STRING_ARRAY',
    ),
    ParamSpec(
        'command_mode',
        'effort',
        'What command values mean for the rig',
        read_only=True,
        choices=('effort', 'velocity', 'position'),
    ),
    ParamSpec(
        'command_low',
        [],
        'Lower limit per command channel; empty: action_low',
        read_only=True,
        type='DOUBLE_ARRAY',
    ),
    ParamSpec(
        'command_high',
        [],
        'Upper limit per command channel; empty: action_high',
        read_only=True,
        type='DOUBLE_ARRAY',
    ),
    ParamSpec(
        'controller_name',
        'effort_controller',
        'Commands are read from /<controller_name>/commands',
        read_only=True,
    ),
    ParamSpec(
        'heartbeat_period',
        0.1,
        'Seconds between HEARTBEAT frames to the rig',
        range=(0.001, 60.0),
        read_only=True,
    ),
    ParamSpec(
        'link_timeout',
        0.5,
        'Seconds without a valid frame after which the link counts as lost (ERROR)',
        range=(0.01, 3600.0),
    ),
    ParamSpec(
        'reconnect_min',
        0.1,
        'Seconds before the first attempt to reopen a lost port',
        range=(0.001, 3600.0),
    ),
    ParamSpec(
        'reconnect_max',
        2.0,
        'Longest wait between attempts to reopen the port (the wait doubles up to it)',
        range=(0.001, 3600.0),
    ),
    ParamSpec(
        'clock_warmup',
        5,
        'Frames used to estimate the rig clock offset before joint states are published',
        range=(1, 1000),
        read_only=True,
    ),
    ParamSpec(
        'clock_slew_ppm',
        1000.0,
        'Fastest rig clock drift the time mapping follows, parts per million',
        range=(0.0, 1e5),
        read_only=True,
    ),
    ParamSpec(
        'start_paused',
        False,
        'Start held, as after /plant/pause true (a run supervisor resumes the rig when it '
        'is ready, so no real step is taken before anyone counts it)',
        read_only=True,
    ),
    ParamSpec(
        'reset_on_connect',
        False,
        'Reset the rig (RESET) each time the port opens: the first episode starts from a '
        'reset like every other',
        read_only=True,
    ),
    ParamSpec(
        'reset_each_episode',
        True,
        'Reset the rig after every episode of episode_length steps, as the simulated plant '
        'resets its environment; false: the next episode goes on from where this one ended',
        read_only=True,
    ),
    ParamSpec(
        'reset_start',
        'random',
        'Start state a RESET asks for: random (drawn by the rig, as a simulator resets; '
        'RANDOM_START) or home (the rig at rest, e.g. the pole hanging down)',
        read_only=True,
        choices=('random', 'home'),
    ),
    ParamSpec(
        'reset_timeout',
        8.0,
        'Seconds a reset may take (homing included) before /plant/reset fails; keep it '
        "below the run supervisor's service_timeout",
        range=(0.01, 3600.0),
    ),
    ParamSpec(
        'reset_retry',
        0.25,
        'Seconds without any sign of a RESET being served before it is sent again',
        range=(0.001, 60.0),
    ),
    ParamSpec(
        'observation_wait',
        1.0,
        'Seconds a step waits for its observations (/sindyrl/observation) before its reward '
        'counts as missing',
        range=(0.001, 3600.0),
    ),
    DIAGNOSTICS_PERIOD_PARAMETER,
]

# Everything this node declares (what a parameter file may set for it).
PARAMETERS = SHARED_PARAMETERS + BRIDGE_PARAMETERS
