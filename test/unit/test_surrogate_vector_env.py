"""The surrogate as a gymnasium VectorEnv, on a model fitted to real Pendulum-v1 data.

The contract tests check what gymnasium 1.x defines for a ``VectorEnv`` (spaces, shapes,
dtypes, the three autoreset modes, seeding) against the plain :class:`SurrogateVecEnv` the
wrapper drives. The last test trains stable-baselines3 SAC on it.

stable-baselines3 2.9.2 does not accept a gymnasium ``VectorEnv``: its algorithms take its
own ``VecEnv`` (same-step autoreset, the episode's last observation in
``infos[i]['terminal_observation']``, ``infos[i]['TimeLimit.truncated']``). The test therefore
shows the smallest honest adapter, :class:`SB3VecEnv`: the wrapper in ``SAME_STEP`` mode, its
batched arrays passed through and its ``final_obs`` turned into SB3's per-environment infos.
SAC then trains on all the surrogate's environments at once (not on a single-env view).
"""

import gymnasium as gym
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space
import numpy as np
from pendulum_data import fit_pendulum_model
import pytest
from stable_baselines3 import SAC
from stable_baselines3.common.vec_env import VecEnv
import torch

from sindyrl_ros.core.reward import pendulum_reward
from sindyrl_ros.core.surrogate import SurrogateVecEnv
from sindyrl_ros.core.surrogate_env import SurrogateVectorEnv
from sindyrl_ros.core.trajectories import Trajectory

LOW = np.array([-1.0, -1.0, -8.0])
HIGH = np.array([1.0, 1.0, 8.0])
N_ENVS = 16
# SAC on the surrogate (last test).
SAC_EPISODE_LENGTH = 50
SAC_TIMESTEPS = 8000  # transitions: 2,000 batched steps of 4 environments
SAC_BATCH_SIZE = 128
SAC_ENT_COEF = 'auto'


@pytest.fixture(scope='module')
def recorded():
    """Five 40-step Pendulum-v1 episodes with random torques (starts all round the circle)."""
    env = gym.make('Pendulum-v1').unwrapped
    rng = np.random.default_rng(0)
    trajectories = []
    for episode in range(5):
        observation, _ = env.reset(seed=episode)
        observations, actions = [observation], []
        for _ in range(40):
            action = rng.uniform(-2.0, 2.0, size=1)
            observation, *_ = env.step(action)
            observations.append(observation)
            actions.append(action)
        trajectories.append(
            Trajectory(np.array(observations, dtype=np.float64), np.array(actions))
        )
    return trajectories


@pytest.fixture(scope='module')
def starts(recorded):
    return np.concatenate([trajectory.observations for trajectory in recorded])


@pytest.fixture(scope='module')
def model(recorded):
    return fit_pendulum_model(recorded)


def surrogate(model, starts, **kwargs):
    options = dict(
        n_envs=N_ENVS,
        episode_length=30,
        observation_low=LOW,
        observation_high=HIGH,
        start_noise=0.1,
        seed=1,
    )
    options.update(kwargs)
    return SurrogateVecEnv(model, pendulum_reward, starts, **options)


def actions_for(step, count=N_ENVS, value=None):
    if value is not None:
        return np.full((count, 1), value, dtype=np.float32)
    return np.random.default_rng(step).uniform(-2, 2, size=(count, 1)).astype(np.float32)


def test_spaces_shapes_and_dtypes(model, starts):
    env = SurrogateVectorEnv(surrogate(model, starts))
    assert isinstance(env, VectorEnv)
    assert env.num_envs == N_ENVS
    assert env.metadata['autoreset_mode'] is AutoresetMode.NEXT_STEP
    assert env.single_observation_space == spaces.Box(
        LOW.astype(np.float32), HIGH.astype(np.float32), dtype=np.float32
    )
    assert env.single_action_space == spaces.Box(-2.0, 2.0, shape=(1,), dtype=np.float32)
    assert env.observation_space == batch_space(env.single_observation_space, N_ENVS)
    assert env.action_space == batch_space(env.single_action_space, N_ENVS)
    assert env.observation_space.shape == (N_ENVS, 3)
    assert env.action_space.shape == (N_ENVS, 1)

    observations, infos = env.reset(seed=0)
    assert observations.dtype == np.float32 and observations.shape == (N_ENVS, 3)
    assert observations in env.observation_space
    assert infos == {}
    env.action_space.seed(0)
    for _ in range(40):  # past one episode: autoreset steps included
        observations, rewards, terminations, truncations, infos = env.step(
            env.action_space.sample()
        )
        assert observations.dtype == np.float32 and observations in env.observation_space
        assert rewards.dtype == np.float64 and rewards.shape == (N_ENVS,)
        assert terminations.dtype == np.bool_ and terminations.shape == (N_ENVS,)
        assert truncations.dtype == np.bool_ and truncations.shape == (N_ENVS,)
        assert np.all(np.isfinite(rewards)) and isinstance(infos, dict)
    env.close()
    assert env.closed

    double = SurrogateVectorEnv(surrogate(model, starts), dtype=np.float64)
    assert double.single_observation_space.dtype == np.float64
    assert double.reset(seed=0)[0].dtype == np.float64


def test_steps_are_the_surrogate_steps(model, starts):
    """The wrapper adds nothing: bit-identical to the SurrogateVecEnv it drives (float64)."""
    env = SurrogateVectorEnv(
        surrogate(model, starts, sample_members=True),
        autoreset_mode=AutoresetMode.DISABLED,
        dtype=np.float64,
    )
    plain = surrogate(model, starts, sample_members=True)
    np.testing.assert_array_equal(env.reset(seed=5)[0], plain.reset(seed=5))
    for step in range(10):
        observations, rewards, terminations, truncations, _ = env.step(actions_for(step))
        expected = plain.step(actions_for(step))
        np.testing.assert_array_equal(observations, expected[0])
        np.testing.assert_array_equal(rewards, expected[1])
        np.testing.assert_array_equal(terminations, expected[2])
        np.testing.assert_array_equal(truncations, expected[3])


def run_until_truncation(env, episode_length):
    env.reset(seed=2)
    for step in range(episode_length):
        observations, rewards, terminations, truncations, infos = env.step(actions_for(step))
        assert not terminations.any()
        assert truncations.all() == (step == episode_length - 1)
    return observations, rewards, truncations, infos


def test_next_step_autoreset_on_truncation(model, starts):
    env = SurrogateVectorEnv(surrogate(model, starts, episode_length=5))
    final, _, truncations, infos = run_until_truncation(env, 5)
    assert truncations.all() and infos == {}
    # The next step starts new episodes: its actions are ignored, reward 0, no flags.
    observations, rewards, terminations, truncations, infos = env.step(actions_for(9, value=2))
    assert not np.allclose(observations, final)
    assert np.all(rewards == 0.0) and not terminations.any() and not truncations.any()
    assert np.all(env.surrogate.episode_steps == 0)
    # Starts are recorded states (plus the start noise), on the unit circle.
    np.testing.assert_allclose(np.hypot(observations[:, 0], observations[:, 1]), 1.0, atol=1e-6)
    for step in range(5):
        *_, truncations, _ = env.step(actions_for(step))
        assert truncations.all() == (step == 4)


def test_same_step_autoreset_on_truncation(model, starts):
    env = SurrogateVectorEnv(
        surrogate(model, starts, episode_length=5), autoreset_mode=AutoresetMode.SAME_STEP
    )
    assert env.metadata['autoreset_mode'] is AutoresetMode.SAME_STEP
    env.reset(seed=2)
    plain = surrogate(model, starts, episode_length=5)
    plain.reset(seed=2)
    for step in range(5):
        observations, rewards, terminations, truncations, infos = env.step(actions_for(step))
        expected = plain.step(actions_for(step))
    assert truncations.all()
    # The returned observations already start the next episodes; the last ones are in infos.
    assert infos['_final_obs'].all() and infos['_final_info'].all()
    final = np.stack(infos['final_obs'])
    np.testing.assert_array_equal(final, expected[0].astype(np.float32))
    np.testing.assert_array_equal(observations, plain.reset_done(expected[3]).astype(np.float32))
    np.testing.assert_array_equal(rewards, expected[1])
    assert np.all(env.surrogate.episode_steps == 0)


def tight_surrogate(model, starts, **kwargs):
    """Angular-velocity bound of 0.5 rad/s: full torque leaves it within a few steps."""
    high = np.array([1.0, 1.0, 0.5])
    return surrogate(
        model, starts, observation_low=-high, observation_high=high, episode_length=100, **kwargs
    )


def test_next_step_autoreset_on_termination(model, starts):
    env = SurrogateVectorEnv(tight_surrogate(model, starts))
    env.reset(seed=3)
    terminations = np.zeros(N_ENVS, dtype=bool)
    for _ in range(20):
        last, _, terminations, truncations, _ = env.step(actions_for(0, value=2))
        if terminations.any():
            break
    assert terminations.any() and not terminations.all() and not truncations.any()
    steps_before = env.surrogate.episode_steps.copy()
    observations, rewards, terminations_after, truncations_after, _ = env.step(
        actions_for(1, value=2)
    )
    ended = terminations
    assert np.all(rewards[ended] == 0.0)
    assert not terminations_after[ended].any() and not truncations_after[ended].any()
    assert np.all(env.surrogate.episode_steps[ended] == 0)
    assert np.all(env.surrogate.episode_steps[~ended] == steps_before[~ended] + 1)
    assert observations in env.observation_space
    assert np.all(rewards[~ended] != 0.0)
    assert not np.array_equal(observations[ended], last[ended])


def test_same_step_autoreset_on_termination(model, starts):
    env = SurrogateVectorEnv(
        tight_surrogate(model, starts), autoreset_mode=AutoresetMode.SAME_STEP
    )
    plain = tight_surrogate(model, starts)
    env.reset(seed=3)
    plain.reset(seed=3)
    for _ in range(20):
        observations, rewards, terminations, truncations, infos = env.step(actions_for(0, value=2))
        expected = plain.step(actions_for(0, value=2))
        if terminations.any():
            break
        plain.reset_done(expected[2] | expected[3])
    assert terminations.any() and not terminations.all()
    np.testing.assert_array_equal(infos['_final_obs'], terminations)
    assert all(infos['final_obs'][i] is None for i in np.flatnonzero(~terminations))
    for i in np.flatnonzero(terminations):
        np.testing.assert_array_equal(infos['final_obs'][i], expected[0][i].astype(np.float32))
    np.testing.assert_array_equal(rewards, expected[1])
    restarted = plain.reset_done(terminations).astype(np.float32)
    np.testing.assert_array_equal(observations, restarted)
    assert np.all(env.surrogate.episode_steps[terminations] == 0)


def test_disabled_autoreset_needs_a_masked_reset(model, starts):
    env = SurrogateVectorEnv(
        surrogate(model, starts, episode_length=5), autoreset_mode=AutoresetMode.DISABLED
    )
    observations, *_ = run_until_truncation(env, 5)
    with pytest.raises(RuntimeError, match='reset_mask'):
        env.step(actions_for(0))
    mask = np.zeros(N_ENVS, dtype=bool)
    mask[:3] = True
    current, infos = env.reset(options={'reset_mask': mask})
    assert infos == {}
    np.testing.assert_array_equal(current[3:], observations[3:])
    assert np.all(env.surrogate.episode_steps[:3] == 0)
    assert np.all(env.surrogate.episode_steps[3:] == 5)
    with pytest.raises(RuntimeError):
        env.step(actions_for(0))  # the others still wait for their reset
    env.reset(options={'reset_mask': ~mask})
    env.step(actions_for(0))
    with pytest.raises(ValueError, match='reset_mask'):
        env.reset(options={'reset_mask': mask[:3]})
    with pytest.raises(ValueError, match='unknown'):
        env.reset(options={'bogus': 1})


def test_seeding_makes_runs_reproducible(model, starts):
    def run(construction_seed, reset_seed, mode):
        env = SurrogateVectorEnv(
            surrogate(
                model, starts, seed=construction_seed, sample_members=True, episode_length=7
            ),
            autoreset_mode=mode,
        )
        trace = [env.reset(seed=reset_seed)[0]]
        for step in range(20):  # two autoresets
            observations, rewards, terminations, truncations, _ = env.step(actions_for(step))
            trace += [observations, rewards, terminations, truncations]
        return trace

    for mode in (AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP):
        first, again = run(1, 42, mode), run(99, 42, mode)
        for a, b in zip(first, again, strict=True):
            np.testing.assert_array_equal(a, b)
        other = run(1, 43, mode)
        assert not np.array_equal(first[0], other[0])
    env = SurrogateVectorEnv(surrogate(model, starts))
    with pytest.raises(TypeError, match='seed'):
        env.reset(seed=[1] * N_ENVS)
    # Seeding a masked reset makes the restarted environments reproducible too.
    mask = np.arange(N_ENVS) % 2 == 0
    env.reset(seed=7)
    a = env.reset(seed=8, options={'reset_mask': mask})[0]
    env.reset(seed=7)
    b = env.reset(seed=8, options={'reset_mask': mask})[0]
    np.testing.assert_array_equal(a, b)


def test_gymnasium_vector_wrappers_accept_it(model, starts):
    # RecordEpisodeStatistics reads metadata['autoreset_mode'] to count episodes right.
    from gymnasium.wrappers.vector import RecordEpisodeStatistics

    for mode in (AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP):
        env = RecordEpisodeStatistics(
            SurrogateVectorEnv(surrogate(model, starts, episode_length=5), autoreset_mode=mode)
        )
        env.reset(seed=0)
        lengths = []
        for step in range(12):
            *_, infos = env.step(actions_for(step))
            if 'episode' in infos:
                lengths += infos['episode']['l'][infos['_episode']].tolist()
        assert lengths == [5] * (2 * N_ENVS)


# --------------------------------------------------------------------- stable-baselines3
class SB3VecEnv(VecEnv):
    """SB3's ``VecEnv`` interface over a :class:`SurrogateVectorEnv` in SAME_STEP mode.

    SB3's own vector environments also restart an episode in the step that ends it, so the
    batched arrays pass through; only gymnasium's ``final_obs`` becomes SB3's per-environment
    ``terminal_observation`` (and truncation its ``TimeLimit.truncated``), which SAC needs to
    bootstrap truncated episodes from their true last observation.
    """

    def __init__(self, env: SurrogateVectorEnv) -> None:
        if env.metadata['autoreset_mode'] is not AutoresetMode.SAME_STEP:
            raise ValueError('SB3 expects same-step autoreset')
        self.env = env
        self._actions = None
        super().__init__(env.num_envs, env.single_observation_space, env.single_action_space)

    def reset(self):
        observations, _ = self.env.reset(seed=self._seeds[0])  # SB3 seeds env i with seed + i
        self._reset_seeds()
        return observations

    def step_async(self, actions):
        self._actions = actions

    def step_wait(self):
        observations, rewards, terminations, truncations, infos = self.env.step(self._actions)
        dones = terminations | truncations
        per_env = [
            {'TimeLimit.truncated': bool(truncations[i] and not terminations[i])}
            for i in range(self.num_envs)
        ]
        for i in np.flatnonzero(dones):
            per_env[i]['terminal_observation'] = infos['final_obs'][i]
        return observations, rewards.astype(np.float32), dones, per_env

    def close(self):
        self.env.close()

    def get_attr(self, attr_name, indices=None):
        return [getattr(self.env, attr_name) for _ in self._get_indices(indices)]

    def set_attr(self, attr_name, value, indices=None):
        raise NotImplementedError('the surrogate environments share their attributes')

    def env_method(self, method_name, *method_args, indices=None, **method_kwargs):
        raise NotImplementedError('the surrogate environments share their methods')

    def env_is_wrapped(self, wrapper_class, indices=None):
        return [False for _ in self._get_indices(indices)]


def mean_return(model, starts, policy, seed=123, n_envs=64):
    """Mean undiscounted return of one surrogate episode in each of ``n_envs`` environments."""
    env = SurrogateVectorEnv.from_model(
        model,
        pendulum_reward,
        starts,
        num_envs=n_envs,
        episode_length=SAC_EPISODE_LENGTH,
        observation_low=LOW,
        observation_high=HIGH,
        autoreset_mode=AutoresetMode.DISABLED,
        start_noise=0.1,
    )
    observations, _ = env.reset(seed=seed)
    total, running = np.zeros(n_envs), np.ones(n_envs, dtype=bool)
    while running.any():
        actions = policy(observations)
        assert actions.shape == (n_envs, 1) and np.all(np.isfinite(actions))
        observations, rewards, terminations, truncations, _ = env.step(actions)
        total += np.where(running, rewards, 0.0)
        running &= ~(terminations | truncations)
    return float(total.mean())


def test_stable_baselines3_sac_trains_on_the_surrogate(model, starts):
    env = SurrogateVectorEnv.from_model(
        model,
        pendulum_reward,
        starts,
        num_envs=4,
        episode_length=SAC_EPISODE_LENGTH,
        observation_low=LOW,
        observation_high=HIGH,
        autoreset_mode=AutoresetMode.SAME_STEP,
        start_noise=0.1,
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        agent = SAC(
            'MlpPolicy',
            SB3VecEnv(env),
            learning_rate=1e-3,
            gamma=0.95,
            learning_starts=200,
            batch_size=SAC_BATCH_SIZE,
            ent_coef=SAC_ENT_COEF,
            train_freq=1,
            gradient_steps=2,
            policy_kwargs={'net_arch': [64, 64]},
            seed=0,
            device='cpu',
        )
        initial = [p.detach().clone() for p in agent.actor.parameters()]
        agent.learn(total_timesteps=SAC_TIMESTEPS)
    finally:
        torch.set_num_threads(threads)

    # Training ran: every transition went through the adapter into the replay buffer, and the
    # actor was updated; its parameters stayed finite.
    assert agent.num_timesteps == SAC_TIMESTEPS
    assert agent.replay_buffer.size() == SAC_TIMESTEPS // 4
    assert agent.replay_buffer.timeouts.any()  # truncations reached SB3 as timeouts
    parameters = list(agent.actor.parameters())
    assert all(torch.isfinite(p).all() for p in parameters)
    assert any(not torch.equal(p, q) for p, q in zip(parameters, initial, strict=True))

    def trained(observations):
        return agent.predict(observations, deterministic=True)[0]

    rng = np.random.default_rng(0)

    def uniform(observations):
        return rng.uniform(-2.0, 2.0, size=(len(observations), 1))

    random_return = mean_return(model, starts, uniform)
    trained_return = mean_return(model, starts, trained)
    # Pendulum costs are negative: the trained policy loses at least 20 % less than random
    # torques on the same 64 seeded starts (measured: 46-49 % less with SAC seeds 0, 1, 2).
    assert trained_return > random_return + 0.2 * abs(random_return), (
        trained_return,
        random_return,
    )
