"""A model updater's fit without ROS: request from paired transitions, real E-SINDy fits."""

import dataclasses
import json
from types import SimpleNamespace

import numpy as np
from pendulum_data import pendulum_episode
import pytest

from sindyrl_ros.core.dynamics import SindyDynamics
from sindyrl_ros.core.model_fitting import (
    fit_model,
    fit_request,
    fit_reward_model,
    fit_settings,
    model_summary,
    rejection_reason,
)
from sindyrl_ros.core.reward import SparseRewardModel
from sindyrl_ros.core.session_replay import transition_assembler
from sindyrl_ros.core.tasks import get_task
from sindyrl_ros.core.transitions import SessionTransitions
from sindyrl_ros.params.model_updater import PARAMETERS

TASK = get_task('pendulum')
DT_NS = 50_000_000  # Pendulum-v1's control period


def parameters(**values):
    """The model updater's parameter values: the declared defaults, some replaced."""
    defaults = {spec.name: spec.default for spec in PARAMETERS}
    return SimpleNamespace(**{**defaults, **values})




def paired(episodes, task=TASK):
    """One live session holding the episodes, 1 s apart, as the updater pairs messages."""
    assembler = transition_assembler(task)
    start = 10**9
    for (observations, actions, rewards), mode in episodes:
        for k, observation in enumerate(observations):
            assembler.add_observation(start + k * DT_NS, observation)
            if k < len(actions):
                assembler.add_action(start + k * DT_NS, actions[k], mode)
                if rewards is not None and k < len(rewards):
                    assembler.add_reward(start + k * DT_NS, rewards[k])
        start += (len(observations) + 20) * DT_NS
    return SessionTransitions(assembler)


def test_a_request_holds_only_exploration_trajectories_and_the_parameters():
    first, second, evaluation = (pendulum_episode(seed, 120) for seed in (0, 1, 2))
    transitions = paired([(first, 'explore'), (evaluation, 'evaluate'), (second, 'explore')])
    p = parameters(ensemble_models=7, library_degree=2, seed=3)
    request = fit_request(TASK, transitions, p, model_version=4)
    assert request['model_version'] == 4 and request['seed'] == 3
    assert request['task'] == TASK.to_dict()
    assert request['config'] == fit_settings(p)
    assert request['config']['ensemble']['n_models'] == 7
    assert request['config']['library']['degree'] == 2
    assert [len(actions) for _, actions, _ in request['trajectories']] == [120, 120]
    observations, actions, times = request['trajectories'][1]
    np.testing.assert_array_equal(observations, second[0])
    np.testing.assert_array_equal(actions, second[1])
    np.testing.assert_allclose(np.diff(times), 0.05)
    assert 'reward_trajectories' not in request  # the task's reward is known


def test_a_fit_of_real_pendulum_data_is_accepted_with_a_publishable_card():
    episodes = [(pendulum_episode(seed, 150), 'explore') for seed in (0, 1)]
    request = fit_request(TASK, paired(episodes), parameters(ensemble_models=10), 1)
    result = fit_model(request)
    assert 'error' not in result, result.get('traceback')
    assert result['accepted'] and result['model_version'] == 1
    card = result['card']
    json.dumps(card, allow_nan=False)
    assert card['transitions'] == 300 and card['trajectories'] == 2
    assert card['model_version'] == 1 and card['task'] == 'pendulum'
    assert np.asarray(card['start_observations']).shape == (256, 3)
    assert card['validation'] == result['validation'] and result['validation']['held_out']
    # The physics: theta_dot[k+1] ≈ theta_dot[k] + 0.15 torque (3/(m l^2) dt).
    model = SindyDynamics.from_dict(card)
    observations, actions, _ = episodes[0][0]
    np.testing.assert_allclose(
        model.predict(observations[:-1], actions), observations[1:], atol=0.05
    )
    summary = model_summary(result)
    assert summary.startswith('model 1 published: held-out NRMSE')
    assert '300 transitions' in summary and 'theta_dot[k+1]' in summary


def test_a_model_no_validation_can_pass_is_rejected_and_says_why():
    episodes = [(pendulum_episode(4, 150), 'explore')]
    p = parameters(ensemble_models=5, max_validation_error=0.0)
    result = fit_model(fit_request(TASK, paired(episodes), p, 1))
    assert not result['accepted']
    reason = rejection_reason(result, p.max_validation_error)
    assert reason.startswith('candidate model rejected: held-out rollout NRMSE')
    assert '(max 0.0)' in reason and '150 transitions' in reason


def test_a_failing_fit_is_reported_not_raised():
    request = fit_request(TASK, paired([]), parameters(), 2)  # nothing to fit on
    result = fit_model(request)
    assert result['model_version'] == 2
    assert result['error'].startswith('ValueError')
    assert 'Traceback' in result['traceback']


def test_a_learned_reward_is_fitted_on_the_rewarded_transitions_only():
    task = dataclasses.replace(TASK, reward='learned')
    first, second = pendulum_episode(5, 150), pendulum_episode(6, 150)
    # The last 50 rewards of the second episode were lost.
    second_lost = (second[0], second[1], second[2][:100])
    transitions = paired([(first, 'explore'), (second_lost, 'explore')], task)
    p = parameters(ensemble_models=5, reward_library_degree=3)
    request = fit_request(task, transitions, p, 1)
    assert [len(r) for _, _, r in request['reward_trajectories']] == [150, 100]
    assert request['reward_config'] == {'degree': 3, 'threshold': 0.01, 'observation': 'auto'}
    result = fit_model(request)
    assert result['card']['transitions'] == 300  # every transition trains the dynamics
    reward_model = SparseRewardModel.from_dict(result['card']['reward_model'])
    assert reward_model.fit_info['n_samples'] == 250
    assert reward_model.observation == 'current'  # Pendulum-v1 scores the state before
    expected = fit_reward_model(
        task, [first, (second[0][:101], second[1][:100], second[2][:100])], {'degree': 3}
    )
    np.testing.assert_allclose(reward_model.coefficients, expected.coefficients, atol=1e-12)
    predicted = reward_model(first[0][:-1], first[1], first[0][1:])
    assert np.sqrt(np.mean((predicted - first[2]) ** 2)) < 0.2 * np.std(first[2])
    assert 'learned r =' in model_summary(result)


def test_a_learned_reward_without_any_reported_reward_is_an_error():
    task = dataclasses.replace(TASK, reward='learned')
    with pytest.raises(ValueError, match='no reward was reported'):
        fit_reward_model(task, [], {})
