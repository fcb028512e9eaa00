"""Soft actor-critic (SAC) on a batched surrogate environment, exported to a numpy policy.

SINDy-RL trains the policy on the cheap E-SINDy surrogate instead of the robot, so the
trainer consumes any batched environment with the ``SurrogateVecEnv`` interface:

``reset(seed=None) -> observations (n_envs, n)``
``step(actions (n_envs, m)) -> next_observations, rewards, terminated, truncated``
    ``next_observations`` are the true next observations (no auto-reset).
``reset_done(done (n_envs,)) -> observations (n_envs, n)``

Design choices, for speed on a small CPU and for deployment:

* twin critics evaluated as one batched network (``torch.baddbmm``), which halves the
  number of small kernel launches that dominate a 64x64 update on CPU;
* the replay buffer lives on the training device, sampled with a seeded numpy generator;
* ``train`` may be called repeatedly (Dyna): networks, optimisers and the entropy
  temperature persist, and ``reset_buffer`` drops transitions from an outdated model;
* :meth:`SACTrainer.export_policy` folds the observation normalisation into the first
  layer and returns an :class:`~sindyrl_ros.core.policies.MLPPolicy` that reproduces the
  deterministic action ``tanh(mean)`` scaled to the limits, evaluated with numpy alone.

The networks and the replay buffer are in :mod:`sindyrl_ros.core.sac_networks`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
import copy
from dataclasses import asdict, dataclass
import math
import time
from typing import Any, Protocol

import numpy as np
import torch

from sindyrl_ros.core.policies import MLPPolicy
from sindyrl_ros.core.sac_networks import Actor, ReplayBuffer, TwinCritic

__all__ = ['SACConfig', 'SACTrainer', 'BatchedEnv', 'resolve_device']


class BatchedEnv(Protocol):
    """What the trainer needs from an environment (``SurrogateVecEnv`` provides it)."""

    n_envs: int

    def reset(self, seed: int | None = None) -> np.ndarray: ...

    def step(
        self, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]: ...

    def reset_done(self, done: np.ndarray) -> np.ndarray: ...


@dataclass
class SACConfig:
    """Every SAC hyperparameter.

    Attributes
    ----------
    hidden : tuple of int
        Hidden layer widths of the actor and of each critic.
    activation : {'relu', 'tanh'}
        Hidden activation (the exported numpy policy uses the same).
    actor_lr, critic_lr, alpha_lr : float
        Adam learning rates.
    gamma : float
        Discount factor.
    tau : float
        Polyak averaging rate of the target critics.
    batch_size : int
        Transitions per gradient update.
    buffer_size : int
        Replay buffer capacity (transitions).
    learning_starts : int
        Transitions collected before the first update; on the very first training call
        they are collected with uniformly random actions.
    updates_per_step : float
        Gradient updates per batched environment step (each step gives n_envs
        transitions); fractions accumulate.
    initial_alpha : float
        Initial entropy temperature.
    target_entropy : float or None
        Target policy entropy; ``-action_dim`` when None.
    auto_entropy : bool
        Tune the temperature towards ``target_entropy``; otherwise keep ``initial_alpha``.
    log_std_min, log_std_max : float
        Bounds of the actor's log standard deviation.
    seed : int
        Seed of network initialisation, action noise, replay sampling and env resets.
    device : str
        'auto' (CUDA when available, else CPU), 'cpu', 'cuda', 'cuda:1', ...
    num_threads : int or None
        torch CPU threads while training (restored afterwards); 1 is fastest for 64x64
        networks and leaves the other cores to the robot's nodes.  None keeps torch's.
    progress_every : int
        Updates between progress callbacks.
    return_window : int
        Completed surrogate episodes averaged in the reported mean return.
    """

    hidden: tuple[int, ...] = (64, 64)
    activation: str = 'relu'
    actor_lr: float = 1e-3
    critic_lr: float = 1e-3
    alpha_lr: float = 1e-3
    gamma: float = 0.99
    tau: float = 0.005
    batch_size: int = 256
    buffer_size: int = 200_000
    learning_starts: int = 1000
    updates_per_step: float = 1.0
    initial_alpha: float = 1.0
    target_entropy: float | None = None
    auto_entropy: bool = True
    log_std_min: float = -5.0
    log_std_max: float = 2.0
    seed: int = 0
    device: str = 'auto'
    num_threads: int | None = 1
    progress_every: int = 1000
    return_window: int = 50

    def __post_init__(self) -> None:
        self.hidden = tuple(int(h) for h in self.hidden)
        if not self.hidden or min(self.hidden) < 1:
            raise ValueError(f'hidden must be positive layer widths, got {self.hidden}')
        if self.activation not in ('relu', 'tanh'):
            raise ValueError(f"activation must be 'relu' or 'tanh', got {self.activation!r}")
        if not 0.0 < self.gamma <= 1.0:
            raise ValueError(f'gamma must be in (0, 1], got {self.gamma}')
        if not 0.0 < self.tau <= 1.0:
            raise ValueError(f'tau must be in (0, 1], got {self.tau}')
        if self.batch_size < 1 or self.buffer_size < self.batch_size:
            raise ValueError('need 1 <= batch_size <= buffer_size')
        if self.updates_per_step <= 0:
            raise ValueError('updates_per_step must be positive')
        if self.progress_every < 1:
            raise ValueError('progress_every must be >= 1')

    @classmethod
    def from_dict(cls, values: dict) -> SACConfig:
        """Build from a parameter dict (e.g. ROS parameters); unknown keys are refused."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f'unknown SAC parameters: {unknown}; known: {sorted(known)}')
        return cls(**values)

    def to_dict(self) -> dict:
        """Plain dict (JSON-ready), e.g. for policy metadata."""
        values = asdict(self)
        values['hidden'] = list(self.hidden)
        return values


def resolve_device(device: str) -> torch.device:
    """'auto' -> CUDA when available, else CPU; anything else is passed to torch."""
    if device == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    return torch.device(device)


class SACTrainer:
    """Soft actor-critic with twin critics, Polyak targets and automatic entropy tuning.

    Parameters
    ----------
    observation_dim, action_dim : int
        n and m.
    action_low, action_high : array_like, shape (m,)
        Action limits; the actor's output is squashed into them.
    config : SACConfig, optional
    observation_low, observation_high : array_like, shape (n,), optional
        Typical observation range (e.g. the task's bounds); observations are scaled to
        about [-1, 1] inside the networks, which keeps learning rates meaningful across
        robots.  Without them the networks see raw observations.
    """

    def __init__(
        self,
        observation_dim: int,
        action_dim: int,
        action_low: Any,
        action_high: Any,
        config: SACConfig | None = None,
        observation_low: Any = None,
        observation_high: Any = None,
    ) -> None:
        self.config = config = config if config is not None else SACConfig()
        self.observation_dim, self.action_dim = int(observation_dim), int(action_dim)
        self.action_low = np.asarray(action_low, dtype=np.float64).reshape(self.action_dim)
        self.action_high = np.asarray(action_high, dtype=np.float64).reshape(self.action_dim)
        if not np.all(self.action_low < self.action_high):
            raise ValueError('action_low must be below action_high')
        if (observation_low is None) != (observation_high is None):
            raise ValueError('give both observation_low and observation_high, or neither')
        if observation_low is None:
            center = np.zeros(self.observation_dim)
            scale = np.ones(self.observation_dim)
        else:
            low = np.asarray(observation_low, dtype=np.float64).reshape(self.observation_dim)
            high = np.asarray(observation_high, dtype=np.float64).reshape(self.observation_dim)
            if not np.all(np.isfinite(low) & np.isfinite(high) & (low < high)):
                raise ValueError('observation bounds must be finite with low < high')
            center, scale = 0.5 * (high + low), 0.5 * (high - low)
        self.observation_center, self.observation_scale = center, scale
        self.device = resolve_device(config.device)

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.actor = Actor(
                self.observation_dim,
                self.action_dim,
                config.hidden,
                config.activation,
                center,
                scale,
                self.action_low,
                self.action_high,
                config.log_std_min,
                config.log_std_max,
            ).float()
            self.critic = TwinCritic(
                self.observation_dim,
                self.action_dim,
                config.hidden,
                config.activation,
                center,
                scale,
                self.action_low,
                self.action_high,
            ).float()
        self.actor.to(self.device)
        self.critic.to(self.device)
        self.critic_target = copy.deepcopy(self.critic)
        self.critic_target.requires_grad_(False)
        self.log_alpha = torch.tensor(
            math.log(config.initial_alpha), device=self.device, requires_grad=True
        )
        self.target_entropy = (
            -float(self.action_dim) if config.target_entropy is None else config.target_entropy
        )
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=config.actor_lr)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=config.critic_lr)
        self.alpha_optimizer = torch.optim.Adam([self.log_alpha], lr=config.alpha_lr)
        self._critic_parameters = list(self.critic.parameters())
        self._target_parameters = list(self.critic_target.parameters())

        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(config.seed)
        self.rng = np.random.default_rng(config.seed)
        self.buffer = ReplayBuffer(
            config.buffer_size, self.observation_dim, self.action_dim, self.device
        )
        self.total_updates = 0
        self.total_env_steps = 0
        self.n_train_calls = 0
        self._update_credit = 0.0
        self.last_losses = {'critic_loss': math.nan, 'actor_loss': math.nan}

    # ----------------------------------------------------------------------- acting

    @property
    def alpha(self) -> float:
        """Current entropy temperature."""
        return float(self.log_alpha.detach().exp())

    def act(self, observations: np.ndarray, deterministic: bool = True) -> np.ndarray:
        """Actions (N, m) for observations (N, n), computed with torch."""
        with torch.no_grad():
            obs = torch.as_tensor(np.asarray(observations), dtype=torch.float32).to(self.device)
            if deterministic:
                action = self.actor.deterministic(obs)
            else:
                action, _ = self.actor.sample(obs, self.generator)
        return action.cpu().numpy().astype(np.float64)

    def reset_buffer(self) -> None:
        """Forget stored transitions (they came from a surrogate model now replaced)."""
        self.buffer.clear()

    # ----------------------------------------------------------------------- learning

    def _update(self) -> None:
        config = self.config
        obs, actions, rewards, next_obs, terminated = self.buffer.sample(
            config.batch_size, self.rng
        )
        alpha = self.log_alpha.detach().exp()

        with torch.no_grad():
            next_actions, next_log_prob = self.actor.sample(next_obs, self.generator)
            next_q = self.critic_target(next_obs, next_actions).min(dim=0).values
            target = rewards + config.gamma * (1.0 - terminated) * (next_q - alpha * next_log_prob)
        q = self.critic(obs, actions)
        critic_loss = 0.5 * (q - target.unsqueeze(0)).pow(2).mean(dim=1).sum()
        self.critic_optimizer.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_optimizer.step()

        # Actor step: the critic is frozen so no critic gradients are computed.
        self.critic.requires_grad_(False)
        new_actions, log_prob = self.actor.sample(obs, self.generator)
        q_new = self.critic(obs, new_actions).min(dim=0).values
        actor_loss = (alpha * log_prob - q_new).mean()
        self.actor_optimizer.zero_grad(set_to_none=True)
        actor_loss.backward()
        self.actor_optimizer.step()
        self.critic.requires_grad_(True)

        if config.auto_entropy:
            alpha_loss = -(self.log_alpha * (log_prob.detach() + self.target_entropy)).mean()
            self.alpha_optimizer.zero_grad(set_to_none=True)
            alpha_loss.backward()
            self.alpha_optimizer.step()

        with torch.no_grad():
            torch._foreach_lerp_(self._target_parameters, self._critic_parameters, config.tau)
        self.total_updates += 1
        self._last_critic_loss = critic_loss.detach()
        self._last_actor_loss = actor_loss.detach()

    def train(
        self,
        env: BatchedEnv,
        total_steps: int,
        progress: Callable[[dict], Any] | None = None,
        reset_buffer: bool = False,
    ) -> dict:
        """Collect ``total_steps`` surrogate transitions and learn from them.

        Can be called again with the same or a new environment (Dyna warm start): the
        networks, optimisers and temperature are kept.

        Parameters
        ----------
        env : SurrogateVecEnv-like
            Batched environment (see module docstring); its actions are clipped by it.
        total_steps : int
            Transitions to collect in this call (summed over the n_envs environments).
        progress : callable, optional
            Called every ``config.progress_every`` updates with a dict: ``updates`` (total),
            ``env_steps`` (total), ``mean_episode_return`` (last completed surrogate
            episodes, NaN before the first), ``episodes``, ``alpha``, ``critic_loss``,
            ``actor_loss``, ``wall_time_s``.  Returning True stops training early.
        reset_buffer : bool
            Forget stored transitions first (the surrogate model changed).

        Returns
        -------
        dict
            The same keys as the progress dict for the end of this call, plus
            ``stopped_early`` and ``call_updates``/``call_env_steps`` for this call.
        """
        config = self.config
        if reset_buffer:
            self.reset_buffer()
        previous_threads = torch.get_num_threads()
        if config.num_threads is not None and self.device.type == 'cpu':
            torch.set_num_threads(config.num_threads)
        try:
            return self._train(env, int(total_steps), progress)
        finally:
            if config.num_threads is not None and self.device.type == 'cpu':
                torch.set_num_threads(previous_threads)

    def _train(
        self, env: BatchedEnv, total_steps: int, progress: Callable[[dict], Any] | None
    ) -> dict:
        config = self.config
        start_time = time.perf_counter()
        start_updates, start_env_steps = self.total_updates, self.total_env_steps
        n_envs = int(env.n_envs)
        observations = np.asarray(
            env.reset(seed=config.seed + 1000 * self.n_train_calls), dtype=np.float64
        )
        self.n_train_calls += 1
        episode_returns = np.zeros(n_envs)
        completed: deque[float] = deque(maxlen=config.return_window)
        n_episodes = 0
        random_phase = self.total_updates == 0
        learning_starts = max(config.learning_starts, config.batch_size)
        stopped_early = False

        def report() -> dict:
            return {
                'updates': self.total_updates,
                'env_steps': self.total_env_steps,
                'mean_episode_return': float(np.mean(completed)) if completed else math.nan,
                'episodes': n_episodes,
                'alpha': self.alpha,
                'critic_loss': float(self._last_critic_loss) if self._has_losses() else math.nan,
                'actor_loss': float(self._last_actor_loss) if self._has_losses() else math.nan,
                'wall_time_s': time.perf_counter() - start_time,
            }

        collected = 0
        while collected < total_steps and not stopped_early:
            if random_phase and self.buffer.size < learning_starts:
                actions = self.rng.uniform(
                    self.action_low, self.action_high, (n_envs, self.action_dim)
                )
            else:
                actions = self.act(observations, deterministic=False)
            next_obs, rewards, terminated, truncated = env.step(actions)
            next_obs = np.asarray(next_obs, dtype=np.float64)
            rewards = np.asarray(rewards, dtype=np.float64).reshape(n_envs)
            terminated = np.asarray(terminated, dtype=bool).reshape(n_envs)
            truncated = np.asarray(truncated, dtype=bool).reshape(n_envs)
            finite = np.all(np.isfinite(next_obs), axis=1) & np.isfinite(rewards)
            if finite.all():
                self.buffer.add(observations, actions, rewards, next_obs, terminated)
            else:
                # A surrogate should never return these; drop them rather than learn NaN.
                self.buffer.add(
                    observations[finite],
                    actions[finite],
                    rewards[finite],
                    next_obs[finite],
                    terminated[finite],
                )
                rewards = np.where(finite, rewards, 0.0)
            collected += n_envs
            self.total_env_steps += n_envs
            episode_returns += rewards
            done = terminated | truncated | ~finite
            if done.any():
                for index in np.flatnonzero(done):
                    completed.append(float(episode_returns[index]))
                n_episodes += int(done.sum())
                episode_returns[done] = 0.0
                observations = np.asarray(env.reset_done(done), dtype=np.float64)
            else:
                observations = next_obs

            if self.buffer.size < learning_starts:
                continue
            self._update_credit += config.updates_per_step
            while self._update_credit >= 1.0:
                self._update_credit -= 1.0
                self._update()
                if progress is not None and self.total_updates % config.progress_every == 0:
                    if progress(report()) is True:
                        stopped_early = True
                        break
        result = report()
        result['stopped_early'] = stopped_early
        result['call_updates'] = self.total_updates - start_updates
        result['call_env_steps'] = self.total_env_steps - start_env_steps
        return result

    def _has_losses(self) -> bool:
        return hasattr(self, '_last_critic_loss')

    # ----------------------------------------------------------------------- export

    def export_policy(
        self,
        observation_names: Sequence[str],
        action_names: Sequence[str],
        metadata: dict | None = None,
    ) -> MLPPolicy:
        """The deterministic actor as a numpy :class:`MLPPolicy` (float64 weights).

        The observation normalisation is folded into the first layer:
        ``W1 (x - c) / s + b1 = (W1 / s) x + (b1 - (W1 / s) c)``.
        """
        if len(observation_names) != self.observation_dim:
            raise ValueError(f'expected {self.observation_dim} observation names')
        if len(action_names) != self.action_dim:
            raise ValueError(f'expected {self.action_dim} action names')
        # The buffers as the actor holds them (float32-rounded), so numpy == torch.
        center = self.actor.observation_center.detach().cpu().double().numpy()
        scale = self.actor.observation_scale.detach().cpu().double().numpy()
        layers = []
        for index, linear in enumerate(self.actor.trunk):
            weight = linear.weight.detach().cpu().double().numpy().copy()
            bias = linear.bias.detach().cpu().double().numpy().copy()
            if index == 0:
                weight = weight / scale[None, :]
                bias = bias - weight @ center
            layers.append((weight, bias))
        head_weight = self.actor.head.weight.detach().cpu().double().numpy()
        head_bias = self.actor.head.bias.detach().cpu().double().numpy()
        layers.append((head_weight[: self.action_dim].copy(), head_bias[: self.action_dim].copy()))
        info = {
            'trainer': 'sac',
            'updates': self.total_updates,
            'env_steps': self.total_env_steps,
            'sac_config': self.config.to_dict(),
        }
        info.update(metadata or {})
        return MLPPolicy(
            layers,
            self.config.activation,
            observation_names,
            action_names,
            self.action_low,
            self.action_high,
            info,
        )
