"""Policy trainer: trains a policy on the SINDy surrogate of each accepted model (Dyna).

Every model card on ``/sindyrl/model`` is checked field by field on receipt (a malformed
or mismatched card is refused and counted, never trained on). Training runs in a worker
thread, so this node keeps answering its subscriptions and diagnostics while SAC runs for
minutes; if newer models arrive meanwhile, the next training uses the newest and skips
the ones in between (training on a stale model would only delay the better policy). The
SAC networks are kept from one model to the next (warm start).

The policy goes out on ``/sindyrl/policy`` (latched, so a controller that starts later
still gets it) as the numpy policy document of :mod:`sindyrl_ros.core.policies`, with
the source model version, its own version and its surrogate metrics in ``metadata``.
Optionally a sparse polynomial policy is distilled from it, saved, and deployed instead.

For a task whose reward is ``learned``, surrogate steps are scored by the reward model
that comes with each model card (``reward_model``, validated on receipt); a card without
one is refused and counted (``rejected.missing_reward_model``).

On ``resume`` the run's last deployed policy (``run_dir/policies``) is read back through
the same checks as any policy file and published again, so the controller goes on with it
instead of random actions; versions go on from it.
"""

from __future__ import annotations

import json
from pathlib import Path
import queue
import sys
import threading
import time
import traceback

import numpy as np
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from std_msgs.msg import String

from sindyrl_ros.core.policies import load_policy
from sindyrl_ros.core.reward import LEARNED_REWARD
from sindyrl_ros.core.serialization import (
    FormatError,
    as_float_array,
    document_from_json,
    require,
    save_json_document,
)
from sindyrl_ros.nodes.common import (
    LATCHED_QOS,
    RESUME_PARAMETER,
    SHARED_PARAMETERS,
    Diagnostics,
    ParamSpec,
    check_parameter_files,
    configuration_error,
    declare_parameters,
    highest_version,
    json_safe,
    lower_thread_priority,
    run_node,
    task_from_parameters,
)

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
    ParamSpec(
        'diagnostics_period',
        1.0,
        'Seconds between /diagnostics messages',
        range=(0.01, 3600.0),
        read_only=True,
    ),
]
# Everything this node declares (what a parameter file may set for it).
PARAMETERS = SHARED_PARAMETERS + POLICY_TRAINER_PARAMETERS


class ModelJob:
    """A validated model card waiting to be trained on."""

    def __init__(
        self, dynamics, start_observations: np.ndarray, card: dict, reward_model=None
    ) -> None:
        self.dynamics = dynamics
        self.start_observations = start_observations
        self.reward_model = reward_model
        self.model_version = int(card.get('model_version', dynamics.model_version))
        self.received_at = time.monotonic()


class MissingRewardModelError(FormatError):
    """A model card for a task that learns its reward came without a reward model."""


class LearnedReward:
    """The surrogate reward of a task that learns it: the reward model of the current card.

    The SAC learner keeps one reward function for its whole life; the model behind it
    changes with every card, so the worker sets :attr:`model` before each training.
    """

    def __init__(self) -> None:
        self.model = None

    def __call__(
        self, observations: np.ndarray, actions: np.ndarray, next_observations: np.ndarray
    ) -> np.ndarray:
        """Predicted rewards, shape (N,), of observations (N, n) and actions (N, m)."""
        if self.model is None:
            raise RuntimeError('no reward model yet: it comes with the model card')
        return self.model(observations, actions, next_observations)


class PolicyTrainer(Node):
    """Turns accepted model cards into published policies, training off the executor."""

    def __init__(self) -> None:
        super().__init__('policy_trainer')
        self.parameters = declare_parameters(self, PARAMETERS)
        check_parameter_files(self)
        p = self.parameters
        if p.deploy_policy == 'sparse' and not p.distill_sparse:
            raise configuration_error(self, 'deploy_policy', 'sparse needs distill_sparse:=true')
        self.task = task_from_parameters(self, p)
        self.learned_reward = LearnedReward() if self.task.reward == LEARNED_REWARD else None
        self.policies_dir = Path(p.run_dir).expanduser() / 'policies'
        try:
            self.policies_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise configuration_error(self, 'run_dir', f'cannot create it: {error}') from None
        self.learner = self._make_learner()

        # Versions go on from the policies a previous start left in run_dir.
        self.policy_version = highest_version(self.policies_dir, 'policy_')
        self._condition = threading.Condition()
        self._pending: ModelJob | None = None
        self._stopping = False
        self._progress: dict | None = None  # latest SAC progress, swapped by the worker
        self._finished: queue.SimpleQueue = queue.SimpleQueue()

        self.diagnostics = Diagnostics(self, p.diagnostics_period)
        for key in (
            'models_received',
            'models_skipped',
            'policies_published',
            'training_failures',
        ):
            self.diagnostics.counters[key] = 0
        for key in (
            'training',
            'training_model_version',
            'updates',
            'surrogate_return',
            'policy_version',
            'source_model_version',
            'last_train_time_s',
            'sparse_policy_coefficients',
        ):
            self.diagnostics.set(key, 'none')
        self.diagnostics.set('training', False)

        self.policy_publisher = self.create_publisher(String, 'sindyrl/policy', LATCHED_QOS)
        self.create_subscription(String, 'sindyrl/model', self._on_model, LATCHED_QOS)
        # Steady clock: sim time stands still while a lockstep plant waits.
        self.create_timer(
            0.05, self._publish_finished, clock=Clock(clock_type=ClockType.STEADY_TIME)
        )
        if p.resume:
            self._republish_last_policy()
        self._worker = threading.Thread(target=self._training_loop, name='sac', daemon=True)
        self._worker.start()
        self.get_logger().info(
            f'policy trainer ready: task {self.task.name}, deploys the {p.deploy_policy} '
            f'policy, saves to {self.policies_dir}'
        )

    def _republish_last_policy(self) -> None:
        """Resume: publish the run's last deployed policy again (none saved: nothing)."""
        if self.policy_version == 0:
            self.get_logger().info(f'resume: no policy saved in {self.policies_dir} yet')
            return
        kind = 'sparse' if self.parameters.deploy_policy == 'sparse' else 'policy'
        path = self.policies_dir / f'{kind}_{self.policy_version}.json'
        try:
            policy = load_policy(path, self.task.observation_names, self.task.action_names)
        except (FormatError, OSError) as error:
            raise configuration_error(self, 'resume', f'last policy: {error}') from None
        self.policy_publisher.publish(String(data=json.dumps(policy.to_dict(), allow_nan=False)))
        self.diagnostics.set('policy_version', self.policy_version)
        self.diagnostics.set('source_model_version', policy.metadata.get('source_model_version'))
        self.get_logger().info(
            f'resume: policy {self.policy_version} ({path.name}, trained on model '
            f'{policy.metadata.get("source_model_version")}) published again'
        )

    def _make_learner(self):
        from sindyrl_ros.core.dyna import DynaConfig, PolicyLearner
        from sindyrl_ros.core.sac import SACConfig

        p = self.parameters
        try:
            sac = SACConfig(
                hidden=tuple(p.sac_hidden),
                activation=p.sac_activation,
                actor_lr=p.sac_learning_rate,
                critic_lr=p.sac_learning_rate,
                alpha_lr=p.sac_learning_rate,
                gamma=p.sac_gamma,
                batch_size=p.sac_batch_size,
                buffer_size=max(200_000, p.sac_batch_size),
                learning_starts=p.sac_learning_starts,
                updates_per_step=p.sac_updates_per_step,
                seed=p.seed,
                device=p.device,
                num_threads=p.torch_threads,
                progress_every=p.progress_every,
            )
            config = DynaConfig(
                sac=sac,
                surrogate_envs=p.surrogate_envs,
                surrogate_steps_first=p.surrogate_steps_first,
                surrogate_steps_per_model=p.surrogate_steps_per_model,
                start_noise=p.start_noise,
                sparse_degree=p.sparse_degree,
            )
            return PolicyLearner(self.task, config, seed=p.seed, reward_fn=self.learned_reward)
        except (ValueError, RuntimeError) as error:
            raise configuration_error(self, 'device', f'cannot set up SAC: {error}') from None

    # ------------------------------------------------------------------ models in

    def _read_card(self, text: str) -> ModelJob:
        """Validate a model card; raises FormatError naming the faulty field."""
        from sindyrl_ros.core.dynamics import MODEL_FORMAT, MODEL_VERSION, SindyDynamics

        where = '/sindyrl/model'
        card = document_from_json(text, MODEL_FORMAT, {MODEL_VERSION}, where)
        dynamics = SindyDynamics.from_dict(card, where=where)
        for key, expected in (
            ('observation_names', self.task.observation_names),
            ('action_names', self.task.action_names),
        ):
            if list(getattr(dynamics, key)) != list(expected):
                raise FormatError(
                    f'{where}.{key}: {list(getattr(dynamics, key))} differs from task '
                    f'{self.task.name}: {list(expected)}'
                )
        if not dynamics.is_fitted:
            raise FormatError(f'{where}: the model has no fitted coefficients')
        starts = as_float_array(
            require(card, 'start_observations', list, where),
            (None, len(self.task.observation_names)),
            f'{where}.start_observations',
        )
        if len(starts) == 0:
            raise FormatError(f'{where}.start_observations: no observations to start from')
        reward_model = None
        if self.learned_reward is not None:
            reward_model = self._read_reward_model(card, where)
        return ModelJob(dynamics, starts, card, reward_model)

    def _read_reward_model(self, card: dict, where: str):
        """The card's learned reward, checked against the task's names."""
        from sindyrl_ros.core.reward import SparseRewardModel

        if 'reward_model' not in card:
            raise MissingRewardModelError(
                f'{where}.reward_model: missing; task {self.task.name} learns its reward, so '
                'each model card must carry one (the model updater fits it from the rewards '
                'the plant reports on /sindyrl/reward)'
            )
        where = f'{where}.reward_model'
        model = SparseRewardModel.from_dict(require(card, 'reward_model', dict, where), where)
        for key, expected in (
            ('observation_names', self.task.observation_names),
            ('action_names', self.task.action_names),
        ):
            if list(getattr(model, key)) != list(expected):
                raise FormatError(
                    f'{where}.{key}: {getattr(model, key)} differs from task '
                    f'{self.task.name}: {list(expected)}'
                )
        return model

    def _on_model(self, message: String) -> None:
        try:
            job = self._read_card(message.data)
        except MissingRewardModelError as error:
            self.diagnostics.reject('missing_reward_model', str(error), severity='error')
            return
        except FormatError as error:
            self.diagnostics.reject('malformed_model', str(error))
            return
        self.diagnostics.increment('models_received')
        with self._condition:
            if self._pending is not None:
                self.diagnostics.increment('models_skipped')
                self.get_logger().info(
                    f'model {self._pending.model_version} skipped: model {job.model_version} '
                    'is newer'
                )
            self._pending = job
            self._condition.notify()
        self.get_logger().info(f'model {job.model_version} received')

    # ------------------------------------------------------------------ training (worker)

    def _training_loop(self) -> None:
        lower_thread_priority(self.parameters.training_niceness)
        while True:
            with self._condition:
                while self._pending is None and not self._stopping:
                    self._condition.wait()
                if self._stopping:
                    return
                job, self._pending = self._pending, None
            try:
                result = self._train(job)
            except Exception as error:  # reported; the next model gets a fresh try
                result = {
                    'error': f'{type(error).__name__}: {error}',
                    'traceback': traceback.format_exc(),
                    'model_version': job.model_version,
                }
            # Before the result is handed over: a next job then marks training again.
            self._progress = {'training': False, 'model_version': job.model_version}
            self._finished.put(result)

    def _train(self, job: ModelJob) -> dict:
        """Train (and distil) on one model; returns what the executor thread publishes."""
        p = self.parameters
        logger = self.get_logger()
        self._progress = {'training': True, 'model_version': job.model_version}
        started = time.perf_counter()

        def progress(report: dict) -> bool:
            self._progress = {**report, 'training': True, 'model_version': job.model_version}
            logger.info(
                f'training on model {job.model_version}: {report.get("updates")} updates, '
                f'{report.get("env_steps")} surrogate steps, surrogate return '
                f'{_fmt(report.get("mean_episode_return"))}'
            )
            return self._stopping

        if self.learned_reward is not None:
            self.learned_reward.model = job.reward_model
        first = self.learner.models_trained == 0
        steps = p.surrogate_steps_first if first else p.surrogate_steps_per_model
        policy, metrics = self.learner.train(
            job.dynamics, job.start_observations, progress, steps=steps
        )
        version = self.policy_version + 1
        metadata = {
            'task': self.task.name,
            'policy_version': version,
            'source_model_version': job.model_version,
            'nn_parameters': int(policy.n_parameters),
            **{k: v for k, v in metrics.items() if k != 'source_model_version'},
        }
        if job.reward_model is not None:
            metadata['reward_model'] = job.reward_model.equation()
        sparse = None
        if p.distill_sparse:
            sparse, sparse_metrics = self.learner.distill(
                policy, job.dynamics, job.start_observations
            )
            metadata.update(sparse_metrics)
        metadata['train_time_s'] = time.perf_counter() - started
        metadata = json_safe(metadata)
        policy.metadata.update(metadata)
        policy.metadata['kind_deployed'] = p.deploy_policy
        documents = {'policy': policy.to_dict()}
        if sparse is not None:
            sparse.metadata.update(metadata)
            sparse.metadata['kind_deployed'] = p.deploy_policy
            documents['sparse'] = sparse.to_dict()
        for name, document in documents.items():
            save_json_document(self.policies_dir / f'{name}_{version}.json', document)
        self.policy_version = version
        deployed = documents[
            'sparse' if 'sparse' in documents and p.deploy_policy == 'sparse' else 'policy'
        ]
        return {'document': deployed, 'metadata': metadata, 'model_version': job.model_version}

    # ------------------------------------------------------------------ policies out

    def _publish_finished(self) -> None:
        """Executor side: publish finished policies and copy progress into diagnostics."""
        progress = self._progress
        if progress is not None:
            self.diagnostics.set('training', progress.get('training', False))
            self.diagnostics.set('training_model_version', progress.get('model_version'))
            if 'updates' in progress:
                self.diagnostics.set('updates', progress['updates'])
                self.diagnostics.set('surrogate_return', progress.get('mean_episode_return'))
        while True:
            try:
                result = self._finished.get_nowait()
            except queue.Empty:
                return
            if 'error' in result:
                self.diagnostics.increment('training_failures')
                self.diagnostics.warnings['training'] = f'last training failed: {result["error"]}'
                self.get_logger().error(
                    f'training on model {result["model_version"]} failed: {result["error"]}\n'
                    f'{result["traceback"]}'
                )
                continue
            self.diagnostics.warnings.pop('training', None)
            metadata = result['metadata']
            self.policy_publisher.publish(
                String(data=json.dumps(result['document'], allow_nan=False))
            )
            self.diagnostics.increment('policies_published')
            self.diagnostics.set('policy_version', metadata['policy_version'])
            self.diagnostics.set('source_model_version', metadata['source_model_version'])
            self.diagnostics.set('surrogate_return', metadata.get('surrogate_return'))
            self.diagnostics.set('last_train_time_s', round(metadata['train_time_s'], 3))
            self.diagnostics.set(
                'sparse_policy_coefficients', metadata.get('sparse_policy_coefficients', 'none')
            )
            sparse = (
                f', sparse policy {metadata["sparse_policy_coefficients"]} coefficients '
                f'(surrogate return {_fmt(metadata.get("sparse_surrogate_return"))})'
                if 'sparse_policy_coefficients' in metadata
                else ''
            )
            self.get_logger().info(
                f'policy {metadata["policy_version"]} ({self.parameters.deploy_policy}) '
                f'published from model {metadata["source_model_version"]}: surrogate return '
                f'{_fmt(metadata.get("surrogate_return"))} (mean of '
                f'{metadata.get("surrogate_return_episodes")} episodes, '
                f'{metadata.get("surrogate_return_cut_short")} cut short), '
                f'{metadata.get("updates")} updates, '
                f'{metadata["nn_parameters"]} network parameters{sparse}, '
                f'{metadata["train_time_s"]:.1f} s'
            )

    # ------------------------------------------------------------------ shutdown

    def on_shutdown(self) -> None:
        self.stop_training()

    def stop_training(self) -> None:
        """Ask the worker to stop (SAC checks at its next progress report) and wait briefly."""
        with self._condition:
            self._stopping = True
            self._condition.notify_all()
        self._worker.join(timeout=5.0)

    def destroy_node(self) -> None:
        self.stop_training()
        super().destroy_node()


def _fmt(value) -> str:
    return f'{value:.1f}' if isinstance(value, float) else str(value)


def main(args: list[str] | None = None) -> int:
    return run_node(PolicyTrainer, args)


if __name__ == '__main__':
    sys.exit(main())
