"""The SINDy-RL Dyna loop: fit a sparse model of the plant, train on it, collect, refit.

Pieces used by the ROS nodes (the model updater calls :func:`fit_dynamics`, the policy
trainer a :class:`PolicyLearner`) and, put together, by :func:`run_dyna` for benchmarks and
offline use:

1. a little real data with random actions;
2. E-SINDy fit, accepted only when multi-step rollouts on held-out data stay close;
3. SAC on the batched SINDy surrogate, episodes started from recorded real states;
4. a few real episodes with the current policy plus exploration noise; back to 2.

When to collect, fit, evaluate and stop is decided by :class:`core.protocol.DynaProtocol`,
the same object the run supervisor of the ROS graph drives: whole episodes, holds at
episode ends, no training on a rejected model, the budget's last policy evaluated.

Real steps are counted exactly: every ``env.step`` on the real plant that produces training
data. Evaluation episodes used only for reporting are counted separately.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
import time
from typing import Any

import numpy as np

from sindyrl_ros.core.distillation import DistillationSettings, distill_sparse_policy
from sindyrl_ros.core.dynamics import SindyDynamics
from sindyrl_ros.core.dynamics_fit import EnsembleConfig
from sindyrl_ros.core.library import LibraryConfig
from sindyrl_ros.core.policies import (
    MLPPolicy,
    NumpyPolicy,
    SparsePolynomialPolicy,
    polynomial_powers,
)
from sindyrl_ros.core.policy_rollouts import noisy_visited_states, surrogate_return_of
from sindyrl_ros.core.protocol import (
    EVALUATE,
    EXPLORE,
    FINISH,
    HOLD,
    DynaProtocol,
    ProtocolSettings,
    exploration_scale,
)
from sindyrl_ros.core.sac import SACConfig, SACTrainer
from sindyrl_ros.core.surrogate import SurrogateVecEnv
from sindyrl_ros.core.trajectories import Trajectory, split_outside_bounds


@dataclass
class DynaConfig:
    """Every setting of the loop, with defaults measured on Pendulum-v1.

    Attributes
    ----------
    library, ensemble : candidate terms and E-SINDy regression settings.
    validation_horizon : int
        Steps of each held-out rollout window.
    validation_fraction : float
        Tail of each trajectory held out for validation.
    max_validation_error : float
        Accept a model only when its held-out rollout NRMSE is below this and no window
        diverged.
    sac : SACConfig
    surrogate_envs : int
        Parallel surrogate episodes.
    surrogate_steps_first, surrogate_steps_per_model : int
        Surrogate transitions for the first model and for each refit (warm start).
    start_noise : float
        Perturbation of recorded start states (see SurrogateVecEnv).
    n_start_observations : int
        Recorded observations kept for starting surrogate episodes.
    sparse_degree : int
        Lowest top degree tried when distilling the sparse policy; higher ones are searched
        up to the coefficient budget (network parameters / 50).
    initial_steps, steps_per_iteration : int
        Real steps with random actions first, then with the policy per Dyna iteration.
    exploration_noise : float
        Std of Gaussian action noise while collecting, as a fraction of half the range.
    """

    library: LibraryConfig = field(default_factory=LibraryConfig)
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)
    validation_horizon: int = 50
    validation_fraction: float = 0.25
    max_validation_error: float = 0.5
    sac: SACConfig = field(default_factory=SACConfig)
    surrogate_envs: int = 16
    surrogate_steps_first: int = 200_000
    surrogate_steps_per_model: int = 100_000
    start_noise: float = 0.1
    n_start_observations: int = 256
    sparse_degree: int = 3
    initial_steps: int = 200
    steps_per_iteration: int = 200
    exploration_noise: float = 0.1

    def to_dict(self) -> dict:
        values = asdict(self)
        values['library'] = self.library.to_dict()
        values['ensemble'] = self.ensemble.to_dict()
        values['sac'] = self.sac.to_dict()
        return values


def segment(trajectory: Trajectory, start: int, stop: int) -> Trajectory:
    """Transitions ``start``..``stop-1`` of a trajectory (observations start..stop)."""

    def part(values, end):
        return None if values is None else values[start:end]

    return Trajectory(
        trajectory.observations[start : stop + 1],
        trajectory.actions[start:stop],
        part(trajectory.rewards, stop),
        part(trajectory.times, stop + 1),
    )


def split_for_validation(
    trajectories: Sequence[Trajectory], fraction: float, horizon: int
) -> tuple[list[Trajectory], list[Trajectory]]:
    """Hold out the tail of each trajectory long enough to give a rollout window.

    Tails shorter than ``min(horizon, 10)`` steps stay in the fitting set; a single short
    trajectory therefore has no held-out part (then validation is on the fitting data and
    the caller is told through ``held_out`` in the metrics).
    """
    fitting, held_out = [], []
    for trajectory in trajectories:
        tail = int(round(trajectory.n_steps * fraction))
        if tail < min(horizon, 10) or trajectory.n_steps - tail < 10:
            fitting.append(trajectory)
            continue
        cut = trajectory.n_steps - tail
        fitting.append(segment(trajectory, 0, cut))
        held_out.append(segment(trajectory, cut, trajectory.n_steps))
    return fitting, held_out


def new_dynamics(task, config: DynaConfig) -> SindyDynamics:
    return SindyDynamics(
        task.observation_names,
        task.action_names,
        task.dt,
        angle_pairs=task.angle_pairs,
        library=config.library,
        ensemble=config.ensemble,
        action_low=task.action_low,
        action_high=task.action_high,
        saturation=task.saturation,
    )


def fit_dynamics(
    task, trajectories: Sequence[Trajectory], config: DynaConfig, model_version: int
) -> tuple[SindyDynamics, dict, bool]:
    """Fit E-SINDy and decide whether the model may be used.

    The model is first fitted without the held-out tails and validated on them (multi-step
    rollouts); if that passes, it is refitted on everything and the refit must not diverge
    on the held-out windows either. Only then is it accepted.

    Returns
    -------
    (model, validation, accepted) : the refitted model (or the held-out one when rejected),
        the metrics, and whether it passed.
    """
    # Where the plant leaves the task's bounds (a cart on its end stop) a smooth model
    # cannot follow; the surrogate ends episodes there anyway.
    usable = split_outside_bounds(
        [t for t in trajectories if t.n_steps >= 1], task.observation_low, task.observation_high
    )
    if not usable:
        raise ValueError('no recorded transitions inside the task bounds to fit a model on')
    fitting, held_out = split_for_validation(
        usable, config.validation_fraction, config.validation_horizon
    )
    started = time.perf_counter()
    probe = new_dynamics(task, config).fit(fitting)
    validation_set = held_out or usable
    validation = dict(probe.validate(validation_set, config.validation_horizon))
    validation['held_out'] = bool(held_out)
    accepted = not validation['diverged'] and validation['nrmse'] <= config.max_validation_error
    model = probe
    if accepted and held_out:
        model = new_dynamics(task, config).fit(usable)
        refit = model.validate(validation_set, config.validation_horizon)
        validation['refit_nrmse'] = refit['nrmse']
        accepted = not refit['diverged'] and refit['nrmse'] <= config.max_validation_error
    validation['fit_time_s'] = time.perf_counter() - started
    validation['samples'] = int(sum(t.n_steps for t in usable))
    model.validation = validation
    model.model_version = int(model_version)
    return model, validation, accepted


def sample_start_observations(
    trajectories: Sequence[Trajectory], count: int, rng: np.random.Generator
) -> np.ndarray:
    """Up to ``count`` recorded observations, drawn evenly, to start surrogate episodes."""
    observations = np.concatenate([t.observations for t in trajectories if len(t.observations)])
    if len(observations) <= count:
        return observations.copy()
    return observations[rng.choice(len(observations), size=count, replace=False)]


class PolicyLearner:
    """SAC on the SINDy surrogate, keeping its networks from one model to the next.

    Parameters
    ----------
    task : TaskSpec
    config : DynaConfig
    seed : int
    reward_fn : callable, optional
        Surrogate reward ``fn(observations, actions, next_observations) -> (N,)``;
        default: the task's. A task with a learned reward passes the reward model here.
    """

    def __init__(self, task, config: DynaConfig, seed: int = 0, reward_fn=None) -> None:
        self.task = task
        self.config = config
        self.seed = int(seed)
        sac_config = SACConfig.from_dict({**config.sac.to_dict(), 'seed': self.seed})
        self.trainer = SACTrainer(
            len(task.observation_names),
            len(task.action_names),
            task.action_low,
            task.action_high,
            sac_config,
            observation_low=task.observation_low,
            observation_high=task.observation_high,
        )
        self.reward = task.reward_function() if reward_fn is None else reward_fn
        self.models_trained = 0

    def surrogate(self, dynamics: SindyDynamics, start_observations: np.ndarray, seed: int):
        return SurrogateVecEnv(
            dynamics,
            self.reward,
            start_observations,
            n_envs=self.config.surrogate_envs,
            episode_length=self.task.episode_length,
            observation_low=self.task.observation_low,
            observation_high=self.task.observation_high,
            start_noise=self.config.start_noise,
            seed=seed,
        )

    def train(
        self,
        dynamics: SindyDynamics,
        start_observations: np.ndarray,
        progress: Callable[[dict], Any] | None = None,
        steps: int | None = None,
    ) -> tuple[MLPPolicy, dict]:
        """Train on the surrogate of ``dynamics``; returns the numpy policy and metrics."""
        if steps is None:
            first = self.models_trained == 0
            steps = (
                self.config.surrogate_steps_first
                if first
                else self.config.surrogate_steps_per_model
            )
        env = self.surrogate(dynamics, start_observations, self.seed + 7919 * self.models_trained)
        started = time.perf_counter()
        metrics = self.trainer.train(env, steps, progress=progress, reset_buffer=True)
        self.models_trained += 1
        policy = self.trainer.export_policy(
            self.task.observation_names,
            self.task.action_names,
            {'source_model_version': dynamics.model_version},
        )
        surrogate_return, lengths = surrogate_return_of(policy, env, self.task.episode_length)
        summary = {
            'surrogate_return': surrogate_return,
            # What the return is the mean of: one episode per surrogate slot, and how many of
            # them the surrogate ended before episode_length (a start outside the bounds).
            'surrogate_return_episodes': int(len(lengths)),
            'surrogate_return_cut_short': int(np.sum(lengths < self.task.episode_length)),
            'surrogate_return_mean_length': float(np.mean(lengths)),
            'updates': int(metrics.get('updates', 0)),
            'surrogate_steps': int(metrics.get('env_steps', 0)),
            'train_time_s': time.perf_counter() - started,
            'source_model_version': dynamics.model_version,
            'nn_parameters': policy.n_parameters,
        }
        policy.metadata.update(summary)
        return policy, summary

    def distill(
        self,
        policy: NumpyPolicy,
        dynamics: SindyDynamics,
        start_observations: np.ndarray,
        max_coefficients: int | None = None,
    ) -> tuple[SparsePolynomialPolicy, dict]:
        """A sparse polynomial policy that does about as well as ``policy`` on the surrogate.

        Candidates (every degree whose library fits ``max_coefficients`` and the next one,
        several thresholds) are fitted to the network's actions with DAgger rounds and scored
        episode by episode against the network on the surrogate, from the same start
        states; the sparsest whose mean shortfall is within 1 % of the network's return is
        kept (see :func:`distill_sparse_policy`).  Imitation error alone is a poor guide: a
        policy that is mostly saturated is decided by its switching curves.

        The start states are the recorded ones plus copies of them at uniformly drawn
        angles: the recorded states of a few hundred real steps cover only part of the
        circle, and a student that is right there can still stall elsewhere (at the bottom
        for a swing-up), where the real plant may well start.

        Parameters
        ----------
        policy : NumpyPolicy
            The trained network (the teacher).
        dynamics : SindyDynamics
        start_observations : ndarray, shape (K, n)
            Recorded real observations.
        max_coefficients : int, optional
            Coefficient budget; default: 1/50 of the network's parameters.

        Returns
        -------
        (SparsePolynomialPolicy, dict)
            The policy and metrics: ``sparse_policy_coefficients``,
            ``sparse_surrogate_return`` (same surrogate as training),
            ``sparse_distillation_return`` and ``teacher_distillation_return`` (the
            broader starts above).
        """

        task = self.task
        if max_coefficients is None:
            max_coefficients = max(1, policy.n_parameters // 50)
        rng = np.random.default_rng(self.seed + 31)
        starts = np.asarray(start_observations, dtype=np.float64)
        copies = [starts]
        for _ in range(4):
            copy = starts.copy()
            for cos_index, sin_index in task.angle_pairs:
                angle = rng.uniform(-np.pi, np.pi, len(copy))
                copy[:, cos_index], copy[:, sin_index] = np.cos(angle), np.sin(angle)
            copies.append(copy)
        if task.angle_pairs:
            starts = np.concatenate(copies)
        env = SurrogateVecEnv(
            dynamics,
            self.reward,
            starts,
            n_envs=512,
            episode_length=task.episode_length,
            observation_low=task.observation_low,
            observation_high=task.observation_high,
            start_noise=self.config.start_noise,
            seed=self.seed + 104729,
        )
        # Every degree whose full library fits the budget, and the next one (thresholded
        # into the budget); at least up to the configured degree.
        n = len(task.observation_names)
        top = 1
        while top < 10:
            powers = polynomial_powers(n, top)
            for cos_index, _ in task.angle_pairs:
                powers = powers[powers[:, cos_index] < 2]
            if len(powers) * len(task.action_names) > max_coefficients:
                break
            top += 1
        degrees = range(1, max(top, self.config.sparse_degree) + 1)
        states = noisy_visited_states(policy, env, task.episode_length, self.config.sac.seed)
        if len(states) > 131072:  # long episodes: a sample is as good and fits faster
            states = states[np.sort(rng.choice(len(states), 131072, replace=False))]
        settings = DistillationSettings(
            degrees=degrees,
            n_models=1,
            seed=self.seed,
            # With cos²+sin²=1 one term could spread over several equivalent ones.
            angle_pairs=task.angle_pairs,
            # DAgger: also fit the states the student's own errors lead to.
            dagger_rounds=3,
            dagger_steps=task.episode_length,
            return_tolerance=0.01,
            evaluation_episodes=512,
            max_coefficients=max_coefficients,
        )
        sparse = distill_sparse_policy(
            policy,
            states,
            settings,
            dagger_env=env,
            metadata={'source_model_version': dynamics.model_version, 'teacher': 'mlp'},
        )
        summary = sparse.metadata['distillation']
        training_env = self.surrogate(dynamics, start_observations, self.seed + 104729)
        metrics = {
            'sparse_policy_coefficients': int(sparse.n_parameters),
            'sparse_surrogate_return': surrogate_return_of(
                sparse, training_env, task.episode_length
            )[0],
            'sparse_distillation_return': summary['surrogate_return'],
            'teacher_distillation_return': summary['teacher_surrogate_return'],
        }
        sparse.metadata.update(metrics)
        return sparse, metrics


class RealPlant:
    """A gymnasium env as the real plant: counts every step and records trajectories."""

    def __init__(self, env, task, seed: int) -> None:
        self.env = env
        self.task = task
        self.seed = int(seed)
        self.rng = np.random.default_rng(seed)
        self.steps = 0
        self.episodes = 0
        self.trajectories: list[Trajectory] = []
        self._observation = None

    def collect(self, n_steps: int, policy: NumpyPolicy | None, noise: float) -> None:
        """Step the plant ``n_steps`` times, random actions when ``policy`` is None."""
        low = np.asarray(self.task.action_low, dtype=np.float64)
        high = np.asarray(self.task.action_high, dtype=np.float64)
        # A running episode goes on from the current state, like a robot that keeps running;
        # its next part is stored as a new trajectory.
        observations = [] if self._observation is None else [self._observation]
        actions, rewards = [], []
        for _ in range(int(n_steps)):
            if self._observation is None:
                self._observation, _ = self.env.reset(seed=self.seed + self.episodes)
                self.episodes += 1
                observations, actions, rewards = [self._observation], [], []
            if policy is None:
                action = self.rng.uniform(low, high)
            else:
                action = policy(self._observation).copy()
                scale = exploration_scale(noise, low, high)
                action += scale * self.rng.standard_normal(action.shape)
                action = np.clip(action, low, high)
            next_observation, reward, terminated, truncated, _ = self.env.step(action)
            self.steps += 1
            actions.append(action)
            rewards.append(reward)
            observations.append(next_observation)
            self._observation = next_observation
            if terminated or truncated:
                self._store(observations, actions, rewards)
                self._observation = None
                observations, actions, rewards = [], [], []
        if actions:
            self._store(observations, actions, rewards)

    def run_episode(self, policy: NumpyPolicy | None, noise: float) -> int:
        """Finish the episode in progress, or run a whole new one; returns its steps."""
        before = self.steps
        episodes = self.episodes + (self._observation is None)
        while self.episodes < episodes or self._observation is not None:
            self.collect(1, policy, noise)
        return self.steps - before

    def _store(self, observations, actions, rewards) -> None:
        self.trajectories.append(
            Trajectory(
                np.asarray(observations, dtype=np.float64),
                np.asarray(actions, dtype=np.float64).reshape(len(actions), -1),
                np.asarray(rewards, dtype=np.float64),
            )
        )


@dataclass
class DynaResult:
    curve: list[tuple[int, float]]  # (real training steps, mean eval return)
    steps_to_threshold: int | None
    final_return: float
    real_steps: int
    wall_time_s: float
    model: SindyDynamics | None
    policy: MLPPolicy | None
    sparse_policy: SparsePolynomialPolicy | None
    sparse_policy_return: float | None
    log: list[dict]


def run_dyna(
    task,
    config: DynaConfig,
    seed: int,
    budget: int,
    evaluate: Callable[[NumpyPolicy], float],
    stop_at_threshold: bool = True,
    distill: bool = True,
    progress: Callable[[dict], Any] | None = None,
) -> DynaResult:
    """The whole loop on a gymnasium plant, until the threshold or the real-step budget.

    Parameters
    ----------
    task : TaskSpec
    config : DynaConfig
    seed : int
    budget : int
        Real training steps allowed.
    evaluate : callable
        Mean return of deterministic episodes of a policy on a *separate* copy of the real
        env, used only for reporting and for stopping (its steps are not training data).
    stop_at_threshold : bool
        Stop once the evaluation reaches ``task.threshold``.
    distill : bool
        Distil the final network into a sparse polynomial policy and evaluate it.
    progress : callable, optional
        Called with a dict after every iteration.
    """
    started = time.perf_counter()
    plant = RealPlant(task.make_env(seed=seed), task, seed)
    learner = PolicyLearner(task, config, seed)
    rng = np.random.default_rng(seed)
    protocol = DynaProtocol(
        ProtocolSettings(
            budget=budget,
            threshold=task.threshold,
            initial_steps=config.initial_steps,
            steps_per_iteration=config.steps_per_iteration,
            stop_at_threshold=stop_at_threshold,
        )
    )
    curve, log = [], []
    model = None  # the newest accepted model
    policies: dict[int, MLPPolicy] = {}  # by version
    exploring = None  # the released policy (random actions before the first)
    refits = 0
    decision = None
    while decision is None or decision.action != FINISH:
        plant.run_episode(exploring, config.exploration_noise)
        decision = protocol.after_exploration_episode(plant.steps, awaiting_evaluation=False)
        while decision.action in (HOLD, EVALUATE):
            if decision.action == HOLD:
                # Held: refit on everything, train on an accepted model only.
                protocol.held()
                refits += 1
                version = (model.model_version if model is not None else 0) + 1
                candidate, validation, accepted = fit_dynamics(
                    task, plant.trajectories, config, version
                )
                reason = 'model_rejected'
                metrics: dict = {}
                if accepted:
                    model = candidate
                    starts = sample_start_observations(
                        plant.trajectories, config.n_start_observations, rng
                    )
                    policy, metrics = learner.train(model, starts)
                    policies[len(policies) + 1] = policy
                    protocol.policy_arrived(len(policies), model.model_version)
                    reason = 'policy'
                log.append(
                    {
                        'refit': refits,
                        'real_steps': plant.steps,
                        'model_accepted': accepted,
                        'model_version': model.model_version if model is not None else None,
                        'validation_nrmse': validation['nrmse'],
                        'model_nonzero': candidate.n_nonzero,
                        **metrics,
                        'wall_time_s': time.perf_counter() - started,
                    }
                )
                decision = protocol.after_release(reason, plant.steps)
            else:
                protocol.evaluation_started(plant.steps)
                version = protocol.policy
                eval_return = float(evaluate(policies[version]))
                curve.append((plant.steps, eval_return))
                log[-1].update(policy_version=version, eval_return=eval_return)
                if progress:
                    progress(log[-1])
                decision = protocol.evaluation_done(version, eval_return, plant.steps)
        if decision.action == EXPLORE and decision.release:
            protocol.release_policy(plant.steps)
        if protocol.released_policy is not None:
            exploring = policies[protocol.released_policy]
    policy = policies[protocol.policy] if protocol.policy is not None else None
    sparse = sparse_return = None
    if distill and policy is not None:
        starts = sample_start_observations(plant.trajectories, config.n_start_observations, rng)
        sparse, _ = learner.distill(policy, model, starts)
        sparse_return = float(evaluate(sparse))
    return DynaResult(
        curve=curve,
        steps_to_threshold=protocol.steps_to_threshold,
        final_return=curve[-1][1] if curve else float('nan'),
        real_steps=plant.steps,
        wall_time_s=time.perf_counter() - started,
        model=model,
        policy=policy,
        sparse_policy=sparse,
        sparse_policy_return=sparse_return,
        log=log,
    )
