"""The run supervisor in its own process, driving stand-in plant and controller services."""

import json
import subprocess
import sys

import numpy as np
import pytest
from ros_testing import NodeStatusProbe

pytestmark = pytest.mark.ros

NAMES = ['cos_theta', 'sin_theta', 'theta_dot']


def policy_document(version: int, sparse_coefficients: int, source_model: int = 1) -> str:
    """A real (small, untrained) network policy document as the trainer publishes it."""
    from sindyrl_ros.core.policies import MLPPolicy

    rng = np.random.default_rng(version)
    policy = MLPPolicy(
        [(rng.standard_normal((4, 3)), np.zeros(4)), (rng.standard_normal((1, 4)), np.zeros(1))],
        'tanh',
        NAMES,
        ['torque'],
        [-2.0],
        [2.0],
        metadata={
            'policy_version': version,
            'source_model_version': source_model,
            'nn_parameters': 21,
            'sparse_policy_coefficients': sparse_coefficients,
            'surrogate_return': -150.0,
        },
    )
    return policy.to_json()


class StandIns(NodeStatusProbe):
    """The controller's set_mode, the plant's reset and pause services, the plant's episodes,
    the model updater's fit state."""

    def __init__(self, context, executor, pause=True):
        from sensor_msgs.msg import JointState
        from std_msgs.msg import String
        from std_srvs.srv import SetBool, Trigger

        from sindyrl_ros.ros.qos import LATCHED_QOS, RELIABLE_QOS

        super().__init__('stand_ins', context, executor, '/run_supervisor')
        self.calls = []
        self.node.create_service(SetBool, '/controller/set_mode', self._on_set_mode)
        self.node.create_service(Trigger, '/plant/reset', self._on_reset)
        if pause:
            self.node.create_service(SetBool, '/plant/pause', self._on_pause)
        self.fit_state = self.node.create_publisher(JointState, '/sindyrl/fit_state', LATCHED_QOS)
        self.updater_status()  # a model updater is up (the supervisor waits for one)
        self.episodes = self.node.create_publisher(String, '/sindyrl/episode', RELIABLE_QOS)
        self.models = self.node.create_publisher(String, '/sindyrl/model', LATCHED_QOS)
        self.policies = self.node.create_publisher(String, '/sindyrl/policy', LATCHED_QOS)
        self.plant_steps = 0
        self.episode_count = 0

    def _on_set_mode(self, request, response):
        self.calls.append('explore' if request.data else 'evaluate')
        response.success = True
        return response

    def _on_reset(self, request, response):
        self.calls.append('reset')
        response.success = True
        return response

    def _on_pause(self, request, response):
        self.calls.append('pause' if request.data else 'resume')
        response.success = True
        return response

    def updater_status(self, **values):
        """The model updater's typed fit state (/sindyrl/fit_state); unnamed fields 0."""
        from sindyrl_ros.core.protocol import FIT_STATE_NAMES, FitState
        from sindyrl_ros.ros.messages import vector_message

        state = FitState(**values)
        stamp = self.node.get_clock().now().to_msg()
        self.fit_state.publish(vector_message(FIT_STATE_NAMES, state.to_vector(), stamp))

    def episode(self, mode, episode_return, length=200, end='episode_length', last=False):
        from std_msgs.msg import String

        self.plant_steps += length
        self.episode_count += 1
        record = {
            'episode': self.episode_count,
            'return': episode_return,
            'length': length,
            'real_steps': self.plant_steps,
            'mode': mode,
            'end': end,
            'task': 'pendulum',
        }
        self.episodes.publish(String(data=json.dumps(record)))
        if last:
            return  # the run ends with it: no diagnostics to wait for
        # The next step waits for the supervisor to have counted it.
        assert self.spin_until(lambda: self.counter('episodes_seen') == self.episode_count, 20)

    def publish(self, publisher, text):
        from std_msgs.msg import String

        publisher.publish(String(data=text))


def test_switches_modes_over_the_services_and_writes_the_summary(
    ros_context, start_process, tmp_path
):
    context, executor = ros_context
    run_dir = tmp_path / 'run'
    supervisor = start_process(
        [
            sys.executable,
            '-m',
            'sindyrl_ros.nodes.run_supervisor',
            '--ros-args',
            '-p',
            'task:=pendulum',
            '-p',
            f'run_dir:={run_dir}',
            '-p',
            'budget:=5000',
            '-p',
            'threshold:=-300.0',
            '-p',
            'eval_episodes:=2',
            '-p',
            'diagnostics_period:=0.05',
            '-p',
            'hold_for_policy:=false',  # free running: evaluations while the plant explores
        ],
        name='run_supervisor',
    )
    graph = StandIns(context, executor, pause=False)  # e.g. a plant without /plant/pause

    def calls_are(expected):
        return graph.spin_until(lambda: graph.calls == expected, 30)

    assert calls_are(['explore']), supervisor.output()
    assert graph.spin_until(lambda: graph.episodes.get_subscription_count() > 0, 20)
    graph.publish(
        graph.models,
        json.dumps(
            {
                'format': 'sindyrl_ros/model',
                'model_version': 1,
                'n_nonzero': 6,
                'equations': ['theta_dot[k+1] = 1.000 theta_dot[k] + 0.750 sin_theta[k]'],
                'validation': {'nrmse': 0.04},
            }
        ),
    )
    graph.episode('explore', -1200.0)

    # Malformed records are refused and counted, one by one, never a crash (the run goes on).
    deep = '[' * 5000 + ']' * 5000
    for publisher, reason, texts in (
        (
            graph.episodes,
            'malformed_episode',
            [
                deep,
                '{"length": 200, "return": NaN}',
                '{"length": "x", "return": 1}',
                '[1]',
                '{"length": 10, "return": 1, "real_steps": "many"}',
                '{"length": -10, "return": 1}',
            ],
        ),
        (
            graph.models,
            'malformed_model',
            [
                deep,
                '{"model_version": 2, "validation": [1]}',
                '{"model_version": 2, "equations": 5}',
            ],
        ),
    ):
        for count, text in enumerate(texts, start=1):
            graph.publish(publisher, text)
            assert graph.spin_until(
                lambda r=reason, c=count: graph.counter(f'rejected.{r}') == c, 20
            ), (
                text[:60],
                supervisor.output()[-2000:],
            )
    assert supervisor.alive() and graph.value('model_version') == '1'

    # A policy arrives mid-episode: evaluation starts when that episode ends.
    graph.publish(graph.policies, policy_document(1, sparse_coefficients=9))
    assert graph.spin_until(lambda: graph.value('policy_version') == '1', 20)
    assert graph.calls == ['explore']
    graph.episode('explore', -1100.0)
    assert calls_are(['explore', 'evaluate', 'reset']), supervisor.output()
    graph.episode('explore', -5.0, length=5, end='reset')  # cut short by the reset
    graph.episode('evaluate', -800.0)
    graph.episode('evaluate', -700.0)  # mean -750 < -300: back to exploring
    assert calls_are(['explore', 'evaluate', 'reset', 'explore', 'reset']), supervisor.output()
    graph.episode('evaluate', -3.0, length=3, end='reset')

    graph.episode('explore', -600.0)
    graph.publish(graph.policies, policy_document(2, sparse_coefficients=7))
    assert graph.spin_until(lambda: graph.value('policy_version') == '2', 20)
    graph.episode('explore', -500.0)
    calls = ['explore', 'evaluate', 'reset', 'explore', 'reset', 'evaluate', 'reset']
    assert calls_are(calls)
    graph.episode('evaluate', -900.0)
    # The controller swaps to a policy that arrives mid-evaluation: the evaluation restarts.
    graph.publish(graph.policies, policy_document(3, sparse_coefficients=5))
    assert calls_are([*calls, 'reset']), supervisor.output()
    graph.episode('evaluate', -10.0, length=10, end='reset')
    graph.episode('evaluate', -250.0)
    graph.publish(
        graph.episodes,
        json.dumps(
            {
                'episode': 99,
                'return': -200.0,
                'length': 200,
                'real_steps': graph.plant_steps + 200,
                'mode': 'evaluate',
                'end': 'truncated',
            }
        ),
    )

    # Mean -225 >= -300: the run is over and the process ends by itself, with code 0.
    assert supervisor.process.wait(timeout=30) == 0, supervisor.output()
    summary = json.loads((run_dir / 'summary.json').read_text())
    assert summary['task'] == 'pendulum'
    assert summary['reached'] is True
    assert summary['threshold'] == -300.0
    assert summary['stop_reason'] == 'threshold'
    # Training steps: 200 + 200 + 5 + 3 + 200 + 200 + 10 (the episodes cut by a reset count
    # as training: the safe side); evaluation: 5 x 200.
    assert summary['real_steps'] == 818
    assert summary['eval_steps'] == 1000
    assert summary['eval_return_mean'] == -225.0
    assert summary['eval_returns'] == [-250.0, -200.0]
    assert summary['model_equations'] == [
        'theta_dot[k+1] = 1.000 theta_dot[k] + 0.750 sin_theta[k]'
    ]
    assert summary['model_version'] == 1
    assert summary['policy_version'] == 3
    assert summary['evaluated_policy_version'] == 3
    assert summary['nn_parameters'] == 21
    assert summary['sparse_policy_coefficients'] == 5
    assert summary['wall_time_s'] > 0
    assert [e['eval_return_mean'] for e in summary['evaluations']] == [-750.0, -225.0]
    assert [e['real_steps'] for e in summary['evaluations']] == [405, 818]
    assert [e['policy_version'] for e in summary['evaluations']] == [1, 3]

    events = [json.loads(line) for line in (run_dir / 'progress.jsonl').read_text().splitlines()]
    kinds = [e['event'] for e in events]
    assert kinds.count('episode') == 12
    assert kinds.count('evaluation') == 2 and kinds.count('evaluation_restart') == 1
    assert kinds.count('policy') == 3 and kinds.count('model') == 1
    assert kinds[-1] == 'finish'
    assert 'real steps 818/5000' in supervisor.output()
    graph.destroy()


def supervisor_command(run_dir, *parameters: str) -> list[str]:
    arguments = [sys.executable, '-m', 'sindyrl_ros.nodes.run_supervisor', '--ros-args']
    for parameter in (
        'task:=pendulum',
        f'run_dir:={run_dir}',
        'diagnostics_period:=0.05',
        *parameters,
    ):
        arguments += ['-p', parameter]
    return arguments


def read_events(run_dir):
    return [json.loads(line) for line in (run_dir / 'progress.jsonl').read_text().splitlines()]


def test_holds_the_plant_until_a_policy_on_new_data_arrives(ros_context, start_process, tmp_path):
    """Synchronous Dyna: explore a chunk, hold, evaluate the new policy, explore, hold..."""
    context, executor = ros_context
    run_dir = tmp_path / 'run'
    supervisor = start_process(
        supervisor_command(
            run_dir,
            'budget:=5000',
            'threshold:=-300.0',
            'eval_episodes:=2',
            'initial_steps:=200',
            'steps_per_iteration:=200',
            'hold_timeout:=600.0',
        ),
        name='run_supervisor',
    )
    graph = StandIns(context, executor)
    calls = ['explore', 'resume']  # explore mode, and a plant left paused runs again

    def calls_are(*more):
        calls.extend(more)
        return graph.spin_until(lambda: graph.calls == calls, 30)

    assert calls_are(), supervisor.output()
    assert graph.spin_until(lambda: graph.episodes.get_subscription_count() > 0, 20)
    graph.updater_status(refits=0, models_rejected=0, fit_failures=0, fit_running=False)

    # 200 random steps, at an episode end: the plant is held.
    graph.episode('explore', -1200.0)
    assert calls_are('pause'), supervisor.output()
    assert graph.spin_until(lambda: graph.value('state') == 'holding', 20)
    # The model is accepted: its policy is coming, so the hold goes on.
    graph.updater_status(
        refits=1, models_accepted=1, models_rejected=0, fit_running=False, model_version=1
    )
    graph.publish(graph.models, json.dumps({'model_version': 1, 'equations': ['x = x']}))
    graph.publish(graph.policies, policy_document(1, sparse_coefficients=9, source_model=1))
    # Evaluated while held: evaluate mode and the reset, then the plant resumes.
    assert calls_are('evaluate', 'reset', 'resume'), supervisor.output()
    graph.episode('explore', -5.0, length=3, end='reset')  # steps before the hold took hold
    graph.episode('evaluate', -800.0)
    graph.episode('evaluate', -700.0)  # mean -750 < -300: explore with the policy
    assert calls_are('pause', 'explore', 'reset', 'resume'), supervisor.output()
    graph.episode('evaluate', -2.0, length=2, end='reset')
    graph.episode('explore', -600.0)  # 205 steps since the policy came: hold
    assert calls_are('pause'), supervisor.output()

    # The updater's fit of the new data is rejected: exploring goes on for another chunk.
    graph.updater_status(
        refits=2, models_accepted=1, models_rejected=0, fit_running=True, model_version=1
    )
    graph.updater_status(
        refits=2, models_accepted=1, models_rejected=1, fit_running=False, model_version=1
    )
    assert calls_are('resume'), supervisor.output()
    graph.episode('explore', -550.0)
    assert calls_are('pause'), supervisor.output()
    # A policy retrained on the same model is not what the hold waits for; one on a newer
    # model is.
    graph.publish(graph.policies, policy_document(2, sparse_coefficients=8, source_model=1))
    assert graph.spin_until(lambda: graph.value('policy_version') == '2', 20)
    graph.publish(graph.policies, policy_document(3, sparse_coefficients=7, source_model=2))
    assert calls_are('evaluate', 'reset', 'resume'), supervisor.output()
    graph.episode('evaluate', -250.0)
    graph.episode('evaluate', -200.0, last=True)  # mean -225 >= -300: the run ends

    assert supervisor.process.wait(timeout=30) == 0, supervisor.output()
    summary = json.loads((run_dir / 'summary.json').read_text())
    assert summary['reached'] is True and summary['stop_reason'] == 'threshold'
    assert summary['real_steps'] == 200 + 3 + 2 + 200 + 200
    assert summary['eval_steps'] == 800
    assert [e['real_steps'] for e in summary['evaluations']] == [203, 605]
    assert [e['policy_version'] for e in summary['evaluations']] == [1, 3]
    assert summary['hold_for_policy'] is True and summary['holds'] == 3
    assert summary['held_wall_time_s'] > 0.0
    events = read_events(run_dir)
    holds = [e for e in events if e['event'] == 'hold']
    resumes = [e for e in events if e['event'] == 'resume']
    assert [e['reason'] for e in holds] == ['initial_steps', 'steps_per_iteration'] * 1 + [
        'steps_per_iteration'
    ]
    assert [e['real_steps'] for e in holds] == [200, 405, 605]
    assert [e['reason'] for e in resumes] == ['policy', 'model_rejected', 'policy']
    assert [e['policy_version'] for e in resumes] == [1, 1, 3]
    assert sum(e['held_s'] for e in resumes) == pytest.approx(
        summary['held_wall_time_s'], abs=1e-2
    )
    graph.destroy()


def test_hold_times_out_and_the_budget_ends_the_run(ros_context, start_process, tmp_path):
    """Without any policy, each hold ends after hold_timeout; the budget still ends the run."""
    context, executor = ros_context
    run_dir = tmp_path / 'run'
    supervisor = start_process(
        supervisor_command(run_dir, 'budget:=400', 'hold_timeout:=0.5', 'initial_steps:=150'),
        name='run_supervisor',
    )
    graph = StandIns(context, executor)
    assert graph.spin_until(lambda: graph.calls == ['explore', 'resume'], 30), supervisor.output()
    assert graph.spin_until(lambda: graph.episodes.get_subscription_count() > 0, 20)
    graph.episode('explore', -1200.0, length=100)  # under initial_steps: goes on
    graph.episode('explore', -1100.0, length=100)
    assert graph.spin_until(lambda: graph.calls[-1] == 'pause', 30)
    assert graph.spin_until(lambda: graph.calls[-1] == 'resume', 30)  # after hold_timeout
    graph.episode('explore', -1000.0, last=True)  # 400 >= budget: the final hold, then the end
    assert graph.spin_until(lambda: not supervisor.alive(), 30), supervisor.output()
    assert supervisor.process.wait(timeout=30) == 0, supervisor.output()
    assert graph.calls == ['explore', 'resume', 'pause', 'resume', 'pause']
    summary = json.loads((run_dir / 'summary.json').read_text())
    assert summary['stop_reason'] == 'budget' and summary['reached'] is False
    assert summary['real_steps'] == 400 and summary['holds'] == 2
    events = read_events(run_dir)
    assert [e['reason'] for e in events if e['event'] == 'hold'] == ['initial_steps', 'budget']
    assert [e['reason'] for e in events if e['event'] == 'resume'] == ['hold_timeout'] * 2
    graph.destroy()


def test_a_hold_no_refit_will_answer_ends_at_once_not_after_the_timeout(
    ros_context, start_process, tmp_path
):
    """The chunk ended before the updater had refit_every transitions: its typed fit state
    says so (no fit started, transitions still needed), and exploring goes on at once."""
    context, executor = ros_context
    run_dir = tmp_path / 'run'
    supervisor = start_process(
        supervisor_command(run_dir, 'budget:=1000', 'hold_timeout:=600.0', 'initial_steps:=150'),
        name='run_supervisor',
    )
    graph = StandIns(context, executor)
    assert graph.spin_until(lambda: graph.calls == ['explore', 'resume'], 30), supervisor.output()
    assert graph.spin_until(lambda: graph.episodes.get_subscription_count() > 0, 20)
    graph.updater_status(transitions_explore=200, transitions_to_refit=100)
    graph.episode('explore', -1200.0)
    held = ['explore', 'resume', 'pause', 'resume']
    assert graph.spin_until(lambda: graph.calls == held, 30), (graph.calls, supervisor.output())
    events = read_events(run_dir)
    [resume] = [e for e in events if e['event'] == 'resume']
    assert resume['reason'] == 'no_refit'
    # Released as soon as the updater's state counted the chunk's 200 steps (it already
    # did): not after hold_timeout (600 s here) nor the longest settle wait.
    assert resume['held_s'] < 10.0, resume
    assert supervisor.stop() == 0, supervisor.output()
    graph.destroy()


def test_refuses_an_unknown_parameter(ros_domain, tmp_path):
    params = tmp_path / 'params.yaml'
    params.write_text('run_supervisor:\n  ros__parameters:\n    task: pendulum\n    budjet: 5\n')
    result = subprocess.run(
        [
            sys.executable,
            '-m',
            'sindyrl_ros.nodes.run_supervisor',
            '--ros-args',
            '--params-file',
            str(params),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert 'budjet' in result.stderr + result.stdout
