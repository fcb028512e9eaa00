"""E-SINDy dynamics on real gymnasium Pendulum-v1 data: recovery, numpy path, validation."""

import gymnasium as gym
import numpy as np
import pytest

from sindyrl_ros.core.dynamics import SindyDynamics
from sindyrl_ros.core.dynamics_fit import EnsembleConfig
from sindyrl_ros.core.library import LibraryConfig, build_terms
from sindyrl_ros.core.trajectories import Trajectory, split_outside_bounds

OBSERVATIONS = ['cos', 'sin', 'thdot']
ACTIONS = ['u']


def pendulum_episodes(n_episodes, steps, seed, raw_angle=False):
    """Random-action episodes of the real Pendulum-v1 (float32 observations)."""
    env = gym.make('Pendulum-v1').unwrapped
    rng = np.random.default_rng(seed)
    episodes = []
    for episode in range(n_episodes):
        observation, _ = env.reset(seed=seed * 1000 + episode)
        observations, actions, rewards, angles = [observation], [], [], [env.state.copy()]
        for _ in range(steps):
            action = rng.uniform(-2.0, 2.0, size=1)
            observation, reward, *_ = env.step(action)
            observations.append(observation)
            actions.append(action)
            rewards.append(reward)
            angles.append(env.state.copy())
        if raw_angle:
            observations = angles  # (theta unwrapped, thdot) in float64
        episodes.append(
            Trajectory(np.array(observations, dtype=np.float64), np.array(actions), rewards)
        )
    env.close()
    return episodes


@pytest.fixture(scope='module')
def train():
    return pendulum_episodes(1, 200, seed=0)


@pytest.fixture(scope='module')
def held_out():
    return pendulum_episodes(5, 200, seed=99)


@pytest.fixture(scope='module')
def model(train):
    dynamics = SindyDynamics(
        OBSERVATIONS,
        ACTIONS,
        dt=0.05,
        saturation={'thdot': (-8.0, 8.0)},
        action_low=[-2.0],
        action_high=[2.0],
    )
    return dynamics.fit(train)


def test_recovers_pendulum_velocity_equation(model):
    # gymnasium: thdot' = clip(thdot + (3g/(2l) sin th + 3/(m l^2) u) dt, -8, 8), g=10, m=l=1
    # -> 0.75 sin + 0.15 u. Clipped transitions are excluded via `saturation`.
    names = model.feature_names()
    row = dict(zip(names, model.coefficients[2]))
    assert row['sin[k]'] == pytest.approx(0.75, abs=2e-3)
    assert row['u[k]'] == pytest.approx(0.15, abs=1e-3)
    assert row['thdot[k]'] == pytest.approx(1.0, abs=1e-3)
    others = [abs(v) for name, v in row.items() if name not in ('sin[k]', 'u[k]', 'thdot[k]')]
    assert max(others) < 2e-3
    assert model.equations()[2] == 'thdot[k+1] = 0.750 sin[k] + 1.000 thdot[k] + 0.150 u[k]'


def test_clipped_transitions_are_left_out():
    episodes = pendulum_episodes(1, 200, seed=4)
    speeds = np.abs(episodes[0].observations[1:, 2])
    n_clipped = int(np.sum(speeds >= 8.0 - 1e-5))
    assert n_clipped > 0, 'this seed is chosen to hit the +-8 rad/s clip'
    plain = SindyDynamics(OBSERVATIONS, ACTIONS, 0.05).fit(episodes)
    aware = SindyDynamics(OBSERVATIONS, ACTIONS, 0.05, saturation={'thdot': (-8, 8)})
    aware.fit(episodes)
    assert aware.fit_info['n_saturated_dropped'] == n_clipped
    sin_column = aware.feature_names().index('sin[k]')
    assert aware.coefficients[2, sin_column] == pytest.approx(0.75, abs=2e-3)
    # Without the saturation info the clip bends the velocity equation.
    assert np.count_nonzero(plain.coefficients[2]) > np.count_nonzero(aware.coefficients[2])
    # Predictions are clipped like the plant does.
    fast = np.array([[1.0, 0.0, 7.9]])
    assert aware.project(aware.predict(fast, np.array([[2.0]])))[0, 2] == 8.0


def test_numpy_path_matches_pysindy_predict(model, held_out):
    observations = np.concatenate([t.observations[:-1] for t in held_out])
    actions = np.concatenate([t.actions for t in held_out])
    ours = model.predict(observations, actions)
    theirs = model.pysindy_predict(observations, actions)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-9)
    # Far from the data too (large inputs stress the cubic terms).
    rng = np.random.default_rng(1)
    wild = rng.uniform(-10, 10, size=(500, 3))
    wild_actions = rng.uniform(-5, 5, size=(500, 1))
    np.testing.assert_allclose(
        model.predict(wild, wild_actions),
        model.pysindy_predict(wild, wild_actions),
        rtol=1e-12,
        atol=1e-9,
    )


@pytest.mark.parametrize(
    ('library', 'ensemble'),
    [
        (LibraryConfig(degree=3, control='full'), EnsembleConfig(aggregate='mean', n_models=8)),
        (
            LibraryConfig(degree=2, control='linear', circle_reduction=False),
            EnsembleConfig(target='next', n_models=5, library_ensemble=False),
        ),
    ],
)
def test_numpy_path_matches_pysindy_for_other_libraries(train, held_out, library, ensemble):
    dynamics = SindyDynamics(OBSERVATIONS, ACTIONS, 0.05, library=library, ensemble=ensemble)
    dynamics.fit(train)
    observations = np.concatenate([t.observations[:-1] for t in held_out])
    actions = np.concatenate([t.actions for t in held_out])
    np.testing.assert_allclose(
        dynamics.predict(observations, actions),
        dynamics.pysindy_predict(observations, actions),
        rtol=0,
        atol=1e-9,
    )


def test_fourier_library_recovers_raw_angle_pendulum():
    # Observation (theta, thdot) with theta unwrapped: the dynamics are exactly linear in
    # (theta, thdot, sin theta, u), so a Fourier library on theta must find them.
    episodes = pendulum_episodes(2, 150, seed=3, raw_angle=True)
    library = LibraryConfig(degree=1, fourier_frequencies=1, fourier_features=['th'])
    dynamics = SindyDynamics(
        ['th', 'thdot'],
        ['u'],
        0.05,
        angle_pairs=(),
        library=library,
        saturation={'thdot': (-8, 8)},
    ).fit(episodes)
    row = dict(zip(dynamics.feature_names(), dynamics.coefficients[1]))
    assert row['sin(th[k])'] == pytest.approx(0.75, abs=1e-6)
    assert row['u[k]'] == pytest.approx(0.15, abs=1e-6)
    # theta' = theta + dt * thdot' keeps the linear term of the angle.
    row = dict(zip(dynamics.feature_names(), dynamics.coefficients[0]))
    assert row['th[k]'] == pytest.approx(1.0, abs=1e-6)
    assert row['sin(th[k])'] == pytest.approx(0.0375, abs=1e-6)
    observations = np.concatenate([t.observations[:-1] for t in episodes])
    actions = np.concatenate([t.actions for t in episodes])
    np.testing.assert_allclose(
        dynamics.predict(observations, actions),
        dynamics.pysindy_predict(observations, actions),
        rtol=0,
        atol=1e-9,
    )


def test_circle_reduction_removes_collinear_terms():
    terms = build_terms(LibraryConfig(degree=3), OBSERVATIONS, ACTIONS, [(0, 1)])
    assert all(term.powers[1] <= 1 for term in terms)  # no sin^2, sin^3
    assert all(term.powers[3] <= 1 for term in terms)  # control-affine by default


def test_members_and_disagreement(model, held_out):
    assert model.n_members == model.ensemble.n_models
    np.testing.assert_allclose(
        np.median(model.member_coefficients, axis=0), model.coefficients, atol=1e-12
    )
    observations = held_out[0].observations[:-1]
    actions = held_out[0].actions
    members = model.predict_members(observations, actions)
    assert members.shape == (model.n_members, len(observations), 3)
    features = model.features(observations, actions)  # active terms only
    expected = features @ model.member_coefficients[3][:, model.active_terms].T
    np.testing.assert_allclose(members[3], expected, atol=1e-12)
    spread = model.disagreement(observations, actions)
    assert spread.shape == (len(observations),)
    assert np.all(spread >= 0) and np.all(np.isfinite(spread))
    far = model.disagreement(observations * 4.0, actions)
    assert np.median(far) > np.median(spread)


def test_refit_does_not_accumulate_members(train, held_out):
    dynamics = SindyDynamics(OBSERVATIONS, ACTIONS, 0.05, ensemble=EnsembleConfig(n_models=6))
    dynamics.fit(train)
    first = dynamics.coefficients.copy()
    dynamics.fit(train)
    assert dynamics.n_members == 6
    assert dynamics.model_version == 2
    np.testing.assert_array_equal(dynamics.coefficients, first)  # same seed, same data
    dynamics.fit(train + held_out)
    assert dynamics.n_members == 6
    assert len(dynamics.pysindy_model.optimizer.coef_list) == 6


def test_fit_restores_global_numpy_random_state(train):
    np.random.seed(123)
    expected = np.random.random()
    np.random.seed(123)
    SindyDynamics(OBSERVATIONS, ACTIONS, 0.05, ensemble=EnsembleConfig(n_models=3)).fit(train)
    assert np.random.random() == expected


def test_rollout_projects_and_validation_is_good(model, held_out):
    rollout = model.rollout(held_out[0].observations[0], held_out[0].actions[:60])
    assert rollout.shape == (61, 3)
    np.testing.assert_allclose(np.hypot(rollout[:, 0], rollout[:, 1]), 1.0, atol=1e-12)
    metrics = model.validate(held_out, horizon=50)
    assert metrics['diverged'] is False
    assert metrics['n_windows'] > 10
    # Measured 0.06 for this seed (0.02-0.15 across seeds); a loose bound keeps it robust.
    assert metrics['nrmse'] < 0.3
    assert metrics['one_step_nrmse'] < 0.01
    assert model.validation == metrics


def test_validation_flags_a_diverging_model(model, held_out):
    doc = model.to_dict()
    doc['saturation'] = {}  # let the velocity run away
    cube = model.feature_names().index('thdot[k]^3')
    doc['coefficients'][2][cube] = 5.0
    broken = SindyDynamics.from_dict(doc)
    metrics = broken.validate(held_out, horizon=50)
    assert metrics['diverged'] is True
    assert metrics['diverged_fraction'] > 0.5
    assert all(np.isfinite(v) for v in metrics['nrmse_per_feature'])
    assert np.isfinite(metrics['max_error'])


def test_predict_accepts_single_observation_and_out(model):
    observation = np.array([1.0, 0.0, 0.5])
    single = model.predict(observation, np.array([0.3]))
    out = np.empty((1, 3))
    batch = model.predict(observation[None], np.array([[0.3]]), out=out)
    assert batch is out
    np.testing.assert_array_equal(single, out[0])


def test_fit_refuses_bad_input(train):
    dynamics = SindyDynamics(OBSERVATIONS, ACTIONS, 0.05)
    with pytest.raises(ValueError, match='columns'):
        dynamics.fit([Trajectory(np.zeros((5, 2)), np.zeros((4, 1)))])
    bad = Trajectory(train[0].observations.copy(), train[0].actions)
    bad.observations[3, 1] = np.nan
    with pytest.raises(ValueError, match='NaN'):
        dynamics.fit([bad])
    with pytest.raises(ValueError, match='no trajectory'):
        dynamics.fit([])


def test_split_outside_bounds_keeps_the_inside_pieces():
    observations = np.zeros((12, 2))
    observations[:, 0] = [0, 1, 2, 5, 2, 1, 0, 1, 2, 3, 9, 1]
    trajectory = Trajectory(observations, np.arange(11.0)[:, None], np.arange(11.0))
    pieces = split_outside_bounds([trajectory], [-4.0, -1.0], [4.0, 1.0])
    assert [p.observations[:, 0].tolist() for p in pieces] == [[0, 1, 2], [2, 1, 0, 1, 2, 3]]
    assert pieces[1].actions[:, 0].tolist() == [4, 5, 6, 7, 8]
    assert pieces[1].rewards.tolist() == [4, 5, 6, 7, 8]
