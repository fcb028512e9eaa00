"""One model fit of the model updater: the request, the fit and its card, and its report.

The model updater pairs the plant's messages into transitions by stamp and, every
``refit_every`` new exploration transitions (:mod:`sindyrl_ros.core.refit_schedule`),
sends a fit request (:func:`fit_request`) to a worker process
(:mod:`sindyrl_ros.core.fit_worker`), so that a fit of a second or more never delays the
recording of the plant's messages. The worker runs :func:`fit_model`: E-SINDy
fitted and validated on multi-step rollouts over held-out trajectory tails
(:func:`~sindyrl_ros.core.dyna.fit_dynamics`); only an accepted model is published, as the
card :func:`fit_model` assembles.

Only transitions answered in ``explore`` mode train the model; ``evaluate`` episodes are
recorded with their mode but left out of every fit, because they are for reporting.

When the task's reward is ``learned``, every fit also fits a sparse polynomial reward
model on the rewarded exploration transitions (:func:`fit_reward_model`) and sends it in
the card (``reward_model``), so the policy trainer can score surrogate steps.

Requests and results are plain dicts of numbers and arrays: they cross a process boundary.
"""

from __future__ import annotations

from collections.abc import Sequence
import json
import time
import traceback
from typing import Any

import numpy as np

from sindyrl_ros.core.reward import LEARNED_REWARD
from sindyrl_ros.core.serialization import json_safe
from sindyrl_ros.core.transitions import EXPLORE

__all__ = [
    'fit_model',
    'fit_request',
    'fit_reward_model',
    'fit_settings',
    'model_summary',
    'rejection_reason',
    'reward_settings',
    'validated_on',
]


def fit_settings(parameters: Any) -> dict:
    """The :class:`~sindyrl_ros.core.dyna.DynaConfig` fields of a fit, from node parameters.

    Parameters
    ----------
    parameters : object
        The model updater's parameter values as attributes (the names of
        :mod:`sindyrl_ros.params.model_updater`).

    Returns
    -------
    dict
        ``library`` and ``ensemble`` (their ``from_dict`` forms), validation settings and
        ``n_start_observations``.
    """
    p = parameters
    return {
        'library': {
            'degree': p.library_degree,
            'include_bias': True,
            'control': p.library_control,
            'circle_reduction': p.library_circle_reduction,
        },
        'ensemble': {
            'n_models': p.ensemble_models,
            'threshold': p.stlsq_threshold,
            'alpha': p.ridge_alpha,
            'bagging': p.bagging,
            'library_ensemble': p.library_ensemble,
            'aggregate': p.aggregate,
            'seed': p.seed,
        },
        'validation_horizon': p.validation_horizon,
        'validation_fraction': p.validation_fraction,
        'max_validation_error': p.max_validation_error,
        'n_start_observations': p.n_start_observations,
    }


def reward_settings(parameters: Any) -> dict:
    """The settings of :func:`fit_reward_model`, from the model updater's parameters."""
    return {
        'degree': parameters.reward_library_degree,
        'threshold': parameters.reward_stlsq_threshold,
        'observation': parameters.reward_observation,
    }


def fit_request(task, transitions, parameters: Any, model_version: int) -> dict:
    """What the worker needs to fit model ``model_version`` on the exploration transitions.

    Parameters
    ----------
    task : TaskSpec
    transitions : SessionTransitions or TransitionAssembler
        The run's paired transitions; its ``explore`` trajectories are fitted on (and,
        for a task that learns its reward, its rewarded ones too).
    parameters : object
        The model updater's parameter values (see :func:`fit_settings`).
    model_version : int
        Version the model gets if it is accepted.

    Returns
    -------
    dict
        The request :func:`fit_model` takes: ``trajectories`` holds (observations (T+1, n),
        actions (T, m), times (T+1,)) per trajectory, ``reward_trajectories`` (only for a
        learned reward) (observations, actions, rewards (T,)).
    """
    trajectories = transitions.trajectories(modes=(EXPLORE,))
    request = {
        'task': task.to_dict(),
        'config': fit_settings(parameters),
        'trajectories': [(t.observations, t.actions, t.times) for t in trajectories],
        'model_version': int(model_version),
        'n_start_observations': parameters.n_start_observations,
        'seed': parameters.seed,
    }
    if task.reward == LEARNED_REWARD:
        rewarded = transitions.trajectories(modes=(EXPLORE,), rewards=True)
        request['reward_trajectories'] = [(t.observations, t.actions, t.rewards) for t in rewarded]
        request['reward_config'] = reward_settings(parameters)
    return request


def fit_model(request: dict) -> dict:
    """Fit and validate one model; runs in the worker (a plain function: it is pickled).

    Parameters
    ----------
    request : dict
        ``task`` (TaskSpec dict), ``config`` (DynaConfig fields), ``trajectories`` (list of
        (observations (T+1, n), actions (T, m), times (T+1,))), ``model_version``,
        ``n_start_observations``, ``seed``; for a task whose reward is learned also
        ``reward_trajectories`` (list of (observations (T+1, n), actions (T, m), rewards
        (T,))) and ``reward_config`` (``degree``, ``threshold``, ``observation``).

    Returns
    -------
    dict
        ``card`` (the model card: the model's dict plus ``model_version``, ``validation``,
        ``start_observations``, ``task``, ``transitions``, ``trajectories``,
        ``fit_time_s``), ``accepted``, ``validation``, ``fit_time_s`` and
        ``model_version``; or ``error`` (text) and ``traceback`` if the fit failed. A
        learned reward goes into the card as ``reward_model``
        (``SparseRewardModel.to_dict()``).
    """
    # Imported here: the node that builds requests need not load torch (core.dyna does).
    from sindyrl_ros.core.dyna import DynaConfig, fit_dynamics, sample_start_observations
    from sindyrl_ros.core.dynamics_fit import EnsembleConfig
    from sindyrl_ros.core.library import LibraryConfig
    from sindyrl_ros.core.tasks import TaskSpec
    from sindyrl_ros.core.trajectories import Trajectory

    started = time.perf_counter()
    try:
        task = TaskSpec.from_dict(request['task'])
        settings = dict(request['config'])
        config = DynaConfig(
            library=LibraryConfig.from_dict(settings.pop('library')),
            ensemble=EnsembleConfig.from_dict(settings.pop('ensemble')),
            **settings,
        )
        trajectories = [
            Trajectory(observations, actions, times=times)
            for observations, actions, times in request['trajectories']
        ]
        version = int(request['model_version'])
        model, validation, accepted = fit_dynamics(task, trajectories, config, version)
        rng = np.random.default_rng(int(request['seed']) + version)
        starts = sample_start_observations(trajectories, int(request['n_start_observations']), rng)
        card = model.to_dict()
        card['model_version'] = version
        card['validation'] = json_safe(validation)
        card['start_observations'] = starts.tolist()
        card['task'] = task.name
        card['transitions'] = int(sum(t.n_steps for t in trajectories))
        card['trajectories'] = len(trajectories)
        fit_time = time.perf_counter() - started
        if task.reward == LEARNED_REWARD:
            card['reward_model'] = fit_reward_model(
                task,
                request.get('reward_trajectories', []),
                request.get('reward_config', {}),
            ).to_dict()
            fit_time = time.perf_counter() - started
        card['fit_time_s'] = fit_time
        json.dumps(card, allow_nan=False)  # a card that cannot be published is a failed fit
        return {
            'card': card,
            'accepted': bool(accepted),
            'validation': card['validation'],
            'fit_time_s': fit_time,
            'model_version': version,
        }
    except Exception as error:  # reported by the node; the worker keeps serving
        return {
            'error': f'{type(error).__name__}: {error}',
            'traceback': traceback.format_exc(),
            'fit_time_s': time.perf_counter() - started,
            'model_version': request.get('model_version'),
        }


def fit_reward_model(task, reward_trajectories: Sequence, settings: dict):
    """Fit the sparse polynomial reward of a task that learns its reward.

    Parameters
    ----------
    task : TaskSpec
    reward_trajectories : sequence of (observations (T+1, n), actions (T, m), rewards (T,))
        Rewarded exploration transitions.
    settings : dict
        ``degree`` (library degree, default 2), ``threshold`` (relative STLSQ threshold,
        default 0.01), ``observation``: ``'current'``, ``'next'`` or ``'auto'`` (fit both,
        keep the one with the smaller error).

    Returns
    -------
    SparseRewardModel

    Raises
    ------
    ValueError
        If no reward was reported for any exploration transition.
    """
    from sindyrl_ros.core.library import LibraryConfig
    from sindyrl_ros.core.reward import SparseRewardModel
    from sindyrl_ros.core.trajectories import Trajectory

    trajectories = [
        Trajectory(observations, actions, rewards)
        for observations, actions, rewards in reward_trajectories
    ]
    if not any(t.n_steps for t in trajectories):
        raise ValueError(
            f'task {task.name} learns its reward, but no reward was reported on '
            '/sindyrl/reward for any exploration transition (the plant publishes them)'
        )
    observation = settings.get('observation', 'auto')
    choices = ('current', 'next') if observation == 'auto' else (observation,)
    models = [
        SparseRewardModel(
            task.observation_names,
            task.action_names,
            library=LibraryConfig(degree=int(settings.get('degree', 2)), control='full'),
            angle_pairs=task.angle_pairs,
            threshold=float(settings.get('threshold', 0.01)),
            observation=choice,
        ).fit(trajectories)
        for choice in choices
    ]
    return min(models, key=lambda model: model.fit_info['rmse'])


# --------------------------------------------------------------------------- reports


def _fmt(value: Any) -> str:
    return f'{value:.4g}' if isinstance(value, float) else str(value)


def validated_on(validation: dict) -> str:
    """What the rollout error was measured on: held-out tails, or (episodes too short to
    hold anything out) the data the model was fitted on."""
    return 'held-out' if validation.get('held_out', True) else 'fitting-data (nothing held out)'


def rejection_reason(result: dict, max_validation_error: float) -> str:
    """Why a fit's candidate model was rejected (``result`` from :func:`fit_model`)."""
    validation = result['validation']
    return (
        f'candidate model rejected: {validated_on(validation)} rollout NRMSE '
        f'{validation.get("nrmse")} (max {max_validation_error}), diverged '
        f'{validation.get("diverged")}, {result["card"]["transitions"]} transitions'
    )


def model_summary(result: dict) -> str:
    """One line on an accepted model: validation, size, data, fit time and its equations.

    Parameters
    ----------
    result : dict
        An accepted fit's result, from :func:`fit_model`.
    """
    card, validation = result['card'], result['validation']
    equations = '; '.join(card.get('equations', []))
    reward_model = card.get('reward_model')
    if reward_model is not None:
        fit = reward_model.get('fit_info', {})
        equations += (
            f'; learned {reward_model.get("equation")} (RMSE {_fmt(fit.get("rmse"))} on '
            f'{fit.get("n_samples")} rewards of std {_fmt(fit.get("reward_std"))})'
        )
    return (
        f'model {result["model_version"]} published: {validated_on(validation)} NRMSE '
        f'{_fmt(validation.get("nrmse"))}, {card.get("n_nonzero")} terms, '
        f'{card["transitions"]} transitions, fit {result["fit_time_s"]:.2f} s: {equations}'
    )
