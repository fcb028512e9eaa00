"""Policy training on each accepted model, as the policy trainer node runs it, without ROS.

Every model card is checked field by field on receipt (:func:`read_model_card`): a
malformed or mismatched card is refused, never trained on. For a task whose reward is
``learned``, surrogate steps are scored by the reward model that comes with each card
(:class:`LearnedReward`); a card without one is refused (:class:`MissingRewardModelError`).

:class:`PolicyTraining` trains in a worker thread, so the node keeps answering its
subscriptions and diagnostics while SAC runs for minutes. If newer models arrive
meanwhile, the next training uses the newest and skips the ones in between (training on a
stale model would only delay the better policy). The SAC networks are kept from one model
to the next (warm start, :class:`~sindyrl_ros.core.dyna.PolicyLearner`).

Each training saves ``policy_<v>.json`` (the network) and, with ``distill_sparse``,
``sparse_<v>.json`` (the distilled sparse polynomial policy), with the source model
version, the policy version and the surrogate metrics in their ``metadata``; the one
``deploy_policy`` names is handed out to be published. Versions go on from the policies a
previous start left in the directory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
import queue
import threading
import time
import traceback
from typing import Any

import numpy as np

from sindyrl_ros.core.policies import NumpyPolicy
from sindyrl_ros.core.policy_loading import load_policy
from sindyrl_ros.core.priority import lower_thread_priority
from sindyrl_ros.core.reward import LEARNED_REWARD
from sindyrl_ros.core.serialization import (
    FormatError,
    as_float_array,
    document_from_json,
    highest_version,
    json_safe,
    require,
    save_json_document,
)

__all__ = [
    'LearnedReward',
    'MissingRewardModelError',
    'ModelJob',
    'PolicyTraining',
    'make_learner',
    'policy_summary',
    'read_model_card',
]


@dataclass
class ModelJob:
    """A validated model card waiting to be trained on.

    Attributes
    ----------
    dynamics : SindyDynamics
    start_observations : numpy.ndarray, shape (K, n)
        Recorded real observations surrogate episodes start from.
    model_version : int
    reward_model : SparseRewardModel or None
        The card's learned reward (a task that learns its reward).
    received_at : float
        ``time.monotonic()`` when it was read.
    """

    dynamics: Any
    start_observations: np.ndarray
    model_version: int
    reward_model: Any = None
    received_at: float = field(default_factory=time.monotonic)


class MissingRewardModelError(FormatError):
    """A model card for a task that learns its reward came without a reward model."""


class LearnedReward:
    """The surrogate reward of a task that learns it: the reward model of the current card.

    The SAC learner keeps one reward function for its whole life; the model behind it
    changes with every card, so :class:`PolicyTraining` sets :attr:`model` before each
    training.
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


def _check_names(model: Any, task, where: str) -> None:
    for key in ('observation_names', 'action_names'):
        names, expected = list(getattr(model, key)), list(getattr(task, key))
        if names != expected:
            raise FormatError(f'{where}.{key}: {names} differs from task {task.name}: {expected}')


def read_model_card(text: str, task, where: str = '/sindyrl/model') -> ModelJob:
    """Validate a model card (JSON text) for ``task``.

    Parameters
    ----------
    text : str
        The card, as it comes on ``/sindyrl/model``.
    task : TaskSpec
        Its names must be the card's; a task that learns its reward needs the card's
        ``reward_model``.
    where : str
        Where the card came from, to start error messages with.

    Returns
    -------
    ModelJob

    Raises
    ------
    MissingRewardModelError
        If the task learns its reward and the card has no reward model.
    FormatError
        Naming the faulty field: malformed, for other names, not fitted, without start
        observations.
    """
    from sindyrl_ros.core.dynamics import MODEL_FORMAT, MODEL_VERSION, SindyDynamics

    card = document_from_json(text, MODEL_FORMAT, {MODEL_VERSION}, where)
    dynamics = SindyDynamics.from_dict(card, where=where)
    _check_names(dynamics, task, where)
    if not dynamics.is_fitted:
        raise FormatError(f'{where}: the model has no fitted coefficients')
    starts = as_float_array(
        require(card, 'start_observations', list, where),
        (None, len(task.observation_names)),
        f'{where}.start_observations',
    )
    if len(starts) == 0:
        raise FormatError(f'{where}.start_observations: no observations to start from')
    reward_model = _read_reward_model(card, task, where) if task.reward == LEARNED_REWARD else None
    version = int(card.get('model_version', dynamics.model_version))
    return ModelJob(dynamics, starts, version, reward_model)


def _read_reward_model(card: dict, task, where: str):
    """The card's learned reward, checked against the task's names."""
    from sindyrl_ros.core.reward import SparseRewardModel

    if 'reward_model' not in card:
        raise MissingRewardModelError(
            f'{where}.reward_model: missing; task {task.name} learns its reward, so each '
            'model card must carry one (the model updater fits it from the rewards the '
            'plant reports on /sindyrl/reward)'
        )
    where = f'{where}.reward_model'
    model = SparseRewardModel.from_dict(require(card, 'reward_model', dict, where), where)
    _check_names(model, task, where)
    return model


def make_learner(task, parameters: Any, reward_fn: Callable | None = None):
    """The SAC learner of the policy trainer, from its parameters.

    Parameters
    ----------
    task : TaskSpec
    parameters : object
        The policy trainer's parameter values as attributes (the names of
        :mod:`sindyrl_ros.params.policy_trainer`).
    reward_fn : callable, optional
        The surrogate reward (a :class:`LearnedReward`); default: the task's.

    Returns
    -------
    PolicyLearner

    Raises
    ------
    ValueError, RuntimeError
        If SAC cannot be set up (a device that is not there, bad sizes).
    """
    from sindyrl_ros.core.dyna import DynaConfig, PolicyLearner
    from sindyrl_ros.core.sac import SACConfig

    p = parameters
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
    return PolicyLearner(task, config, seed=p.seed, reward_fn=reward_fn)


def _fmt(value: Any) -> str:
    return f'{value:.1f}' if isinstance(value, float) else str(value)


def policy_summary(metadata: dict, deploy_policy: str) -> str:
    """One line on a published policy, from its metadata (see :meth:`PolicyTraining.train`)."""
    sparse = (
        f', sparse policy {metadata["sparse_policy_coefficients"]} coefficients '
        f'(surrogate return {_fmt(metadata.get("sparse_surrogate_return"))})'
        if 'sparse_policy_coefficients' in metadata
        else ''
    )
    return (
        f'policy {metadata["policy_version"]} ({deploy_policy}) published from model '
        f'{metadata["source_model_version"]}: surrogate return '
        f'{_fmt(metadata.get("surrogate_return"))} (mean of '
        f'{metadata.get("surrogate_return_episodes")} episodes, '
        f'{metadata.get("surrogate_return_cut_short")} cut short), '
        f'{metadata.get("updates")} updates, '
        f'{metadata["nn_parameters"]} network parameters{sparse}, '
        f'{metadata["train_time_s"]:.1f} s'
    )


class PolicyTraining:
    """Trains a policy on the newest model in a worker thread, saving each one.

    Parameters
    ----------
    task : TaskSpec
    parameters : object
        The policy trainer's parameter values (see :func:`make_learner`); those that may
        change while the node runs (``surrogate_steps_first``, ``surrogate_steps_per_model``,
        ``distill_sparse``, ``deploy_policy``) are read at each training.
    policies_dir : path-like
        Where the policies are saved (an existing directory).
    log : callable(str), optional
        Told about training progress (from the worker thread).

    Attributes
    ----------
    learner : PolicyLearner
    learned_reward : LearnedReward or None
        The surrogate reward, for a task that learns its reward.
    policy_version : int
        Version of the newest saved policy (0: none yet).
    progress : dict or None
        The latest report of the worker: ``training``, ``model_version`` and SAC's
        progress (``updates``, ``mean_episode_return``...). Replaced, never changed.

    Raises
    ------
    ValueError, RuntimeError
        If SAC cannot be set up (see :func:`make_learner`).
    """

    def __init__(
        self,
        task,
        parameters: Any,
        policies_dir: str | Path,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.task = task
        self.parameters = parameters
        self.policies_dir = Path(policies_dir)
        self._log = log or (lambda text: None)
        self.learned_reward = LearnedReward() if task.reward == LEARNED_REWARD else None
        self.learner = make_learner(task, parameters, self.learned_reward)
        self.policy_version = highest_version(self.policies_dir, 'policy_')
        self.progress: dict | None = None
        self._condition = threading.Condition()
        self._pending: ModelJob | None = None
        self._stopping = False
        self._finished: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def last_deployed(self) -> tuple[Path, NumpyPolicy] | None:
        """The newest saved policy of the kind ``deploy_policy`` names (None: none saved).

        Raises
        ------
        FormatError, OSError
            If that file cannot be read as a policy for the task.
        """
        if self.policy_version == 0:
            return None
        kind = 'sparse' if self.parameters.deploy_policy == 'sparse' else 'policy'
        path = self.policies_dir / f'{kind}_{self.policy_version}.json'
        return path, load_policy(path, self.task.observation_names, self.task.action_names)

    # ------------------------------------------------------------------ the worker

    def start(self) -> None:
        """Start the worker thread (once)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._training_loop, name='sac', daemon=True)
            self._thread.start()

    def offer(self, job: ModelJob) -> ModelJob | None:
        """Queue ``job`` for training; returns the waiting job it replaces (skipped), if any."""
        with self._condition:
            skipped, self._pending = self._pending, job
            self._condition.notify()
        return skipped

    def finished(self) -> list[dict]:
        """The results of the trainings that ended since the last call (never blocks).

        Each is :meth:`train`'s result, or ``error``, ``traceback`` and ``model_version``
        for a training that failed.
        """
        results = []
        while True:
            try:
                results.append(self._finished.get_nowait())
            except queue.Empty:
                return results

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the worker to stop (SAC checks at its next progress report) and wait briefly."""
        with self._condition:
            self._stopping = True
            self._condition.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=timeout)

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
                result = self.train(job)
            except Exception as error:  # reported; the next model gets a fresh try
                result = {
                    'error': f'{type(error).__name__}: {error}',
                    'traceback': traceback.format_exc(),
                    'model_version': job.model_version,
                }
            # Before the result is handed over: a next job then marks training again.
            self.progress = {'training': False, 'model_version': job.model_version}
            self._finished.put(result)

    # ------------------------------------------------------------------ one training

    def train(self, job: ModelJob) -> dict:
        """Train (and distil) on one model, save the policies; what is to be published.

        Returns
        -------
        dict
            ``document`` (the deployed policy's document), ``metadata`` (``task``,
            ``policy_version``, ``source_model_version``, ``nn_parameters``, the surrogate
            metrics, ``train_time_s``, the distillation's metrics and ``reward_model``
            where there are) and ``model_version``.
        """
        p = self.parameters
        self.progress = {'training': True, 'model_version': job.model_version}
        started = time.perf_counter()

        def progress(report: dict) -> bool:
            self.progress = {**report, 'training': True, 'model_version': job.model_version}
            self._log(
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
        deploy = p.deploy_policy
        documents = {}
        for name, trained in (('policy', policy), ('sparse', sparse)):
            if trained is not None:
                trained.metadata.update(metadata)
                trained.metadata['kind_deployed'] = deploy
                documents[name] = trained.to_dict()
        for name, document in documents.items():
            save_json_document(self.policies_dir / f'{name}_{version}.json', document)
        self.policy_version = version
        deployed = documents['sparse' if sparse is not None and deploy == 'sparse' else 'policy']
        return {'document': deployed, 'metadata': metadata, 'model_version': job.model_version}
