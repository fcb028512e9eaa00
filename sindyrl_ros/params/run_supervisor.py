"""Parameters of the run_supervisor node.

What the node does with them: :mod:`sindyrl_ros.nodes.run_supervisor`.
"""

from __future__ import annotations

from sindyrl_ros.params import (
    DIAGNOSTICS_PERIOD_PARAMETER,
    RESUME_PARAMETER,
    SHARED_PARAMETERS,
    WAIT_REPORT_PARAMETER,
    ParamSpec,
)

__all__ = ['PARAMETERS', 'RUN_SUPERVISOR_PARAMETERS']

RUN_SUPERVISOR_PARAMETERS = [
    ParamSpec(
        'run_dir',
        'sindyrl_run',
        'Directory of this run: progress.jsonl and summary.json are written here',
        read_only=True,
    ),
    ParamSpec(
        'budget',
        10_000,
        'Real training steps allowed (evaluation steps are not '
        'counted); the run ends when they are spent',
        range=(1, 1_000_000_000),
        read_only=True,
    ),
    ParamSpec(
        'eval_episodes',
        10,
        'Deterministic episodes per evaluation',
        range=(1, 100_000),
        read_only=True,
    ),
    ParamSpec(
        'eval_every_policy',
        True,
        'Evaluate every new policy; false = only the latest '
        'policy, once, when the budget is spent',
        read_only=True,
    ),
    ParamSpec(
        'stop_at_threshold',
        True,
        'End the run at the first evaluation at or above the threshold; false = go on to '
        'the budget (to see whether the threshold holds; steps_to_threshold keeps the first '
        'crossing)',
        read_only=True,
    ),
    ParamSpec(
        'max_wall_time',
        0.0,
        'Seconds after which the run ends even if neither the '
        'threshold nor the budget is reached; 0 = no limit',
        range=(0.0, 1e9),
        read_only=True,
    ),
    ParamSpec(
        'service_timeout',
        10.0,
        'Seconds to wait for a controller/plant service answer before the run ends with an error',
        range=(0.1, 3600.0),
        read_only=True,
    ),
    ParamSpec(
        'reset_timeout',
        0.0,
        'Seconds to wait for /plant/reset; 0 = as long as the plant takes (every plant bounds '
        'its own reset: the episodes node and the serial bridge have a reset_timeout, and an '
        'operator reset may take minutes)',
        range=(0.0, 1e9),
        read_only=True,
    ),
    WAIT_REPORT_PARAMETER,
    RESUME_PARAMETER,
    ParamSpec(
        'hold_for_policy',
        True,
        'Synchronous Dyna: hold the plant (/plant/pause) after each chunk of exploration '
        'until a policy trained on the new data arrives; false = the plant runs freely '
        'while models and policies are learned',
        read_only=True,
    ),
    ParamSpec(
        'initial_steps',
        200,
        'Real training steps of random exploration before the first hold (ends at an '
        'episode end at or after this many steps)',
        range=(1, 1_000_000_000),
    ),
    ParamSpec(
        'steps_per_iteration',
        200,
        'Real training steps explored with each new policy before the plant is held again '
        '(at an episode end; best a multiple of the model updater refit_every)',
        range=(1, 1_000_000_000),
    ),
    ParamSpec(
        'hold_timeout',
        900.0,
        'Seconds a hold waits for a new policy before exploration goes on anyway; 0 = no limit',
        range=(0.0, 1e9),
    ),
    DIAGNOSTICS_PERIOD_PARAMETER,
]

# Everything this node declares. The threshold is the shared task parameter: the task's
# own unless the /** section gives one.
PARAMETERS = SHARED_PARAMETERS + RUN_SUPERVISOR_PARAMETERS
