"""Parameters of the policy_trainer node.

What the node does with them: :mod:`sindyrl_ros.nodes.policy_trainer`.
"""

from __future__ import annotations

from sindyrl_ros.params import (
    DIAGNOSTICS_PERIOD_PARAMETER,
    RESUME_PARAMETER,
    SHARED_PARAMETERS,
    ParamSpec,
)

__all__ = ['PARAMETERS', 'POLICY_TRAINER_PARAMETERS']

POLICY_TRAINER_PARAMETERS = [
    ParamSpec(
        'run_dir',
        'sindyrl_run',
        'Directory of this run: policies/policy_<version>.json '
        'and sparse_<version>.json are written here',
        read_only=True,
    ),
    ParamSpec(
        'distill_sparse', True, 'Also distil a sparse polynomial policy from each trained network'
    ),
    ParamSpec(
        'deploy_policy',
        'mlp',
        'Which policy is published: the network or the '
        'distilled sparse polynomial (needs distill_sparse)',
        choices=('mlp', 'sparse'),
    ),
    ParamSpec(
        'surrogate_steps_first',
        200_000,
        'Surrogate transitions of SAC training on the first model',
        range=(1, 1_000_000_000),
    ),
    ParamSpec(
        'surrogate_steps_per_model',
        100_000,
        'Surrogate transitions of SAC training on '
        'each later model (the networks are kept: warm start)',
        range=(1, 1_000_000_000),
    ),
    ParamSpec(
        'surrogate_envs', 16, 'Parallel surrogate episodes', range=(1, 100_000), read_only=True
    ),
    ParamSpec(
        'start_noise',
        0.1,
        'Perturbation of the recorded start observations of '
        'surrogate episodes, as a fraction of the observation range',
        range=(0.0, 10.0),
        read_only=True,
    ),
    ParamSpec(
        'sparse_degree',
        3,
        'Lowest top degree tried for the distilled sparse policy (higher degrees are searched '
        'up to the coefficient budget; the sparsest one matching the network is kept)',
        range=(1, 8),
        read_only=True,
    ),
    ParamSpec(
        'sac_hidden',
        [64, 64],
        'Hidden layer widths of the SAC actor and critics',
        range=(1, 4096),
        read_only=True,
    ),
    ParamSpec(
        'sac_activation',
        'relu',
        'Hidden activation of the networks',
        choices=('relu', 'tanh'),
        read_only=True,
    ),
    ParamSpec(
        'sac_batch_size',
        256,
        'Transitions per SAC gradient update',
        range=(1, 1_000_000),
        read_only=True,
    ),
    ParamSpec(
        'sac_learning_starts',
        1000,
        'Surrogate transitions collected before the first update',
        range=(0, 1_000_000_000),
        read_only=True,
    ),
    ParamSpec(
        'sac_updates_per_step',
        1.0,
        'Gradient updates per batched surrogate step',
        range=(0.0, 1000.0),
        read_only=True,
    ),
    ParamSpec(
        'sac_learning_rate',
        1e-3,
        'Adam learning rate of actor, critics and temperature',
        range=(1e-9, 1.0),
        read_only=True,
    ),
    ParamSpec('sac_gamma', 0.99, 'Discount factor', range=(0.0, 1.0), read_only=True),
    ParamSpec(
        'device',
        'auto',
        "torch device: 'auto' (CUDA when available), 'cpu', 'cuda'",
        read_only=True,
    ),
    ParamSpec(
        'training_niceness',
        10,
        'Nice value of the training thread: SAC yields the CPU to the controller and '
        'callbacks (0 = same priority)',
        range=(0, 19),
        read_only=True,
    ),
    ParamSpec(
        'torch_threads',
        1,
        "torch CPU threads while training (leave cores to the robot's nodes)",
        range=(1, 1024),
        read_only=True,
    ),
    ParamSpec(
        'progress_every',
        1000,
        'SAC updates between progress reports in the log and on /diagnostics',
        range=(1, 1_000_000_000),
        read_only=True,
    ),
    ParamSpec(
        'seed',
        0,
        'Seed of networks, replay sampling and surrogate resets',
        range=(0, 2**31 - 1),
        read_only=True,
    ),
    RESUME_PARAMETER,
    DIAGNOSTICS_PERIOD_PARAMETER,
]

# Everything this node declares (what a parameter file may set for it).
PARAMETERS = SHARED_PARAMETERS + POLICY_TRAINER_PARAMETERS
