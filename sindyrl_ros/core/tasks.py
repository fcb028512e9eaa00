"""Task registry: which real environment, which signals, limits, reward and success target.

A :class:`TaskSpec` holds everything the SINDy-RL loop needs to know about a robot task
besides the data: the gymnasium environment that plays the real plant, the names of the
observation features and actions (the topic contract maps joints by these names), the
action limits, which observation pairs are (cos, sin) of an angle, the reward, the
return that counts as solved, the episode length, the control period and the bounds
outside which a surrogate state is treated as diverged.

Built-in tasks are in :data:`TASKS`; a configuration file can define another gymnasium
task with :meth:`TaskSpec.from_dict`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
import math
from typing import Any, NamedTuple

import gymnasium
import numpy as np

from sindyrl_ros.core.serialization import FormatError, as_float_array, require

__all__ = [
    'TaskSpec',
    'TASKS',
    'get_task',
    'evaluate_policy',
    'PolicyEvaluation',
]

_REQUIRED_FIELDS = (
    'name',
    'env_id',
    'observation_names',
    'action_names',
    'action_low',
    'action_high',
    'reward',
    'threshold',
    'episode_length',
    'dt',
    'observation_low',
    'observation_high',
)


@dataclass(eq=False)  # holds arrays: compare with to_dict()
class TaskSpec:
    """A robot task for SINDy-RL.

    Attributes
    ----------
    name : str
        Registry key, e.g. ``'pendulum'``.
    env_id : str
        gymnasium id of the simulated plant (``'module:Env-v0'`` imports ``module`` first);
        empty for a robot without a simulator (then only a real plant provides data).
    observation_names : tuple of str, length n
    action_names : tuple of str, length m
    action_low, action_high : ndarray, shape (m,)
        Action limits.
    angle_pairs : tuple of (int, int)
        Indices of (cos θ, sin θ) observation pairs, kept on the unit circle by the model.
    reward : str
        Name in ``sindyrl_ros.core.reward.REWARDS``, an expression of the observation
        and action names (see ``expression_reward``), or ``'learned'`` (fitted from the
        rewards the plant reports: see ``SparseRewardModel``).
    threshold : float
        Mean episode return that counts as solved.
    episode_length : int
        Steps per episode (real and surrogate).
    dt : float
        Control period in seconds.
    observation_low, observation_high : ndarray, shape (n,)
        Bounds of plausible observations: a surrogate state outside is a divergence.
    env_kwargs : dict
        Keyword arguments of ``gymnasium.make``.
    saturation : dict
        ``{observation name: (low, high)}`` where the plant clips a feature.
    termination : str
        Expression of the observation names (the observation after a step; the reward
        expression's whitelist) that ends an episode where it is true, e.g.
        ``'abs(theta) > 0.2'``; empty = episodes end only after ``episode_length`` steps
        (or when the simulator says so).
    """

    name: str
    env_id: str
    observation_names: tuple[str, ...]
    action_names: tuple[str, ...]
    action_low: np.ndarray
    action_high: np.ndarray
    angle_pairs: tuple[tuple[int, int], ...]
    reward: str
    threshold: float
    episode_length: int
    dt: float
    observation_low: np.ndarray
    observation_high: np.ndarray
    env_kwargs: dict = field(default_factory=dict)
    saturation: dict = field(default_factory=dict)
    termination: str = ''

    def __post_init__(self) -> None:
        where = f'task {self.name!r}'
        for label in ('observation_names', 'action_names'):
            names = getattr(self, label)
            if isinstance(names, str) or not all(isinstance(s, str) and s for s in names):
                raise FormatError(f'{where}.{label}: expected a list of non-empty strings')
            if len(set(names)) != len(names) or not names:
                raise FormatError(f'{where}.{label}: names must be unique and not empty')
            setattr(self, label, tuple(names))
        n, m = len(self.observation_names), len(self.action_names)
        self.action_low = as_float_array(self.action_low, (m,), f'{where}.action_low')
        self.action_high = as_float_array(self.action_high, (m,), f'{where}.action_high')
        if np.any(self.action_low >= self.action_high):
            raise FormatError(f'{where}.action_low: must be below action_high')
        self.observation_low = as_float_array(
            self.observation_low, (n,), f'{where}.observation_low'
        )
        self.observation_high = as_float_array(
            self.observation_high, (n,), f'{where}.observation_high'
        )
        if np.any(self.observation_low >= self.observation_high):
            raise FormatError(f'{where}.observation_low: must be below observation_high')
        pairs = []
        for pair in self.angle_pairs:
            if len(pair) != 2 or not all(isinstance(i, (int, np.integer)) for i in pair):
                raise FormatError(f'{where}.angle_pairs: {pair!r} is not a pair of indices')
            i, j = int(pair[0]), int(pair[1])
            if not (0 <= i < n and 0 <= j < n) or i == j:
                raise FormatError(f'{where}.angle_pairs: {pair!r} out of range for n={n}')
            pairs.append((i, j))
        flat = [i for pair in pairs for i in pair]
        if len(set(flat)) != len(flat):
            raise FormatError(f'{where}.angle_pairs: an index is used twice')
        self.angle_pairs = tuple(pairs)
        if not isinstance(self.reward, str) or not self.reward.strip():
            raise FormatError(f'{where}.reward: expected a reward name or expression')
        if not math.isfinite(float(self.threshold)):
            raise FormatError(f'{where}.threshold: must be finite')
        self.threshold = float(self.threshold)
        if int(self.episode_length) != self.episode_length or self.episode_length < 1:
            raise FormatError(f'{where}.episode_length: must be a positive integer')
        self.episode_length = int(self.episode_length)
        if not (math.isfinite(float(self.dt)) and self.dt > 0):
            raise FormatError(f'{where}.dt: must be a positive number of seconds')
        self.dt = float(self.dt)
        if not isinstance(self.env_kwargs, dict):
            raise FormatError(f'{where}.env_kwargs: expected an object')
        if not isinstance(self.saturation, dict):
            raise FormatError(f'{where}.saturation: expected {{observation name: [low, high]}}')
        saturation = {}
        for name, limits in self.saturation.items():
            if name not in self.observation_names:
                raise FormatError(f'{where}.saturation: {name!r} is not an observation name')
            low, high = as_float_array(limits, (2,), f'{where}.saturation.{name}')
            if not low < high:
                raise FormatError(f'{where}.saturation.{name}: low must be below high')
            saturation[name] = (float(low), float(high))
        self.saturation = saturation
        if not isinstance(self.env_id, str):
            raise FormatError(f'{where}.env_id: expected a gymnasium id or an empty string')
        if not isinstance(self.termination, str):
            raise FormatError(f'{where}.termination: expected an expression or an empty string')
        self.termination = self.termination.strip()

    @property
    def has_simulator(self) -> bool:
        """Whether a gymnasium environment plays this task's plant (``env_id`` given)."""
        return bool(self.env_id)

    @property
    def observation_dim(self) -> int:
        return len(self.observation_names)

    @property
    def action_dim(self) -> int:
        return len(self.action_names)

    def make_env(self, seed: int | None = None, **overrides: Any) -> gymnasium.Env:
        """Build the real environment; with a seed, its next episodes are reproducible.

        The observation and action spaces are checked against the task's names.

        Raises
        ------
        ValueError
            For a task without a simulator (no ``env_id``).
        """
        if not self.env_id:
            raise ValueError(
                f'task {self.name!r} has no simulator (no env_id): it runs on a real plant '
                '(backend ros2_control, gazebo or serial)'
            )
        if self.env_id.startswith('sindyrl_ros/'):
            from sindyrl_ros.core import envs

            envs.register_envs()
        env = gymnasium.make(self.env_id, **{**self.env_kwargs, **overrides})
        observation_shape = getattr(env.observation_space, 'shape', None)
        action_shape = getattr(env.action_space, 'shape', None)
        if observation_shape != (self.observation_dim,):
            env.close()
            raise ValueError(
                f'task {self.name!r}: {self.env_id} observations have shape '
                f'{observation_shape}, the task names {self.observation_dim} features'
            )
        if action_shape != (self.action_dim,):
            env.close()
            raise ValueError(
                f'task {self.name!r}: {self.env_id} actions have shape {action_shape}, '
                f'the task names {self.action_dim} actions'
            )
        if seed is not None:
            env.reset(seed=seed)
            env.action_space.seed(seed)
        return env

    def reward_function(self) -> Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]:
        """Vectorised reward ``fn(observations, actions, next_observations) -> (N,)``.

        Raises
        ------
        ValueError
            For a learned reward (it comes with each model, not with the task) and for an
            expression that does not parse or uses anything not allowed.
        """
        from sindyrl_ros.core import reward
        from sindyrl_ros.core.reward_expression import expression_reward

        if self.reward == reward.LEARNED_REWARD:
            raise ValueError(
                f'task {self.name!r} learns its reward: use the SparseRewardModel that comes '
                'with each model'
            )
        if self.reward in reward.REWARDS:
            return reward.REWARDS[self.reward]
        return expression_reward(self.reward, self.observation_names, self.action_names)

    def termination_function(self) -> Callable[[np.ndarray], np.ndarray] | None:
        """``fn(observations (N, n)) -> bool (N,)`` from ``termination``; None without one.

        A non-finite value of the expression counts as terminated (the state left what the
        expression can judge).

        Raises
        ------
        ValueError
            For an expression that does not parse or uses anything not allowed.
        """
        if not self.termination:
            return None
        from sindyrl_ros.core.reward_expression import expression_reward

        expression = expression_reward(self.termination, self.observation_names, ())

        def terminated(observations: np.ndarray) -> np.ndarray:
            observations = np.atleast_2d(np.asarray(observations, dtype=np.float64))
            actions = np.empty((observations.shape[0], 0))
            value = expression(observations, actions, observations)
            return ~np.isfinite(value) | (value != 0.0)

        terminated.expression = self.termination  # type: ignore[attr-defined]
        return terminated

    def to_dict(self) -> dict:
        """JSON-ready dict, readable back by :meth:`from_dict`."""
        return {
            'name': self.name,
            'env_id': self.env_id,
            'observation_names': list(self.observation_names),
            'action_names': list(self.action_names),
            'action_low': self.action_low.tolist(),
            'action_high': self.action_high.tolist(),
            'angle_pairs': [list(pair) for pair in self.angle_pairs],
            'reward': self.reward,
            'threshold': self.threshold,
            'episode_length': self.episode_length,
            'dt': self.dt,
            'observation_low': self.observation_low.tolist(),
            'observation_high': self.observation_high.tolist(),
            'env_kwargs': dict(self.env_kwargs),
            'saturation': {name: list(limits) for name, limits in self.saturation.items()},
            'termination': self.termination,
        }

    @classmethod
    def from_dict(cls, document: Any, where: str = 'task') -> TaskSpec:
        """Define a task from a configuration dict (e.g. loaded from YAML or JSON).

        Required keys: ``name``, ``env_id``, ``observation_names``, ``action_names``,
        ``action_low``, ``action_high``, ``reward``, ``threshold``, ``episode_length``,
        ``dt``, ``observation_low``, ``observation_high``; optional: ``angle_pairs``
        (default none), ``env_kwargs``, ``saturation``, ``termination``. ``env_id`` may
        be empty (a robot without a simulator).

        Raises
        ------
        FormatError
            Naming the missing or invalid field.
        """
        if not isinstance(document, dict):
            raise FormatError(f'{where}: expected a mapping, got {type(document).__name__}')
        missing = [key for key in _REQUIRED_FIELDS if key not in document]
        if missing:
            raise FormatError(f'{where}: missing field(s) {missing}')
        optional = {'angle_pairs', 'env_kwargs', 'saturation', 'termination'}
        known = set(_REQUIRED_FIELDS) | optional
        unknown = sorted(set(document) - known)
        if unknown:
            raise FormatError(f'{where}: unknown field(s) {unknown}; known: {sorted(known)}')
        name = require(document, 'name', str, where)
        where = f'{where} {name!r}'
        n_actions = len(require(document, 'action_names', (list, tuple), where))
        limits = {}
        for key in ('action_low', 'action_high'):
            value = require(document, key, (list, tuple, int, float), where)
            # A single number applies to every action channel.
            limits[key] = [value] * n_actions if isinstance(value, (int, float)) else value
        angle_pairs = document.get('angle_pairs', [])
        if not isinstance(angle_pairs, (list, tuple)):
            raise FormatError(f'{where}.angle_pairs: expected a list of [cos, sin] index pairs')
        return cls(
            name=name,
            env_id=require(document, 'env_id', str, where),
            observation_names=tuple(require(document, 'observation_names', (list, tuple), where)),
            action_names=tuple(require(document, 'action_names', (list, tuple), where)),
            action_low=limits['action_low'],
            action_high=limits['action_high'],
            angle_pairs=tuple(tuple(pair) for pair in angle_pairs),
            reward=require(document, 'reward', str, where),
            threshold=require(document, 'threshold', (int, float), where),
            episode_length=require(document, 'episode_length', int, where),
            dt=require(document, 'dt', (int, float), where),
            observation_low=require(document, 'observation_low', (list, tuple), where),
            observation_high=require(document, 'observation_high', (list, tuple), where),
            env_kwargs=document.get('env_kwargs', {}) or {},
            saturation=document.get('saturation', {}) or {},
            termination=document.get('termination', '') or '',
        )


TASKS: dict[str, TaskSpec] = {
    'pendulum': TaskSpec(
        name='pendulum',
        env_id='Pendulum-v1',
        observation_names=('cos_theta', 'sin_theta', 'theta_dot'),
        action_names=('torque',),
        action_low=np.array([-2.0]),
        action_high=np.array([2.0]),
        angle_pairs=((0, 1),),
        reward='pendulum',
        threshold=-200.0,
        episode_length=200,
        dt=0.05,
        # theta_dot is clipped to ±8 by the plant; a model may overshoot a little.
        observation_low=np.array([-1.1, -1.1, -9.0]),
        observation_high=np.array([1.1, 1.1, 9.0]),
        # Pendulum-v1 clips θ̇ to ±8 rad/s; a polynomial cannot fit a clip, so the model
        # leaves clipped transitions out of the fit and clips its predictions likewise.
        saturation={'theta_dot': (-8.0, 8.0)},
    ),
    'cartpole_swingup': TaskSpec(
        name='cartpole_swingup',
        env_id='sindyrl_ros/DmCartpoleSwingup-v0',
        observation_names=('cart_x', 'cos_theta', 'sin_theta', 'cart_x_dot', 'theta_dot'),
        action_names=('force',),
        action_low=np.array([-1.0]),
        action_high=np.array([1.0]),
        angle_pairs=((1, 2),),
        reward='cartpole_swingup',
        threshold=800.0,
        episode_length=1000,
        dt=0.01,
        # The rail's end stops are at ±1.8 m (hit up to ≈1.97 m under full force): a smooth
        # model cannot describe the impact, so data beyond ±1.75 m is left out of the fit
        # and surrogate episodes end there. |ẋ| ≤ 5.6 m/s and |θ̇| ≤ 7.2 rad/s were measured
        # under bang-bang forcing.
        observation_low=np.array([-1.75, -1.1, -1.1, -10.0, -20.0]),
        observation_high=np.array([1.75, 1.1, 1.1, 10.0, 20.0]),
    ),
}


def get_task(name: str) -> TaskSpec:
    """A registered task by name (KeyError lists the known ones)."""
    try:
        return TASKS[name]
    except KeyError:
        raise KeyError(f'unknown task {name!r}; known tasks: {sorted(TASKS)}') from None


class PolicyEvaluation(NamedTuple):
    """Deterministic evaluation on the real environment."""

    mean_return: float
    returns: np.ndarray  # (episodes,)
    steps: int  # real environment steps used


def evaluate_policy(
    task_or_env_factory: TaskSpec | str | Callable[[], gymnasium.Env],
    policy: Callable[[np.ndarray], np.ndarray],
    episodes: int = 10,
    seed: int = 0,
    max_steps: int | None = None,
) -> PolicyEvaluation:
    """Run deterministic episodes of a policy on the real environment.

    Episode ``i`` starts from ``reset(seed=seed + i)``, so two policies are compared on
    the same initial states.

    Parameters
    ----------
    task_or_env_factory : TaskSpec, task name or callable returning a gymnasium.Env
    policy : callable
        Observation (n,) -> action (m,), e.g. a :class:`NumpyPolicy`.
    episodes : int
    seed : int
    max_steps : int, optional
        Cap on steps per episode (default: the task's episode length; for a bare
        factory, the environment's own time limit, with a 1e6 safety cap).

    Returns
    -------
    PolicyEvaluation
        ``(mean_return, returns (episodes,), steps)``; ``steps`` counts the real steps
        used, which SINDy-RL's sample-efficiency accounting needs.
    """
    if isinstance(task_or_env_factory, str):
        task_or_env_factory = get_task(task_or_env_factory)
    if isinstance(task_or_env_factory, TaskSpec):
        env = task_or_env_factory.make_env()
        limit = task_or_env_factory.episode_length if max_steps is None else max_steps
    else:
        env = task_or_env_factory()
        limit = 1_000_000 if max_steps is None else max_steps
    returns = np.zeros(episodes)
    steps = 0
    try:
        for episode in range(episodes):
            observation, _ = env.reset(seed=seed + episode)
            for _ in range(limit):
                action = np.array(policy(np.asarray(observation, dtype=np.float64)))
                observation, reward, terminated, truncated, _ = env.step(action)
                returns[episode] += float(reward)
                steps += 1
                if terminated or truncated:
                    break
    finally:
        env.close()
    return PolicyEvaluation(float(returns.mean()) if episodes else math.nan, returns, steps)
