"""Policy training without ROS: model cards checked, real SAC on a real E-SINDy surrogate."""

import dataclasses
import json
from types import SimpleNamespace

import numpy as np
from pendulum_data import pendulum_model_card
import pytest

from sindyrl_ros.core.policy_loading import load_policy, policy_from_json
from sindyrl_ros.core.policy_training import (
    LearnedReward,
    MissingRewardModelError,
    PolicyTraining,
    make_learner,
    policy_summary,
    read_model_card,
)
from sindyrl_ros.core.serialization import FormatError
from sindyrl_ros.core.tasks import get_task
from sindyrl_ros.params.policy_trainer import PARAMETERS

TASK = get_task('pendulum')
LEARNED = dataclasses.replace(TASK, reward='learned')


def parameters(**values):
    """The policy trainer's parameters: the declared defaults, with a tiny SAC budget."""
    tiny = {
        'surrogate_steps_first': 400,
        'surrogate_steps_per_model': 200,
        'surrogate_envs': 4,
        'sac_learning_starts': 100,
        'sac_batch_size': 32,
        'sac_hidden': [16, 16],
        'progress_every': 50,
        'device': 'cpu',
        'distill_sparse': False,
    }
    defaults = {spec.name: spec.default for spec in PARAMETERS}
    return SimpleNamespace(**{**defaults, **tiny, **values})


@pytest.fixture(scope='module')
def card():
    """A real model card, with a learned reward model: E-SINDy on random Pendulum-v1 steps."""
    return pendulum_model_card('learned', validation_horizon=None)


def text(card, **changes):
    return json.dumps({**card, **changes})


def test_a_valid_card_becomes_a_job(card):
    job = read_model_card(text(card, model_version=7), TASK)
    assert job.model_version == 7
    assert job.dynamics.observation_names == list(TASK.observation_names)
    assert job.start_observations.shape == (64, 3)
    assert job.reward_model is None  # the task knows its reward
    learned = read_model_card(text(card), LEARNED)
    assert learned.reward_model.observation_names == list(TASK.observation_names)


def test_a_malformed_or_mismatched_card_is_refused_naming_the_field(card):
    broken = {key: value for key, value in card.items() if key != 'coefficients'}
    with pytest.raises(FormatError, match='coefficients'):
        read_model_card(json.dumps(broken), TASK)
    with pytest.raises(FormatError):
        read_model_card(text(card)[:60], TASK)
    with pytest.raises(FormatError, match=r'model\.start_observations'):
        read_model_card(text(card, start_observations=[]), TASK)
    other = dataclasses.replace(TASK, observation_names=('c', 's', 'w'), saturation={})
    with pytest.raises(FormatError, match=r'/sindyrl/model\.observation_names'):
        read_model_card(text(card), other)


def test_a_task_that_learns_its_reward_needs_the_cards_reward_model(card):
    without = {key: value for key, value in card.items() if key != 'reward_model'}
    with pytest.raises(MissingRewardModelError, match='reward_model: missing'):
        read_model_card(json.dumps(without), LEARNED)
    other = json.loads(text(card))
    other['reward_model']['observation_names'] = ['c', 's', 'w']
    with pytest.raises(FormatError, match=r'reward_model\.observation_names'):
        read_model_card(json.dumps(other), LEARNED)
    reward = LearnedReward()
    with pytest.raises(RuntimeError, match='no reward model yet'):
        reward(np.zeros((1, 3)), np.zeros((1, 1)), np.zeros((1, 3)))


def test_each_training_saves_the_next_version_and_resume_finds_it(card, tmp_path):
    logged = []
    training = PolicyTraining(TASK, parameters(), tmp_path, log=logged.append)
    assert training.policy_version == 0 and training.last_deployed() is None
    job = read_model_card(text(card), TASK)
    first = training.train(job)
    metadata = first['metadata']
    assert metadata['policy_version'] == 1 and metadata['source_model_version'] == 1
    assert metadata['task'] == 'pendulum' and metadata['updates'] > 0
    assert np.isfinite(metadata['surrogate_return'])
    assert metadata['surrogate_steps'] == 400  # surrogate_steps_first
    assert any('training on model 1:' in line for line in logged)
    policy = policy_from_json(json.dumps(first['document']), TASK.observation_names)
    assert policy.kind == 'mlp' and policy.metadata['kind_deployed'] == 'mlp'
    assert load_policy(tmp_path / 'policy_1.json').to_dict() == first['document']
    assert not (tmp_path / 'sparse_1.json').exists()  # distill_sparse is off
    second = training.train(read_model_card(text(card, model_version=2), TASK))
    assert second['metadata']['policy_version'] == 2
    # Warm start: the same SAC trainer goes on, for surrogate_steps_per_model more steps.
    assert second['metadata']['surrogate_steps'] == 400 + 200
    summary = policy_summary(second['metadata'], 'mlp')
    assert summary.startswith('policy 2 (mlp) published from model 2: surrogate return')
    # A later start goes on from the saved versions and finds the last deployed policy.
    resumed = PolicyTraining(TASK, parameters(), tmp_path)
    assert resumed.policy_version == 2
    path, last = resumed.last_deployed()
    assert path.name == 'policy_2.json' and last.to_dict() == second['document']


def test_a_distilled_sparse_policy_is_deployed_when_asked(card, tmp_path):
    p = parameters(distill_sparse=True, deploy_policy='sparse', sparse_degree=2)
    result = PolicyTraining(TASK, p, tmp_path).train(read_model_card(text(card), TASK))
    deployed = policy_from_json(json.dumps(result['document']), TASK.observation_names)
    assert deployed.kind == 'sparse_polynomial' and deployed.metadata['kind_deployed'] == 'sparse'
    assert result['metadata']['sparse_policy_coefficients'] == deployed.n_parameters
    assert deployed.n_parameters < result['metadata']['nn_parameters']
    assert load_policy(tmp_path / 'sparse_1.json').to_dict() == result['document']
    assert load_policy(tmp_path / 'policy_1.json').kind == 'mlp'
    assert 'sparse policy' in policy_summary(result['metadata'], 'sparse')


def test_the_worker_trains_on_the_newest_model_and_reports_failures(card, tmp_path):
    training = PolicyTraining(LEARNED, parameters(surrogate_steps_first=1600), tmp_path)
    training.start()
    try:
        job = read_model_card(text(card), LEARNED)
        assert training.offer(job) is None
        assert wait(lambda: (training.progress or {}).get('training'))
        # Models 2 and 3 arrive while model 1 trains: 2 is skipped.
        assert training.offer(read_model_card(text(card, model_version=2), LEARNED)) is None
        skipped = training.offer(read_model_card(text(card, model_version=3), LEARNED))
        assert skipped.model_version == 2
        results = []
        assert wait(lambda: results.extend(training.finished()) or len(results) == 2)
        assert [r['model_version'] for r in results] == [1, 3]
        assert [r['metadata']['policy_version'] for r in results] == [1, 2]
        assert results[-1]['metadata']['reward_model'] == job.reward_model.equation()
        assert training.progress == {'training': False, 'model_version': 3}
        # A job the learner cannot train on is reported, and the worker goes on.
        training.offer(dataclasses.replace(job, reward_model=None, model_version=4))
        assert wait(lambda: results.extend(training.finished()) or len(results) == 3)
        assert results[-1]['error'].startswith('RuntimeError: no reward model yet')
        assert results[-1]['model_version'] == 4 and 'Traceback' in results[-1]['traceback']
    finally:
        training.stop()
    assert not training._thread.is_alive()


def test_sac_that_cannot_be_set_up_is_an_error():
    with pytest.raises((ValueError, RuntimeError)):
        make_learner(TASK, parameters(sac_batch_size=0))


def wait(condition, timeout=180.0):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False
