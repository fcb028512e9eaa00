"""A new task is a config file: tasks built from the shared parameters, as every node does."""

from pathlib import Path

import gymnasium
import numpy as np
import pytest
import yaml

from sindyrl_ros.core.reward import LEARNED_REWARD, SparseRewardModel
from sindyrl_ros.core.task_parameters import (
    TASK_PARAMETERS,
    TaskParameterError,
    task_from_parameters,
)
from sindyrl_ros.core.tasks import TASKS

CONFIG = Path(__file__).resolve().parents[2] / 'config'
EXAMPLE = CONFIG / 'example_mountain_car.yaml'


def shared_section(path: Path) -> dict:
    """The ``/**`` parameters of a params file: what every node reads."""
    return yaml.safe_load(path.read_text())['/**']['ros__parameters']


def mountain_car(**changes) -> dict:
    values = shared_section(EXAMPLE)
    values.update(changes)
    return {key: value for key, value in values.items() if value is not None}


def refused(values: dict, given=None) -> TaskParameterError:
    with pytest.raises(TaskParameterError) as caught:
        task_from_parameters(values, given)
    return caught.value


def test_example_file_defines_a_task_whose_reward_is_gymnasiums():
    values = shared_section(EXAMPLE)
    assert set(values) <= set(TASK_PARAMETERS)
    task = task_from_parameters(values)
    assert task.name == 'mountain_car' and task.name not in TASKS
    assert task.env_id == 'MountainCarContinuous-v0'
    assert task.observation_names == ('position', 'velocity')
    assert task.action_names == ('force',)
    np.testing.assert_array_equal(task.action_low, [-1.0])
    assert task.threshold == 90.0 and task.episode_length == 999 and task.dt == 0.05
    assert task.angle_pairs == ()

    # The real plant: the spaces match the names (make_env checks them).
    env = task.make_env(seed=0)
    reward = task.reward_function()
    rng = np.random.default_rng(0)
    observations, actions, next_observations, rewards = [], [], [], []
    observation, _ = env.reset(seed=0)
    for step in range(300):
        if step % 100 == 99:
            # Just below the flag, rolling right: the next step reaches it (+100).
            env.unwrapped.state = np.array([0.44, 0.03])
            observation = env.unwrapped.state.astype(np.float32)
        action = rng.uniform(-1.0, 1.0, 1)
        next_observation, real_reward, terminated, truncated, _ = env.step(action)
        observations.append(observation)
        actions.append(action)
        next_observations.append(next_observation)
        rewards.append(real_reward)
        observation = next_observation
        if terminated or truncated:
            observation, _ = env.reset()
    env.close()
    rewards = np.asarray(rewards)
    assert np.sum(rewards > 50) == 3  # the flag was reached, and scored
    inside = np.asarray(observations, dtype=np.float64)
    assert np.all((inside >= task.observation_low) & (inside <= task.observation_high))
    scored = reward(inside, np.asarray(actions), np.asarray(next_observations, dtype=np.float64))
    np.testing.assert_allclose(scored, rewards, atol=1e-9)


def task_files() -> list[Path]:
    """The parameter files of the node graph (those with a /** section), not Gazebo's."""
    return [
        path
        for path in sorted(CONFIG.glob('*.yaml'))
        if isinstance(yaml.safe_load(path.read_text()), dict)
        and '/**' in yaml.safe_load(path.read_text())
    ]


@pytest.mark.parametrize('path', task_files(), ids=lambda p: p.name)
def test_every_shipped_parameter_file_defines_a_valid_task(path):
    task = task_from_parameters(shared_section(path))
    assert task.name == shared_section(path)['task']


def test_env_id_task_needs_every_part_and_names_the_first_missing():
    values = mountain_car(observation_low=None, threshold=None)
    error = refused(values)
    assert error.parameter == 'threshold'
    assert 'observation_low' in error.problem and 'MountainCarContinuous-v0' in error.problem
    # threshold is set only when given: its default 0.0 is a valid return.
    values = mountain_car()
    error = refused(values, given=set(values) - {'threshold'})
    assert error.parameter == 'threshold'
    assert refused(mountain_car(episode_length=0)).parameter == 'episode_length'
    assert refused(mountain_car(control_period=0.0)).parameter == 'control_period'
    assert refused(mountain_car(task='')).parameter == 'task'


@pytest.mark.parametrize(
    ('change', 'parameter', 'text'),
    [
        ({'env_id': 'MountainCarContinuos-v0'}, 'env_id', 'MountainCarContinuous'),
        ({'task': 'pendulum'}, 'task', 'registered task'),
        ({'observation_low': [-1.3]}, 'observation_low', 'expected 2 values'),
        ({'observation_high': [-1.4, 0.1]}, 'observation_low', 'below observation_high'),
        ({'action_high': [-1.0]}, 'action_low', 'below action_high'),
        ({'action_low': ['a']}, 'action_low', 'list of numbers'),
        ({'angle_pairs': [0]}, 'angle_pairs', 'odd length'),
        ({'angle_pairs': [0, 2]}, 'angle_pairs', 'out of range'),
        ({'episode_length': 999.5}, 'episode_length', 'int'),
        ({'observation_names': ['position', 'position']}, 'observation_names', 'unique'),
    ],
)
def test_env_id_task_errors_name_the_parameter(change, parameter, text):
    error = refused(mountain_car(**change))
    assert error.parameter == parameter, error
    assert text in str(error)


@pytest.mark.parametrize(
    ('reward', 'text'),
    [
        ("__import__('os').system('true')", 'not allowed'),
        ('position.real', 'attribute access'),
        ('positon ** 2', "unknown name 'positon'"),
        ('cartpole_swingup', 'cannot score'),  # a named reward for 5 observations
        ('100 *', 'does not parse'),
    ],
)
def test_reward_must_be_a_name_an_expression_or_learned(reward, text):
    error = refused(mountain_car(reward=reward))
    assert error.parameter == 'reward'
    assert text in str(error)


@pytest.mark.parametrize(
    ('reward', 'text'),
    [
        ('1e9**1e9', "'1e9**1e9' is inf (not finite)"),
        ('9**9**9**9', 'is inf (not finite)'),
        ('0*1e309', "constant '1e309' is not finite"),
        ('log(0*velocity)', 'is -inf (not finite)'),
        ('sqrt(position)', 'is nan (not finite)'),  # position < 0 at random samples
        ('1 / (position - 0.7)', 'position=0.7'),  # only at the upper bound: a corner
        ('exp(1000 * force)', 'is inf (not finite) at position='),
        ('9' * 400 + ' * force', 'too large for a float'),
        ('9' * 5000, 'does not parse'),
        (' + '.join(['velocity'] * 900), 'nests too deep'),  # 900 terms, 10k characters
        ('-' * 3000 + 'velocity', 'does not parse'),
        ('cos(' * 120 + 'velocity' + ')' * 120, 'nests too deep'),
    ],
)
def test_reward_must_be_finite_and_small_everywhere_in_the_task_box(reward, text):
    """Rewards are evaluated at start-up on the middle, random points and corners of the
    observation bounds and action limits: one NaN or inf there is refused naming 'reward'
    and the point; huge literals, 1,000-term sums and deep nesting are refused with a
    message, never a traceback (OverflowError, RecursionError) or a hang.
    """
    error = refused(mountain_car(reward=reward))
    assert error.parameter == 'reward'
    assert text in str(error), str(error)[:500]
    assert len(str(error)) < 1500


def test_learned_reward_comes_with_the_model_not_the_task():
    task = task_from_parameters(mountain_car(reward=LEARNED_REWARD))
    assert task.reward == LEARNED_REWARD
    with pytest.raises(ValueError, match='learns its reward'):
        task.reward_function()
    # The reward model the model updater fits stands in for it.
    model = SparseRewardModel(task.observation_names, task.action_names)
    assert model(np.zeros((4, 2)), np.zeros((4, 1)), np.zeros((4, 2))).shape == (4,)


def test_registered_task_may_be_narrowed_but_not_redefined():
    pendulum = TASKS['pendulum']
    values = {
        'task': 'pendulum',
        'observation_names': ['cos_theta', 'sin_theta', 'theta_dot'],
        'action_names': ['torque'],
        'action_low': [-1.5],
        'action_high': [3.0],
        'control_period': 0.02,
        'threshold': 0.0,
        'episode_length': 0,
        'reward': '',
        'angle_pairs': [],
        'observation_low': [],
        'observation_high': [],
        'env_id': '',
    }
    # A limit wider than the task's is refused, naming the parameter; tighter ones hold.
    with pytest.raises(TaskParameterError, match='widens') as widened:
        task_from_parameters(values, given={'task', 'action_low', 'action_high'})
    assert widened.value.parameter == 'action_high'
    values['action_high'] = [1.75]
    task = task_from_parameters(values, given={'task', 'action_low', 'action_high'})
    np.testing.assert_array_equal(task.action_low, [-1.5])
    np.testing.assert_array_equal(task.action_high, [1.75])
    # Defaults of the unset parameters keep the task's values.
    assert task.dt == 0.02
    assert task.threshold == pendulum.threshold
    assert task.episode_length == pendulum.episode_length
    assert task.reward == 'pendulum'
    # Given: reward, threshold (0.0 counts), episode length, bounds, the same angle pairs.
    task = task_from_parameters(
        {
            **values,
            'reward': LEARNED_REWARD,
            'episode_length': 100,
            'angle_pairs': [0, 1],
            'observation_low': [-1.0, -1.0, -10.0],
            'observation_high': [1.0, 1.0, 10.0],
        },
        given={'task', 'threshold'},
    )
    assert (task.reward, task.threshold, task.episode_length) == (LEARNED_REWARD, 0.0, 100)
    np.testing.assert_array_equal(task.observation_high, [1.0, 1.0, 10.0])

    for change, parameter in (
        ({'task': 'pendullum'}, 'task'),
        ({'observation_names': ['c', 's', 'w']}, 'observation_names'),
        ({'action_low': [-1.0, -1.0]}, 'action_low'),
        ({'angle_pairs': [1, 0]}, 'angle_pairs'),
        ({'observation_low': [0.0]}, 'observation_low'),
        ({'reward': 'thetadot ** 2'}, 'reward'),
    ):
        assert refused({**values, **change}).parameter == parameter, change


def test_gymnasium_knows_the_example_env():
    # The env id in the example file stays a registered gymnasium id.
    spec = gymnasium.spec(shared_section(EXAMPLE)['env_id'])
    assert spec.max_episode_steps == shared_section(EXAMPLE)['episode_length']
    assert spec.reward_threshold == shared_section(EXAMPLE)['threshold']


def test_example_task_fits_and_its_surrogate_scores_with_the_expression():
    """The core path the nodes take: fit E-SINDy on the real car, step the surrogate."""
    from sindyrl_ros.core.dyna import DynaConfig, PolicyLearner, RealPlant, fit_dynamics
    from sindyrl_ros.core.dynamics_fit import EnsembleConfig
    from sindyrl_ros.core.library import LibraryConfig

    document = yaml.safe_load(EXAMPLE.read_text())
    task = task_from_parameters(document['/**']['ros__parameters'])
    updater = document['model_updater']['ros__parameters']
    config = DynaConfig(
        library=LibraryConfig(
            degree=updater['library_degree'], control=updater['library_control']
        ),
        ensemble=EnsembleConfig(
            n_models=updater['ensemble_models'], threshold=updater['stlsq_threshold']
        ),
        validation_horizon=updater['validation_horizon'],
        max_validation_error=updater['max_validation_error'],
        surrogate_envs=8,
    )
    plant = RealPlant(task.make_env(seed=0), task, seed=0)
    plant.collect(400, None, 0.0)
    model, validation, accepted = fit_dynamics(task, plant.trajectories, config, 1)
    assert accepted, validation
    # velocity[k+1] - velocity[k] = 0.0015 force - 0.0025 cos(3 position): the force gain.
    observations = np.array([[-0.5, 0.0], [-0.5, 0.0]])
    pushed = model.predict(observations, np.array([[1.0], [-1.0]]))
    assert (pushed[0, 1] - pushed[1, 1]) / 2.0 == pytest.approx(0.0015, rel=0.05)

    # The policy trainer's learner scores surrogate steps with the expression.
    learner = PolicyLearner(task, config, seed=0)
    starts = np.concatenate([t.observations for t in plant.trajectories])
    env = learner.surrogate(model, starts, seed=0)
    observations = env.reset()
    actions = np.random.default_rng(0).uniform(-1.0, 1.0, (env.n_envs, 1))
    next_observations, rewards, terminated, _ = env.step(actions)
    assert not terminated.any()
    np.testing.assert_allclose(rewards, -0.1 * actions[:, 0] ** 2)
    # At the flag, rolling right: +100.
    goal = np.tile([0.5, 0.02], (env.n_envs, 1))
    scored = learner.reward(goal, actions, goal)
    np.testing.assert_allclose(scored, 100.0 - 0.1 * actions[:, 0] ** 2)


def test_saturation_is_given_per_observation_name():
    robot = {
        'task': 'pendulum_robot',
        'observation_names': ['cos_theta', 'sin_theta', 'theta_dot'],
        'action_names': ['torque'],
        'action_low': [-2.0],
        'action_high': [2.0],
        'control_period': 0.05,
        'reward': 'pendulum',
        'threshold': -200.0,
        'episode_length': 200,
        'observation_low': [-1.1, -1.1, -9.0],
        'observation_high': [1.1, 1.1, 9.0],
    }
    assert task_from_parameters(robot).saturation == {}
    task = task_from_parameters(
        {
            **robot,
            'saturation_names': ['theta_dot'],
            'saturation_low': [-8.0],
            'saturation_high': [8.0],
        }
    )
    assert task.saturation == {'theta_dot': (-8.0, 8.0)} and task.env_id == ''
    assert refused({**robot, 'saturation_names': ['theta_dot']}).parameter == 'saturation_low'
    assert (
        refused(
            {
                **robot,
                'saturation_names': ['omega'],
                'saturation_low': [-1.0],
                'saturation_high': [1.0],
            }
        ).parameter
        == 'saturation_names'
    )
