"""dm_control suite tasks as gymnasium environments (the SINDy-RL paper's cartpole swing-up).

The plant node and the evaluation code speak gymnasium; dm_control speaks ``TimeStep``s
with observation dictionaries.  Shimmy's ``DmControlCompatibilityV0`` translates, and
gymnasium's ``FlattenObservation`` makes the dictionary one vector: for cartpole
position ``(x, cos θ, sin θ)`` then velocity ``(ẋ, θ̇)``.  The reward is dm_control's and
dm_control's time limit becomes gymnasium truncation.  Shimmy replaced a hand-written
wrapper: for seeds 0..4, 300 random actions, re-seeding an existing environment and a
full 1000-step episode, observations, rewards and flags were bit-identical.

dm_control, MuJoCo and shimmy are imported when the first environment is built, so
importing this module stays cheap.
"""

from __future__ import annotations

import os

import gymnasium

__all__ = ['DM_CARTPOLE_SWINGUP_ID', 'make_dm_control_env', 'register_envs']

DM_CARTPOLE_SWINGUP_ID = 'sindyrl_ros/DmCartpoleSwingup-v0'


def make_dm_control_env(
    domain: str = 'cartpole',
    task: str = 'swingup',
    seed: int | None = None,
    environment_kwargs: dict | None = None,
    render_mode: str | None = None,
) -> gymnasium.Env:
    """A dm_control suite task behind the gymnasium API (shimmy, flattened observations).

    Parameters
    ----------
    domain, task : str
        dm_control suite domain and task (default the cartpole swing-up).
    seed : int, optional
        Seed of the task's initial-state randomness; ``reset(seed=...)`` reseeds it.
    environment_kwargs : dict, optional
        Passed to ``suite.load`` (e.g. ``{'flat_observation': True}``).
    render_mode : str, optional
        One of shimmy's modes; ``'rgb_array'`` renders 320x240 from camera 0.

    Notes
    -----
    Observation: float64 vector, the observation entries flattened in key order (gymnasium
    sorts a ``Dict`` space's keys; for cartpole that is the spec order).
    Action: float64 Box with the task's action limits ([-1, 1] for cartpole); MuJoCo clamps
    an action outside them (``ctrllimited``).
    Reward: dm_control's reward for the step.  ``truncated`` is True at the time limit
    (1000 steps of 0.01 s for cartpole); dm_control tasks never terminate otherwise
    unless their discount drops to 0, which is reported as ``terminated``.  Reset after an
    episode ends: a further step is dm_control's own restart (reward 0, no flags).
    The control period is ``env.unwrapped.dt`` (seconds); shimmy forwards other attributes
    to the dm_control environment (``env.unwrapped.physics``, ``env.unwrapped.task``).
    """
    # Headless machines have no display for GLFW; EGL renders off-screen.  A choice made
    # by the user (MUJOCO_GL) or a display wins.  Set before shimmy imports dm_control.
    if 'MUJOCO_GL' not in os.environ and not os.environ.get('DISPLAY'):
        os.environ['MUJOCO_GL'] = 'egl'
    from dm_control import suite
    from gymnasium.wrappers import FlattenObservation
    from shimmy.dm_control_compatibility import DmControlCompatibilityV0

    dm_env = suite.load(
        domain,
        task,
        task_kwargs={'random': seed},
        environment_kwargs=dict(environment_kwargs or {}),
    )
    render_kwargs = {'height': 240, 'width': 320}
    if render_mode != 'multi_camera':  # multi_camera draws every camera
        render_kwargs['camera_id'] = 0
    env = DmControlCompatibilityV0(dm_env, render_mode=render_mode, render_kwargs=render_kwargs)
    # shimmy 2.0.1 writes the control period in ms (10 for cartpole) into the class's
    # render_fps; this instance says the real rate.
    env.metadata = {**env.metadata, 'render_fps': 1.0 / env.dt}
    return FlattenObservation(env)


def register_envs() -> None:
    """Register the dm_control environments with gymnasium (idempotent)."""
    if DM_CARTPOLE_SWINGUP_ID not in gymnasium.registry:
        gymnasium.register(
            id=DM_CARTPOLE_SWINGUP_ID,
            entry_point='sindyrl_ros.core.envs:make_dm_control_env',
            kwargs={'domain': 'cartpole', 'task': 'swingup'},
            # dm_control enforces its own time limit; no second TimeLimit wrapper.
            max_episode_steps=None,
            disable_env_checker=True,
        )


register_envs()
