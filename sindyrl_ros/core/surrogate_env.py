"""The batched SINDy surrogate as a :class:`gymnasium.vector.VectorEnv`.

:class:`~sindyrl_ros.core.surrogate.SurrogateVecEnv` is what this package's own SAC trainer
(and the Dyna loop) step: no automatic reset, ``reset_done`` restarts finished episodes.
:class:`SurrogateVectorEnv` puts the standard gymnasium vector API on top of it, so any RL
library that trains on a gymnasium ``VectorEnv`` (CleanRL, TorchRL, or SB3 through a thin
``VecEnv`` adapter) can train on the surrogate:

* ``single_observation_space`` / ``single_action_space`` are ``Box`` spaces built from the
  surrogate's observation bounds and action limits; ``observation_space`` / ``action_space``
  are their batched versions (:func:`gymnasium.vector.utils.batch_space`);
* ``reset(seed=, options=)`` returns ``(observations, infos)``, ``step(actions)`` returns
  ``(observations, rewards, terminations, truncations, infos)``;
* finished episodes restart by themselves as ``metadata['autoreset_mode']`` says
  (:class:`gymnasium.vector.AutoresetMode`, ``NEXT_STEP`` by default, as gymnasium's own
  vector environments do; ``SAME_STEP`` and ``DISABLED`` on request).

The wrapper adds no dynamics of its own: observations, rewards, terminations and
truncations are exactly those of the wrapped ``SurrogateVecEnv`` (observations cast to the
spaces' dtype), with its safeguards (finite values, termination when the model's domain is
left). All environments share the surrogate's one random generator, so ``reset(seed=s)``
takes a single integer and makes the whole batch reproducible.
"""

from __future__ import annotations

from typing import Any

from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space
import numpy as np

from sindyrl_ros.core.dynamics import SindyDynamics
from sindyrl_ros.core.surrogate import RewardFunction, SurrogateVecEnv

__all__ = ['SurrogateVectorEnv']


class SurrogateVectorEnv(VectorEnv):
    """A :class:`SurrogateVecEnv` seen as a gymnasium ``VectorEnv``.

    Parameters
    ----------
    surrogate : SurrogateVecEnv
        The batched surrogate to expose. The wrapper steps and resets it; do not step it
        directly while the wrapper is in use.
    autoreset_mode : gymnasium.vector.AutoresetMode or str
        ``NEXT_STEP`` (default): the step after an episode ends returns the environment's new
        start observation with reward 0, ``terminated`` and ``truncated`` False, and its
        action is ignored. ``SAME_STEP``: the ending step already returns the new start
        observation; the last observation of the episode is in ``infos['final_obs']`` (an
        object array, ``None`` where no episode ended; mask ``infos['_final_obs']``).
        ``DISABLED``: nothing restarts by itself; call
        ``reset(options={'reset_mask': done})``.
    dtype : numpy dtype
        dtype of the spaces and of the returned observations (float32 by default, what
        network-based learners expect). The surrogate itself integrates in float64.

    Attributes
    ----------
    num_envs : int
    single_observation_space, single_action_space : gymnasium.spaces.Box
    observation_space, action_space : gymnasium.spaces.Box
        Batched: shapes ``(num_envs, n)`` and ``(num_envs, m)``.
    metadata : dict
        ``{'autoreset_mode': AutoresetMode}``.
    surrogate : SurrogateVecEnv
    """

    def __init__(
        self,
        surrogate: SurrogateVecEnv,
        autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
        dtype: Any = np.float32,
    ) -> None:
        super().__init__()
        if not isinstance(surrogate, SurrogateVecEnv):
            raise TypeError(f'expected a SurrogateVecEnv, got {type(surrogate).__name__}')
        self.surrogate = surrogate
        self.autoreset_mode = AutoresetMode(autoreset_mode)
        self.dtype = np.dtype(dtype)
        if not np.issubdtype(self.dtype, np.floating):
            raise ValueError(f'dtype must be a floating type, got {self.dtype}')
        self.num_envs = surrogate.n_envs
        self.metadata = {'autoreset_mode': self.autoreset_mode}
        self.single_observation_space = spaces.Box(
            low=surrogate.observation_low.astype(self.dtype),
            high=surrogate.observation_high.astype(self.dtype),
            dtype=self.dtype,
        )
        self.single_action_space = spaces.Box(
            low=surrogate.action_low.astype(self.dtype),
            high=surrogate.action_high.astype(self.dtype),
            dtype=self.dtype,
        )
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        # Environments whose episode ended at the last step (NEXT_STEP: restart on the next
        # step; DISABLED: must be reset before stepping again).
        self._ended = np.zeros(self.num_envs, dtype=bool)

    @classmethod
    def from_model(
        cls,
        dynamics: SindyDynamics,
        reward_fn: RewardFunction,
        start_observations: np.ndarray,
        num_envs: int,
        episode_length: int,
        observation_low: np.ndarray,
        observation_high: np.ndarray,
        autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
        dtype: Any = np.float32,
        **surrogate_kwargs: Any,
    ) -> SurrogateVectorEnv:
        """Build the surrogate and wrap it (arguments as :class:`SurrogateVecEnv`)."""
        surrogate = SurrogateVecEnv(
            dynamics,
            reward_fn,
            start_observations,
            n_envs=num_envs,
            episode_length=episode_length,
            observation_low=observation_low,
            observation_high=observation_high,
            **surrogate_kwargs,
        )
        return cls(surrogate, autoreset_mode=autoreset_mode, dtype=dtype)

    # ------------------------------------------------------------------ API
    def reset(
        self,
        *,
        seed: int | None = None,
        options: dict[str, Any] | None = None,
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start new episodes.

        Parameters
        ----------
        seed : int or None
            Reseeds the generator of start states (and ensemble members) shared by all
            environments; ``None`` continues its stream. A list of per-environment seeds is
            not supported: the environments share one generator.
        options : dict or None
            ``{'reset_mask': numpy.ndarray of bool, shape (num_envs,)}`` restarts only the
            flagged environments (the others keep their state); no other option exists.

        Returns
        -------
        observations : numpy.ndarray, shape (num_envs, n)
        infos : dict
            Empty.
        """
        if seed is not None and not isinstance(seed, (int, np.integer)):
            raise TypeError(
                f'seed must be an int or None (the environments share one generator), got '
                f'{type(seed).__name__}'
            )
        options = dict(options or {})
        reset_mask = options.pop('reset_mask', None)
        if options:
            raise ValueError(f'unknown reset options {sorted(options)}; only reset_mask exists')
        super().reset(seed=None if seed is None else int(seed))
        if reset_mask is None:
            observations = self.surrogate.reset(seed=None if seed is None else int(seed))
            self._ended[:] = False
            return self._cast(observations), {}
        mask = np.asarray(reset_mask)
        if mask.dtype != np.bool_ or mask.shape != (self.num_envs,):
            raise ValueError(
                f"options['reset_mask'] must be a bool array of shape ({self.num_envs},), got "
                f'{mask.dtype} {mask.shape}'
            )
        if seed is not None:
            self.surrogate.reseed(int(seed))
        observations = self.surrogate.reset_done(mask)
        self._ended[mask] = False
        return self._cast(observations), {}

    def step(
        self, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Advance every environment one control period.

        Parameters
        ----------
        actions : numpy.ndarray, shape (num_envs, m)
            Clipped to the action space by the surrogate.

        Returns
        -------
        observations : numpy.ndarray, shape (num_envs, n)
        rewards : numpy.ndarray of float64, shape (num_envs,)
        terminations, truncations : numpy.ndarray of bool, shape (num_envs,)
        infos : dict
            ``SAME_STEP``: ``final_obs``/``_final_obs`` and ``final_info``/``_final_info``
            for the environments whose episode ended, as gymnasium's ``SyncVectorEnv``
            gives them; otherwise empty.
        """
        if self.autoreset_mode is AutoresetMode.DISABLED and self._ended.any():
            raise RuntimeError(
                f'environments {np.flatnonzero(self._ended).tolist()} ended their episode: '
                "with autoreset DISABLED call reset(options={'reset_mask': ...}) first"
            )
        observations, rewards, terminations, truncations = self.surrogate.step(actions)
        infos: dict[str, Any] = {}
        if self.autoreset_mode is AutoresetMode.NEXT_STEP:
            restart = self._ended
            if restart.any():
                # These environments ended at the previous step: their transition just now
                # is discarded and they start a new episode instead.
                observations = self.surrogate.reset_done(restart)
                rewards[restart] = 0.0
                terminations[restart] = False
                truncations[restart] = False
            self._ended = terminations | truncations
            return self._cast(observations), rewards, terminations, truncations, infos
        ended = terminations | truncations
        if self.autoreset_mode is AutoresetMode.SAME_STEP:
            final = self._cast(observations)
            if ended.any():
                observations = self.surrogate.reset_done(ended)
                for index in np.flatnonzero(ended):
                    infos = self._add_info(
                        infos, {'final_obs': final[index], 'final_info': {}}, int(index)
                    )
            return self._cast(observations), rewards, terminations, truncations, infos
        self._ended = ended  # DISABLED
        return self._cast(observations), rewards, terminations, truncations, infos

    def _cast(self, observations: np.ndarray) -> np.ndarray:
        return observations.astype(self.dtype, copy=self.dtype != observations.dtype)

    def __repr__(self) -> str:
        return (
            f'SurrogateVectorEnv(num_envs={self.num_envs}, '
            f'autoreset_mode={self.autoreset_mode.name}, {self.surrogate!r})'
        )
