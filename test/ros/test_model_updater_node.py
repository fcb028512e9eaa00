"""The model updater node in its own process, fed real Pendulum-v1 data over DDS."""

import json
import sys

import numpy as np
from pendulum_data import pendulum_episode
import pytest
from ros_testing import NodeStatusProbe, spin_until

pytestmark = pytest.mark.ros

DT_NS = 50_000_000  # Pendulum-v1 control period
NAMES = ('cos_theta', 'sin_theta', 'theta_dot')


def episode_messages(start_ns, observations, actions, mode='explore'):
    """(topic, stamp_ns, values, mode) of an episode as the sensor and controller send it.

    Like the plant's terminal state, the last observation is answered too; that action has
    no next observation and must not become a transition.
    """
    messages = []
    for k, observation in enumerate(observations):
        stamp = start_ns + k * DT_NS
        messages.append(('observation', stamp, observation, ''))
        messages.append(('action', stamp, actions[min(k, len(actions) - 1)], mode))
    return messages


class UpdaterProbe(NodeStatusProbe):
    """Test-side node: publishes observations/actions, collects model cards."""

    def __init__(self, context, executor):
        from sensor_msgs.msg import JointState
        from std_msgs.msg import String

        from sindyrl_ros.ros.qos import LATCHED_QOS, TRANSITION_QOS

        super().__init__('updater_probe', context, executor, '/model_updater')
        self.observations = self.node.create_publisher(
            JointState, '/sindyrl/observation', TRANSITION_QOS
        )
        self.actions = self.node.create_publisher(JointState, '/sindyrl/action', TRANSITION_QOS)
        self.rewards = self.node.create_publisher(JointState, '/sindyrl/reward', TRANSITION_QOS)
        self.cards = []
        self.node.create_subscription(
            String,
            '/sindyrl/model',
            lambda m: self.cards.append(json.loads(m.data)),
            LATCHED_QOS,
        )
        self.fit_states = []
        self.node.create_subscription(
            JointState, '/sindyrl/fit_state', self._on_fit_state, LATCHED_QOS
        )

    def _on_fit_state(self, message):
        from sindyrl_ros.core.protocol import FitState

        self.fit_states.append(FitState.from_vector(message.name, message.position))

    def connected(self, timeout=30.0):
        return self.spin_until(
            lambda: (
                self.observations.get_subscription_count() > 0
                and self.actions.get_subscription_count() > 0
                and self.rewards.get_subscription_count() > 0
                and self.node.count_publishers('/sindyrl/model') > 0
            ),
            timeout,
        )

    def send(self, messages, burst=20):
        """Publish in small bursts, giving DDS time to deliver them."""
        from sindyrl_ros.ros.messages import ns_to_stamp, vector_message

        for index, (topic, stamp, values, mode) in enumerate(messages):
            if topic == 'observation':
                self.observations.publish(vector_message(NAMES, values, ns_to_stamp(stamp)))
            elif topic == 'reward':
                self.rewards.publish(vector_message(('reward',), values, ns_to_stamp(stamp)))
            else:
                message = vector_message(('torque',), values, ns_to_stamp(stamp), 'effort')
                message.header.frame_id = mode
                self.actions.publish(message)
            if index % burst == burst - 1:
                spin_until(self.executor, lambda: False, timeout=0.01)

    def recorded(self, observations, actions, timeout=30.0):
        return self.spin_until(
            lambda: (
                self.counter('observations_recorded') >= observations
                and self.counter('actions_recorded') >= actions
            ),
            timeout,
        )


def start_updater(start_process, run_dir, *parameters):
    args = [
        sys.executable,
        '-m',
        'sindyrl_ros.nodes.model_updater',
        '--ros-args',
        '-p',
        'task:=pendulum',
        '-p',
        f'run_dir:={run_dir}',
        '-p',
        'diagnostics_period:=0.1',
        '-p',
        'flush_period:=0.2',
    ]
    for parameter in parameters:
        args += ['-p', parameter]
    return start_process(args, name='model_updater')


def test_pairs_by_stamp_splits_on_gaps_records_and_publishes(ros_context, start_process, tmp_path):
    from sindyrl_ros.core.dynamics import SindyDynamics
    from sindyrl_ros.core.recording import read_recording
    from sindyrl_ros.core.transitions import assemble_log

    context, executor = ros_context
    run_dir = tmp_path / 'run'
    # 300 exploration transitions trigger the fit: it can only start once every message
    # of both exploration episodes has arrived, however they were shuffled.
    updater = start_updater(start_process, run_dir, 'refit_every:=300')
    probe = UpdaterProbe(context, executor)
    assert probe.connected(), updater.output()

    first_obs, first_act, _ = pendulum_episode(seed=0, steps=150)
    second_obs, second_act, _ = pendulum_episode(seed=1, steps=150)
    eval_obs, eval_act, _ = pendulum_episode(seed=2, steps=40)
    evaluation = episode_messages(0, eval_obs, eval_act, mode='evaluate')
    # A 1 s gap (20 control periods) separates the episodes, as after a plant reset.
    explore = episode_messages(3 * 10**9, first_obs, first_act)
    explore += episode_messages(3 * 10**9 + 171 * DT_NS, second_obs, second_act)
    np.random.default_rng(0).shuffle(explore)
    probe.send(evaluation + explore)
    total = len(evaluation + explore) // 2
    assert probe.recorded(total, total), updater.output()
    # A held plant (1 s later): its last state is answered with the safe command, and the
    # controller's watchdog repeats that answer 30 times. One answer per state is recorded;
    # the repeats are only counted.
    held = max(stamp for _, stamp, _, _ in explore) + 20 * DT_NS
    probe.send([('observation', held, first_obs[0], ''), ('action', held, np.zeros(1), 'safe')])
    assert probe.recorded(total + 1, total + 1), updater.output()
    probe.send([('action', held, np.zeros(1), 'safe')] * 30)
    assert probe.spin_until(lambda: probe.counter('repeated_actions') == 30, 10.0)
    total += 1

    assert probe.spin_until(lambda: probe.cards, timeout=60), updater.output()
    card = probe.cards[-1]
    assert card['model_version'] == 1
    # Paired by stamp: exactly the 2 x 150 exploration transitions, in 2 trajectories (the
    # gap split them, the answered terminal states added nothing), evaluation left out.
    assert card['transitions'] == 300
    assert card['trajectories'] == 2
    assert probe.value('transitions_explore') == '300'
    assert probe.value('transitions_evaluate') == '40'
    model = SindyDynamics.from_dict(card)
    assert model.observation_names == list(NAMES)
    assert np.asarray(card['start_observations']).shape[1] == 3
    assert card['validation']['nrmse'] <= 0.5 and not card['validation']['diverged']
    # Physics check: theta_dot[k+1] ≈ theta_dot[k] + 0.15 torque (3/(m l^2) dt).
    predicted = model.predict(first_obs[:-1], first_act)
    np.testing.assert_allclose(predicted, first_obs[1:], atol=0.05)
    saved = json.loads((run_dir / 'models' / 'model_1.json').read_text())
    assert saved == card
    # The typed fit state the run supervisor decides holds from: one fit, accepted, and
    # another 300 exploration transitions needed before the next.
    from sindyrl_ros.core.protocol import FitState

    done = FitState(1, 1, 0, 0, False, 1, 300, 300)
    assert probe.spin_until(lambda: probe.fit_states and probe.fit_states[-1] == done, 10), (
        probe.fit_states[-3:]
    )
    assert any(state.fit_running for state in probe.fit_states)

    # Stopping closes the recording: complete MCAP segments with everything that was sent.
    assert updater.stop() == 0, updater.output()
    [log] = read_recording(run_dir / 'recording')
    assert log.complete
    assert len(log.observations) == total and len(log.actions) == total
    trajectories = assemble_log(log, 0.05).trajectories()
    assert len(trajectories) == 2
    np.testing.assert_array_equal(trajectories[0].observations, first_obs)
    np.testing.assert_array_equal(trajectories[1].actions, second_act)
    probe.destroy()


def test_keeps_recording_during_a_fit_and_never_publishes_a_rejected_model(
    ros_context, start_process, tmp_path
):
    context, executor = ros_context
    run_dir = tmp_path / 'run'
    # No model can be this good: every candidate is rejected. A large ensemble makes the
    # fit last seconds, so messages sent meanwhile show the callbacks are served.
    updater = start_updater(
        start_process,
        run_dir,
        'refit_every:=100',
        'max_validation_error:=0.0',
        'ensemble_models:=400',
    )
    probe = UpdaterProbe(context, executor)
    assert probe.connected(), updater.output()
    observations, actions, _ = pendulum_episode(seed=3, steps=200)
    messages = episode_messages(10**9, observations, actions)
    probe.send(messages[:204])  # 102 observations: 101 transitions start the fit
    assert probe.spin_until(lambda: probe.value('fit_running') == 'True', 60), updater.output()
    probe.send(messages[204:])
    assert probe.recorded(201, 201), updater.output()
    during_fit = probe.value('fit_running') == 'True'

    assert probe.spin_until(lambda: probe.counter('models_rejected') >= 1, 120), updater.output()
    assert during_fit, 'the fit ended before the later messages were recorded'
    assert probe.level() == 1  # WARN, with the reason in the status message
    assert 'rejected' in probe.message()
    assert 'rejected' in updater.output()
    assert float(probe.value('last_validation_nrmse')) > 0.0
    spin_until(executor, lambda: False, timeout=0.5)
    assert probe.cards == []
    assert probe.counter('models_accepted') == 0
    assert not list((run_dir / 'models').glob('*.json'))
    assert updater.stop() == 0, updater.output()
    probe.destroy()


def test_starts_from_a_recorded_log(ros_context, start_process, tmp_path):
    from sindyrl_ros.core.mcap_writer import TransitionLogWriter

    context, executor = ros_context
    log_path = tmp_path / 'earlier' / 'recording.mcap'
    observations, actions, _ = pendulum_episode(seed=4, steps=200)
    with TransitionLogWriter(log_path, metadata={'observation_names': json.dumps(NAMES)}) as w:
        for _, stamp, values, mode in episode_messages(10**9, observations, actions):
            if mode:
                w.write_action(stamp, ('torque',), values, mode)
            else:
                w.write_observation(stamp, NAMES, values)

    run_dir = tmp_path / 'run'
    updater = start_updater(
        start_process,
        run_dir,
        f'initial_log:={log_path}',
        'refit_every:=100000',
        'fit_worker:=thread',
    )
    probe = UpdaterProbe(context, executor)
    assert probe.spin_until(lambda: probe.cards, timeout=60), updater.output()
    assert probe.cards[-1]['transitions'] == 200
    assert (run_dir / 'models' / 'model_1.json').exists()
    assert updater.stop() == 0, updater.output()
    probe.destroy()
    # The run's own recording holds the log it was fitted on, as a session of its own.
    from sindyrl_ros.core.recording import read_recording

    # (The live session received nothing, so it wrote no segment.)
    [copied] = read_recording(run_dir / 'recording')
    assert len(copied.observations) == 201 and copied.metadata['initial_log'] == str(log_path)


def test_resumes_after_kill_9_with_every_session_paired_on_its_own(
    ros_context, start_process, tmp_path
):
    """A model updater killed with kill -9, then started again with resume:=true.

    The killed start's open segment is rewritten whole; the refit on resume uses the
    transitions of both starts, and the second start's stamps, which repeat the first's (a
    restarted simulator's clock starts at 0 again), are never paired with them.
    """
    import signal

    from sindyrl_ros.core.recording import read_recording

    context, executor = ros_context
    run_dir = tmp_path / 'run'
    first = start_updater(
        start_process,
        run_dir,
        'refit_every:=100000',
        'fit_worker:=thread',
        'segment_seconds:=0.5',
    )
    probe = UpdaterProbe(context, executor)
    assert probe.connected(), first.output()
    observations, actions, _ = pendulum_episode(seed=7, steps=150)
    probe.send(episode_messages(10**9, observations, actions))
    assert probe.recorded(151, 151), first.output()
    probe.spin_until(lambda: False, timeout=1.5)  # flushed, one segment closed
    first.process.send_signal(signal.SIGKILL)
    first.process.wait(10)
    probe.destroy()

    second = start_updater(
        start_process, run_dir, 'resume:=true', 'refit_every:=100000', 'fit_worker:=thread'
    )
    probe = UpdaterProbe(context, executor)
    # Fitted at once on the killed start's 150 transitions.
    assert probe.spin_until(lambda: probe.cards, timeout=60), second.output()
    assert probe.cards[-1]['transitions'] == 150 and probe.cards[-1]['model_version'] == 1
    # Same stamps again, another episode: 150 more, not a mix of the two.
    others, other_actions, _ = pendulum_episode(seed=8, steps=150)
    probe.send(episode_messages(10**9, others, other_actions))
    assert probe.recorded(151, 151), second.output()
    assert probe.spin_until(lambda: probe.value('transitions_explore') == '300', 10)
    assert second.stop() == 0, second.output()
    probe.destroy()
    sessions = read_recording(run_dir / 'recording')
    assert [len(log.observations) for log in sessions] == [151, 151]
    assert all(log.complete for log in sessions)
    np.testing.assert_array_equal([o.values for o in sessions[0].observations], observations)


def test_learns_the_reward_the_plant_reports(ros_context, start_process, tmp_path):
    """reward:=learned: rewards on /sindyrl/reward, paired by stamp, make a reward model."""
    from sindyrl_ros.core.model_fitting import fit_reward_model
    from sindyrl_ros.core.recording import read_recording
    from sindyrl_ros.core.reward import SparseRewardModel
    from sindyrl_ros.core.tasks import get_task

    context, executor = ros_context
    run_dir = tmp_path / 'run'
    updater = start_updater(
        start_process,
        run_dir,
        'reward:=learned',
        'refit_every:=300',
        'ensemble_models:=5',
        'reward_library_degree:=3',
    )
    probe = UpdaterProbe(context, executor)
    assert probe.connected(), updater.output()

    first_obs, first_act, first_rew = pendulum_episode(seed=5, steps=150)
    second_obs, second_act, second_rew = pendulum_episode(seed=6, steps=150)
    second_start = 10**9 + 171 * DT_NS
    messages = episode_messages(10**9, first_obs, first_act)
    messages += episode_messages(second_start, second_obs, second_act)
    # The plant stamps each reward with the observation its step started from. The last
    # 50 rewards of the second episode are lost: those transitions still train the
    # dynamics, but not the reward model.
    messages += [('reward', 10**9 + k * DT_NS, [r], '') for k, r in enumerate(first_rew)]
    messages += [
        ('reward', second_start + k * DT_NS, [r], '') for k, r in enumerate(second_rew[:100])
    ]
    np.random.default_rng(2).shuffle(messages)
    probe.send(messages)
    assert probe.spin_until(lambda: probe.counter('rewards_recorded') >= 250, 30), updater.output()
    assert probe.spin_until(lambda: probe.cards, timeout=60), updater.output()
    card = probe.cards[-1]
    assert card['transitions'] == 300
    reward_model = SparseRewardModel.from_dict(card['reward_model'])
    assert reward_model.fit_info['n_samples'] == 250
    # Pendulum-v1 scores the state before the step: 'auto' found that out.
    assert reward_model.observation == 'current'
    # Paired by stamp: exactly the reward model of the 250 rewarded transitions.
    expected = fit_reward_model(
        get_task('pendulum'),
        [
            (first_obs, first_act, first_rew),
            (second_obs[:101], second_act[:100], second_rew[:100]),
        ],
        {'degree': 3},
    )
    np.testing.assert_allclose(reward_model.coefficients, expected.coefficients, atol=1e-12)
    # A cubic in (cos θ, sin θ, θ̇, u) for -(θ² + 0.1 θ̇² + 0.001 u²).
    predicted = reward_model(first_obs[:-1], first_act, first_obs[1:])
    error = np.sqrt(np.mean((predicted - first_rew) ** 2))
    assert error < 0.2 * np.std(first_rew), (error, reward_model.equation())
    # Logged right after the card is published: it may reach the log a moment later.
    assert updater.wait_for_output('learned r =', timeout=20), updater.output()[-2000:]

    assert updater.stop() == 0, updater.output()
    [log] = read_recording(run_dir / 'recording')
    assert len(log.rewards) == 250
    assert json.loads((run_dir / 'models' / 'model_1.json').read_text()) == card
    probe.destroy()
