"""The policy trainer node in its own process: model cards in, policies out, over DDS."""

import json
import sys

import numpy as np
from pendulum_data import pendulum_model_card
import pytest
from ros_testing import NodeStatusProbe

pytestmark = pytest.mark.ros


class TrainerProbe(NodeStatusProbe):
    def __init__(self, context, executor):
        from std_msgs.msg import String

        from sindyrl_ros.ros.qos import LATCHED_QOS

        super().__init__('trainer_probe', context, executor, '/policy_trainer')
        self.models = self.node.create_publisher(String, '/sindyrl/model', LATCHED_QOS)
        self.policies = []
        self.node.create_subscription(
            String, '/sindyrl/policy', lambda m: self.policies.append(m.data), LATCHED_QOS
        )

    def publish_card(self, card) -> None:
        from std_msgs.msg import String

        text = card if isinstance(card, str) else json.dumps(card)
        self.models.publish(String(data=text))


def test_trains_on_the_newest_model_and_refuses_a_malformed_card(
    ros_context, start_process, tmp_path
):
    from sindyrl_ros.core.policy_loading import load_policy, policy_from_json

    card = pendulum_model_card()
    context, executor = ros_context
    run_dir = tmp_path / 'run'
    trainer = start_process(
        [
            sys.executable,
            '-m',
            'sindyrl_ros.nodes.policy_trainer',
            '--ros-args',
            '-p',
            'task:=pendulum',
            '-p',
            f'run_dir:={run_dir}',
            '-p',
            'diagnostics_period:=0.1',
            # A tiny SAC budget: this checks the plumbing, not the learning.
            '-p',
            'surrogate_steps_first:=1600',
            '-p',
            'surrogate_steps_per_model:=200',
            '-p',
            'surrogate_envs:=4',
            '-p',
            'sac_learning_starts:=100',
            '-p',
            'sac_batch_size:=32',
            '-p',
            'sac_hidden:=[16,16]',
            '-p',
            'progress_every:=50',
            '-p',
            'device:=cpu',
            '-p',
            'sparse_degree:=2',
            '-p',
            'deploy_policy:=sparse',
        ],
        name='policy_trainer',
    )
    probe = TrainerProbe(context, executor)
    assert probe.spin_until(
        lambda: probe.models.get_subscription_count() > 0 and probe.status is not None, 30
    ), trainer.output()

    # Refused on receipt, counted, never trained on.
    broken = dict(card)
    del broken['coefficients']
    probe.publish_card(broken)
    assert probe.spin_until(lambda: probe.counter('rejected.malformed_model') == 1, 30), (
        trainer.output()
    )
    probe.publish_card('{"format": "sindyrl_ros/model", "version": 1, "observation_na')
    assert probe.spin_until(lambda: probe.counter('rejected.malformed_model') == 2, 30), (
        trainer.output()
    )
    assert 'coefficients' in trainer.output()

    # Models 2 and 3 arrive while model 1 trains: 2 is stale by then and never trained on
    # (it is skipped by the trainer, or already replaced in the depth-1 latched queue).
    probe.publish_card(card)
    assert probe.spin_until(lambda: probe.value('training') == 'True', 60), trainer.output()
    for version in (2, 3):
        probe.publish_card({**card, 'model_version': version})
    assert probe.spin_until(lambda: probe.counter('policies_published') >= 2, 120), (
        trainer.output()
    )
    assert probe.counter('models_skipped') == probe.counter('models_received') - 2
    assert probe.spin_until(lambda: len(probe.policies) >= 2, 10)

    policies = [
        policy_from_json(text, expected_observation_names=card['observation_names'])
        for text in probe.policies
    ]
    assert [p.metadata['source_model_version'] for p in policies] == [1, 3]
    assert [p.metadata['policy_version'] for p in policies] == [1, 2]
    latest = policies[-1]
    assert latest.kind == 'sparse_polynomial'  # deploy_policy:=sparse
    assert latest.metadata['sparse_policy_coefficients'] == latest.n_parameters
    assert latest.metadata['nn_parameters'] > latest.n_parameters
    assert np.isfinite(latest.metadata['surrogate_return'])
    assert latest.metadata['updates'] > 0
    action = latest(np.array([1.0, 0.0, 0.0]))
    assert action.shape == (1,) and -2.0 <= action[0] <= 2.0

    network = load_policy(run_dir / 'policies' / 'policy_2.json')
    assert network.kind == 'mlp' and network.metadata['source_model_version'] == 3
    sparse = load_policy(run_dir / 'policies' / 'sparse_2.json')
    assert sparse.to_dict() == latest.to_dict()
    assert 'policy 2 (sparse) published from model 3' in trainer.output()
    assert trainer.stop() == 0, trainer.output()
    probe.destroy()


def test_learned_reward_comes_with_the_card(ros_context, start_process, tmp_path):
    """reward:=learned: a card without a reward model is refused; with one, it is trained on."""
    from sindyrl_ros.core.policy_loading import policy_from_json
    from sindyrl_ros.core.reward import SparseRewardModel

    card = pendulum_model_card(reward='learned')
    reward_model = SparseRewardModel.from_dict(card['reward_model'])
    context, executor = ros_context
    trainer = start_process(
        [
            sys.executable,
            '-m',
            'sindyrl_ros.nodes.policy_trainer',
            '--ros-args',
            '-p',
            'task:=pendulum',
            '-p',
            'reward:=learned',
            '-p',
            f'run_dir:={tmp_path / "run"}',
            '-p',
            'diagnostics_period:=0.1',
            '-p',
            'surrogate_steps_first:=400',
            '-p',
            'surrogate_envs:=4',
            '-p',
            'sac_learning_starts:=100',
            '-p',
            'sac_batch_size:=32',
            '-p',
            'sac_hidden:=[16,16]',
            '-p',
            'progress_every:=50',
            '-p',
            'device:=cpu',
            '-p',
            'distill_sparse:=false',
        ],
        name='policy_trainer',
    )
    probe = TrainerProbe(context, executor)
    assert probe.spin_until(
        lambda: probe.models.get_subscription_count() > 0 and probe.status is not None, 30
    ), trainer.output()

    without = {key: value for key, value in card.items() if key != 'reward_model'}
    probe.publish_card(without)
    assert probe.spin_until(lambda: probe.counter('rejected.missing_reward_model') == 1, 30), (
        trainer.output()
    )
    # A reward model for other observation names is refused too.
    other = json.loads(json.dumps(card))
    other['reward_model']['observation_names'] = ['c', 's', 'w']
    probe.publish_card(other)
    assert probe.spin_until(lambda: probe.counter('rejected.malformed_model') == 1, 30), (
        trainer.output()
    )
    assert 'reward_model.observation_names' in trainer.output()

    probe.publish_card(card)
    assert probe.spin_until(lambda: probe.policies, 120), trainer.output()
    policy = policy_from_json(
        probe.policies[-1], expected_observation_names=card['observation_names']
    )
    assert policy.metadata['reward_model'] == reward_model.equation()
    assert np.isfinite(policy.metadata['surrogate_return'])
    assert probe.counter('training_failures') == 0
    assert trainer.stop() == 0, trainer.output()
    probe.destroy()
