"""dm_control suite tasks as gymnasium environments (the SINDy-RL paper's cartpole swing-up).

The plant node and the evaluation code speak gymnasium; dm_control speaks ``TimeStep``s
with observation dictionaries.  :class:`DmControlGymEnv` translates: the observation is
the concatenation of the dm_control observation entries in their spec order (for
cartpole: position ``(x, cos θ, sin θ)`` then velocity ``(ẋ, θ̇)``), the reward is
dm_control's, and dm_control's time limit becomes gymnasium truncation.

dm_control (and MuJoCo) are imported when the first environment is built, so importing
this module stays cheap.
"""

from __future__ import annotations

import os
from typing import Any

import gymnasium
from gymnasium import spaces
import numpy as np

__all__ = ['DmControlGymEnv', 'DM_CARTPOLE_SWINGUP_ID', 'register_envs']

DM_CARTPOLE_SWINGUP_ID = 'sindyrl_ros/DmCartpoleSwingup-v0'


def _load_suite_env(domain: str, task: str, seed: int | None, environment_kwargs: dict):
    # Headless machines have no display for GLFW; EGL renders off-screen.  A choice made
    # by the user (MUJOCO_GL) or a display wins.
    if 'MUJOCO_GL' not in os.environ and not os.environ.get('DISPLAY'):
        os.environ['MUJOCO_GL'] = 'egl'
    from dm_control import suite

    return suite.load(
        domain, task, task_kwargs={'random': seed}, environment_kwargs=environment_kwargs
    )


class DmControlGymEnv(gymnasium.Env):
    """A dm_control suite task behind the gymnasium API.

    Parameters
    ----------
    domain, task : str
        dm_control suite domain and task (default the cartpole swing-up).
    seed : int, optional
        Seed of the task's initial-state randomness; ``reset(seed=...)`` reseeds it.
    environment_kwargs : dict, optional
        Passed to ``suite.load`` (e.g. ``{'flat_observation': False}``).

    Notes
    -----
    Observation: float64 vector, the observation entries flattened in spec order.
    Action: float64 Box with the task's action limits ([-1, 1] for cartpole).
    Reward: dm_control's reward for the step.  ``truncated`` is True at the time limit
    (1000 steps of 0.01 s for cartpole); dm_control tasks never terminate otherwise
    unless their discount drops to 0, which is reported as ``terminated``.
    """

    metadata = {'render_modes': ['rgb_array'], 'render_fps': 30}

    def __init__(
        self,
        domain: str = 'cartpole',
        task: str = 'swingup',
        seed: int | None = None,
        environment_kwargs: dict | None = None,
        render_mode: str | None = None,
    ) -> None:
        super().__init__()
        if render_mode not in (None, 'rgb_array'):
            raise ValueError(f'unsupported render_mode {render_mode!r}')
        self.domain, self.task = domain, task
        self.render_mode = render_mode
        self._environment_kwargs = dict(environment_kwargs or {})
        self._env = _load_suite_env(domain, task, seed, self._environment_kwargs)
        observation_spec = self._env.observation_spec()
        self._observation_keys = list(observation_spec.keys())
        sizes = [int(np.prod(spec.shape)) for spec in observation_spec.values()]
        self._observation_slices = []
        offset = 0
        for size in sizes:
            self._observation_slices.append(slice(offset, offset + size))
            offset += size
        self.observation_space = spaces.Box(-np.inf, np.inf, (offset,), np.float64)
        action_spec = self._env.action_spec()
        self.action_space = spaces.Box(
            np.asarray(action_spec.minimum, dtype=np.float64).reshape(action_spec.shape),
            np.asarray(action_spec.maximum, dtype=np.float64).reshape(action_spec.shape),
            action_spec.shape,
            np.float64,
        )
        self.control_timestep = float(self._env.control_timestep())
        self._observation = np.zeros(offset)
        self._needs_reset = True

    @property
    def dm_env(self) -> Any:
        """The wrapped dm_control environment (physics, task)."""
        return self._env

    def _flatten(self, observation: dict) -> np.ndarray:
        out = np.empty(self.observation_space.shape[0])
        for key, where in zip(self._observation_keys, self._observation_slices, strict=True):
            out[where] = np.asarray(observation[key], dtype=np.float64).ravel()
        return out

    def reset(
        self, *, seed: int | None = None, options: dict | None = None
    ) -> tuple[np.ndarray, dict]:
        """Start an episode; a seed rebuilds the task with that seed (reproducible)."""
        super().reset(seed=seed)
        if seed is not None:
            self._env = _load_suite_env(self.domain, self.task, seed, self._environment_kwargs)
        time_step = self._env.reset()
        self._needs_reset = False
        return self._flatten(time_step.observation), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        """Apply one action (clipped to the limits) for one control period."""
        if self._needs_reset:
            raise RuntimeError('call reset() before step() (episode ended or not started)')
        action = np.clip(
            np.asarray(action, dtype=np.float64).reshape(self.action_space.shape),
            self.action_space.low,
            self.action_space.high,
        )
        time_step = self._env.step(action)
        observation = self._flatten(time_step.observation)
        reward = float(time_step.reward) if time_step.reward is not None else 0.0
        terminated = truncated = False
        if time_step.last():
            self._needs_reset = True
            # dm_control: discount 0 at the end means a true terminal state.
            if time_step.discount is not None and float(time_step.discount) == 0.0:
                terminated = True
            else:
                truncated = True
        return observation, reward, terminated, truncated, {}

    def render(self) -> np.ndarray | None:
        if self.render_mode == 'rgb_array':
            return self._env.physics.render(height=240, width=320, camera_id=0)
        return None

    def close(self) -> None:
        close = getattr(self._env, 'close', None)
        if close is not None:
            close()


def register_envs() -> None:
    """Register the dm_control environments with gymnasium (idempotent)."""
    if DM_CARTPOLE_SWINGUP_ID not in gymnasium.registry:
        gymnasium.register(
            id=DM_CARTPOLE_SWINGUP_ID,
            entry_point='sindyrl_ros.core.envs:DmControlGymEnv',
            kwargs={'domain': 'cartpole', 'task': 'swingup'},
            # dm_control enforces its own time limit; no second TimeLimit wrapper.
            max_episode_steps=None,
            disable_env_checker=True,
        )


register_envs()
