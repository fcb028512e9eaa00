"""Parameters of the model_updater node.

What the node does with them: :mod:`sindyrl_ros.nodes.model_updater`.
"""

from __future__ import annotations

from sindyrl_ros.params import (
    DIAGNOSTICS_PERIOD_PARAMETER,
    RESUME_PARAMETER,
    SHARED_PARAMETERS,
    ParamSpec,
)

__all__ = ['PARAMETERS', 'MODEL_UPDATER_PARAMETERS']

MODEL_UPDATER_PARAMETERS = [
    ParamSpec(
        'run_dir',
        'sindyrl_run',
        'Directory of this run: the MCAP recording (recording/) and '
        'models/model_<version>.json are written here',
        read_only=True,
    ),
    RESUME_PARAMETER,
    ParamSpec(
        'initial_log',
        '',
        'Recording to load at start-up, fit and publish from: an .mcap file or a recording '
        "directory (<run>/recording) of another run; copied into this run's recording as "
        'sessions of their own; empty = start without data',
        read_only=True,
    ),
    ParamSpec(
        'refit_every',
        200,
        'New exploration transitions between two model fits '
        '(the first fit waits for this many too)',
        range=(1, 1_000_000_000),
    ),
    ParamSpec(
        'max_validation_error',
        0.5,
        'Largest held-out multi-step rollout NRMSE of an '
        'accepted model; a worse or diverging model is rejected, never published',
        range=(0.0, 1e9),
    ),
    ParamSpec(
        'validation_horizon', 50, 'Steps of each held-out rollout window', range=(1, 1_000_000)
    ),
    ParamSpec(
        'validation_fraction',
        0.25,
        'Tail fraction of each trajectory held out for validation',
        range=(0.0, 0.9),
    ),
    ParamSpec(
        'library_degree', 3, 'Largest total polynomial degree of the candidate terms', range=(1, 8)
    ),
    ParamSpec(
        'library_control',
        'affine',
        'How actions enter the model: full polynomial, '
        'control-affine f(x) + g(x) u, linear f(x) + B u, or not at all',
        choices=('full', 'affine', 'linear', 'none'),
    ),
    ParamSpec(
        'library_circle_reduction',
        True,
        'Keep sin of a (cos, sin) angle pair only to '
        'the first power (removes the collinearity cos^2 + sin^2 = 1)',
    ),
    ParamSpec('ensemble_models', 20, 'E-SINDy ensemble members', range=(1, 10_000)),
    ParamSpec(
        'stlsq_threshold',
        0.001,
        'STLSQ threshold: smaller coefficients are zeroed',
        range=(0.0, 1e6),
    ),
    ParamSpec('ridge_alpha', 1e-5, 'Ridge regularisation of each STLSQ step', range=(0.0, 1e6)),
    ParamSpec('bagging', True, 'Fit each ensemble member on a bootstrap resample'),
    ParamSpec('library_ensemble', True, 'Drop one random candidate term per ensemble member'),
    ParamSpec(
        'aggregate', 'median', 'How member coefficients are combined', choices=('median', 'mean')
    ),
    ParamSpec(
        'reward_library_degree',
        2,
        "Largest polynomial degree of the learned reward's candidate terms (a task with "
        "reward 'learned')",
        range=(1, 8),
    ),
    ParamSpec(
        'reward_stlsq_threshold',
        0.01,
        'Learned reward: a term is dropped when its coefficient, on unit-RMS features, is '
        'below this fraction of the reward standard deviation',
        range=(0.0, 1e6),
    ),
    ParamSpec(
        'reward_observation',
        'auto',
        'Learned reward: whether it is a function of the observation before the step '
        '(current), after it (next), or whichever of the two fits the rewards better (auto)',
        choices=('auto', 'current', 'next'),
    ),
    ParamSpec(
        'n_start_observations',
        256,
        'Recorded observations sent with the model for starting surrogate episodes',
        range=(1, 1_000_000),
    ),
    ParamSpec(
        'gap_factor',
        1.5,
        'A step between observation stamps longer than this many '
        'control periods splits the trajectory',
        range=(1.0, 1000.0),
        read_only=True,
    ),
    ParamSpec(
        'max_observation_jump',
        0.25,
        'A change of an observation feature larger than '
        'this fraction of its task range in one step is a plant reset and splits the '
        'trajectory; 0 disables',
        range=(0.0, 100.0),
        read_only=True,
    ),
    ParamSpec(
        'fit_niceness',
        10,
        'Nice value of the fit worker: fits yield the CPU to the controller and callbacks '
        '(0 = same priority)',
        range=(0, 19),
        read_only=True,
    ),
    ParamSpec(
        'fit_worker',
        'process',
        'Where fits run: a separate process (callbacks never wait for the GIL) or a thread',
        read_only=True,
        choices=('process', 'thread'),
    ),
    ParamSpec(
        'flush_period',
        1.0,
        'Seconds between flushes of the recording to disk',
        range=(0.01, 3600.0),
        read_only=True,
    ),
    ParamSpec(
        'segment_seconds',
        30.0,
        'Seconds of recording per MCAP segment: at a flush an older segment is closed '
        '(complete, with its index), so a crash leaves at most the open one to repair',
        range=(0.1, 86400.0),
        read_only=True,
    ),
    ParamSpec(
        'seed',
        0,
        'Seed of the ensemble resampling and of the start observation draw',
        range=(0, 2**31 - 1),
    ),
    DIAGNOSTICS_PERIOD_PARAMETER,
]

# Everything this node declares (what a parameter file may set for it).
PARAMETERS = SHARED_PARAMETERS + MODEL_UPDATER_PARAMETERS
