"""The torch pieces of SAC: actor, twin critic and replay buffer.

:class:`~sindyrl_ros.core.sac.SACTrainer` builds them and runs the updates; they hold no
training logic.  Observations are normalised inside the networks with fixed centres and
scales, so learning rates mean the same on every robot.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import math

import numpy as np
import torch
from torch import nn
import torch.nn.functional as functional

__all__ = ['Actor', 'TwinCritic', 'ReplayBuffer']

_LOG_2 = math.log(2.0)
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def _activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    return torch.relu if name == 'relu' else torch.tanh


class Actor(nn.Module):
    """Tanh-squashed Gaussian policy with fixed observation normalisation.

    ``observation -> (observation - center) / scale -> hidden layers -> [mean, log_std]``;
    the deterministic action is ``tanh(mean) * action_scale + action_bias``.
    """

    def __init__(
        self,
        observation_dim: int,
        action_dim: int,
        hidden: Sequence[int],
        activation: str,
        observation_center: np.ndarray,
        observation_scale: np.ndarray,
        action_low: np.ndarray,
        action_high: np.ndarray,
        log_std_min: float,
        log_std_max: float,
    ) -> None:
        super().__init__()
        sizes = [observation_dim, *hidden]
        self.trunk = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        # One head for mean and log_std: one matmul instead of two.
        self.head = nn.Linear(sizes[-1], 2 * action_dim)
        self.action_dim = action_dim
        self.activation_name = activation
        self._act = _activation(activation)
        self.log_std_min, self.log_std_max = log_std_min, log_std_max
        self.register_buffer('observation_center', torch.as_tensor(observation_center))
        self.register_buffer('observation_scale', torch.as_tensor(observation_scale))
        low, high = np.asarray(action_low), np.asarray(action_high)
        self.register_buffer('action_scale', torch.as_tensor(0.5 * (high - low)))
        self.register_buffer('action_bias', torch.as_tensor(0.5 * (high + low)))

    def _features(self, observations: torch.Tensor) -> torch.Tensor:
        h = (observations - self.observation_center) / self.observation_scale
        for layer in self.trunk:
            h = self._act(layer(h))
        return h

    def mean_and_log_std(self, observations: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pre-squash mean and log standard deviation, each (N, m)."""
        out = self.head(self._features(observations))
        mean, log_std = out[:, : self.action_dim], out[:, self.action_dim :]
        return mean, log_std.clamp(self.log_std_min, self.log_std_max)

    def deterministic(self, observations: torch.Tensor) -> torch.Tensor:
        """Deterministic action (N, m) in the action limits: tanh(mean), scaled."""
        mean, _ = self.mean_and_log_std(observations)
        return torch.tanh(mean) * self.action_scale + self.action_bias

    def sample(
        self, observations: torch.Tensor, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Reparameterised sample (N, m) in the limits and its log-probability (N,)."""
        mean, log_std = self.mean_and_log_std(observations)
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        pre_squash = mean + log_std.exp() * noise
        # log N(u; mean, std) - log(1 - tanh(u)^2), the latter written stably.
        log_prob = (-0.5 * noise.pow(2) - log_std - _HALF_LOG_2PI).sum(dim=1)
        squash_correction = 2.0 * (_LOG_2 - pre_squash - functional.softplus(-2.0 * pre_squash))
        log_prob = log_prob - squash_correction.sum(dim=1)
        action = torch.tanh(pre_squash) * self.action_scale + self.action_bias
        return action, log_prob


class TwinCritic(nn.Module):
    """Two Q networks evaluated as one batched network: weights (2, in, out)."""

    def __init__(
        self,
        observation_dim: int,
        action_dim: int,
        hidden: Sequence[int],
        activation: str,
        observation_center: np.ndarray,
        observation_scale: np.ndarray,
        action_low: np.ndarray,
        action_high: np.ndarray,
    ) -> None:
        super().__init__()
        sizes = [observation_dim + action_dim, *hidden, 1]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for n_in, n_out in zip(sizes[:-1], sizes[1:]):
            # nn.Linear's default initialisation, for each of the two critics.
            bound = 1.0 / math.sqrt(n_in)
            self.weights.append(nn.Parameter(torch.empty(2, n_in, n_out).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(2, 1, n_out).uniform_(-bound, bound)))
        self._act = _activation(activation)
        low, high = np.asarray(action_low), np.asarray(action_high)
        center = np.concatenate([observation_center, 0.5 * (high + low)])
        scale = np.concatenate([observation_scale, 0.5 * (high - low)])
        self.register_buffer('input_center', torch.as_tensor(center))
        self.register_buffer('input_scale', torch.as_tensor(scale))

    def forward(self, observations: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Q values of both critics, shape (2, N)."""
        h = (torch.cat([observations, actions], dim=1) - self.input_center) / self.input_scale
        h = h.unsqueeze(0).expand(2, -1, -1)
        last = len(self.weights) - 1
        for index, (weight, bias) in enumerate(zip(self.weights, self.biases)):
            h = torch.baddbmm(bias, h, weight)
            if index < last:
                h = self._act(h)
        return h.squeeze(-1)


class ReplayBuffer:
    """Ring buffer of transitions stored as tensors on the training device."""

    def __init__(
        self, capacity: int, observation_dim: int, action_dim: int, device: torch.device
    ) -> None:
        self.capacity = capacity
        self.device = device

        def zeros(*shape: int) -> torch.Tensor:
            return torch.zeros(shape, dtype=torch.float32, device=device)

        self.observations = zeros(capacity, observation_dim)
        self.actions = zeros(capacity, action_dim)
        self.rewards = zeros(capacity)
        self.next_observations = zeros(capacity, observation_dim)
        self.terminated = zeros(capacity)
        self.size = 0
        self.position = 0

    def clear(self) -> None:
        self.size = 0
        self.position = 0

    def add(
        self,
        observations: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        next_observations: np.ndarray,
        terminated: np.ndarray,
    ) -> None:
        count = len(observations)
        indices = (self.position + np.arange(count)) % self.capacity
        index_tensor = torch.from_numpy(indices).to(self.device)

        def put(buffer: torch.Tensor, values: np.ndarray) -> None:
            tensor = torch.as_tensor(np.asarray(values, dtype=np.float32), device=self.device)
            buffer.index_copy_(0, index_tensor, tensor)

        put(self.observations, observations)
        put(self.actions, actions)
        put(self.rewards, rewards)
        put(self.next_observations, next_observations)
        put(self.terminated, terminated)
        self.position = int((self.position + count) % self.capacity)
        self.size = min(self.size + count, self.capacity)

    def sample(self, batch_size: int, rng: np.random.Generator) -> tuple[torch.Tensor, ...]:
        indices = torch.from_numpy(rng.integers(0, self.size, batch_size)).to(self.device)
        return (
            self.observations.index_select(0, indices),
            self.actions.index_select(0, indices),
            self.rewards.index_select(0, indices),
            self.next_observations.index_select(0, indices),
            self.terminated.index_select(0, indices),
        )
