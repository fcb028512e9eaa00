"""The run supervisor's state machine (core.supervision) over services that answer later.

The test plays the graph: it answers each service call when it chooses (in order), sends
episode records, models, policies and fit states, and moves the clock. The runs mirror the
run supervisor's node tests (test/ros/test_run_supervisor_node.py), step for step.
"""

import json

import numpy as np
import pytest

from sindyrl_ros.core.policies import MLPPolicy
from sindyrl_ros.core.progress import RunHistory
from sindyrl_ros.core.protocol import FitState, ProtocolSettings
from sindyrl_ros.core.run_record import EpisodeRecord, RunRecord, parse_model_card, parse_policy
from sindyrl_ros.core.supervision import (
    EVALUATING,
    EXPLORE,
    FINISHED,
    FIT_STATE_SETTLE_MAX_S,
    HOLDING,
    PAUSE,
    RESET,
    SET_MODE,
    SWITCHING,
    WAIT_EPISODE_END,
    Call,
    Supervision,
)

NAMES = ['cos_theta', 'sin_theta', 'theta_dot']


def policy(version: int, source_model: int = 1) -> dict:
    rng = np.random.default_rng(version)
    layers = [
        (rng.standard_normal((4, 3)), np.zeros(4)),
        (rng.standard_normal((1, 4)), np.zeros(1)),
    ]
    metadata = {'policy_version': version, 'source_model_version': source_model}
    document = MLPPolicy(layers, 'tanh', NAMES, ['torque'], [-2.0], [2.0], metadata=metadata)
    return parse_policy(document.to_json(), NAMES, ['torque'])


def model(version: int) -> dict:
    return parse_model_card(json.dumps({'model_version': version, 'equations': ['x = x']}))


def call_name(call: Call) -> str:
    if call.service == SET_MODE:
        return 'explore' if call.value else 'evaluate'
    if call.service == PAUSE:
        return 'pause' if call.value else 'resume'
    assert call.service == RESET
    return 'reset'


class Graph:
    """The services (answered when the test says), the progress log, the clock, the plant."""

    def __init__(self, eval_episodes=2, hold_timeout=0.0, history=None, **settings):
        settings = {'budget': 5000, 'threshold': -300.0, **settings}
        self.record = RunRecord('pendulum', ProtocolSettings(**settings), eval_episodes, 0.0)
        if history is not None:
            self.record.resume(history, {})
        self.now = 0.0
        self.events, self.lines, self.errors = [], [], []
        self.calls: list[str] = []
        self.pending = []
        self.finished = 0
        self.plant_steps = 0
        self.supervision = Supervision(
            self.record,
            event=lambda name, **fields: self.events.append({'event': name, **fields}),
            progress=self.lines.append,
            error=self.errors.append,
            call=self._call,
            finished=self._finished,
            hold_timeout=hold_timeout,
            clock=lambda: self.now,
        )

    def _call(self, call, answered) -> None:
        self.calls.append(call_name(call))
        self.pending.append(answered)

    def _finished(self) -> None:
        self.finished += 1

    @property
    def state(self) -> str:
        return self.supervision.state

    def answer(self, ok=True, detail='') -> None:
        self.pending.pop(0)(ok, detail)

    def answer_all(self) -> list[str]:
        """Answer every call, those made meanwhile too; returns the calls made since."""
        start = len(self.calls) - len(self.pending)
        while self.pending:
            self.answer()
        return self.calls[start:]

    def episode(self, mode, episode_return, length=200, end='episode_length') -> None:
        self.plant_steps += length
        number = len([e for e in self.events if e['event'] == 'episode']) + 1
        record = EpisodeRecord(number, length, episode_return, self.plant_steps, mode, end)
        self.supervision.episode(record)

    def kinds(self, kind: str, key: str) -> list:
        return [e[key] for e in self.events if e['event'] == kind]


def test_free_running_evaluates_each_new_policy_at_the_end_of_its_episode():
    graph = Graph(hold_for_policy=False)
    run = graph.supervision
    run.start(pause_available=False)  # a plant without /plant/pause
    assert graph.answer_all() == ['explore'] and graph.state == EXPLORE
    run.model(model(1))
    graph.episode('explore', -1200.0)
    run.policy(policy(1))  # mid-episode: evaluated when the episode ends
    assert graph.state == WAIT_EPISODE_END and graph.calls == ['explore']
    graph.episode('explore', -1100.0)
    assert graph.answer_all() == ['evaluate', 'reset'] and graph.state == EVALUATING
    graph.episode('explore', -5.0, length=5, end='reset')  # cut short by the reset
    graph.episode('evaluate', -800.0)
    graph.episode('evaluate', -700.0)  # mean -750 < -300: back to exploring
    assert graph.answer_all() == ['explore', 'reset'] and graph.state == EXPLORE
    graph.episode('evaluate', -3.0, length=3, end='reset')
    graph.episode('explore', -600.0)
    run.policy(policy(2))
    graph.episode('explore', -500.0)
    assert graph.answer_all() == ['evaluate', 'reset']
    graph.episode('evaluate', -900.0)
    # A policy that arrives mid-evaluation restarts it (the controller swapped already).
    run.policy(policy(3))
    assert graph.answer_all() == ['reset'] and graph.state == EVALUATING
    assert graph.record.eval_returns == []
    graph.episode('evaluate', -10.0, length=10, end='reset')
    graph.episode('evaluate', -250.0)
    graph.episode('evaluate', -200.0)  # mean -225 >= -300: the run is over

    assert graph.state == FINISHED and graph.finished == 1
    summary = graph.record.summary(now=10.0)
    assert summary['stop_reason'] == 'threshold' and summary['reached'] is True
    # Training: 200 + 200 + 5 + 3 + 200 + 200 + 10 (cut by a reset: the safe side).
    assert summary['real_steps'] == 818 and summary['eval_steps'] == 1000
    assert summary['eval_returns'] == [-250.0, -200.0] and summary['evaluated_policy_version'] == 3
    assert [e['real_steps'] for e in summary['evaluations']] == [405, 818]
    assert len(graph.kinds('episode', 'episode')) == 12
    assert graph.kinds('evaluation_restart', 'policy_version') == [3]
    assert graph.kinds('mode', 'mode') == [
        'explore',
        'evaluate',
        'explore',
        'evaluate',
        'evaluate',
    ]
    assert graph.kinds('release', 'policy_version') == []  # free running releases nothing
    # Late answers after the end change nothing.
    run.finish('max_wall_time')
    assert graph.finished == 1 and graph.record.stop_reason == 'threshold'


def test_holding_waits_for_a_policy_on_new_data_and_switches_modes_while_held():
    graph = Graph(initial_steps=200, steps_per_iteration=200, hold_timeout=600.0)
    run = graph.supervision
    run.start(pause_available=True)
    assert graph.answer_all() == ['explore', 'resume']  # a plant left paused runs again
    run.fit_state(FitState())
    graph.episode('explore', -1200.0)  # 200 random steps: held at the episode's end
    assert graph.answer_all() == ['pause'] and graph.state == HOLDING
    graph.now = 5.0
    run.fit_state(FitState(refits=1, models_accepted=1, model_version=1))  # a policy comes
    assert graph.state == HOLDING
    run.model(model(1))
    run.policy(policy(1, source_model=1))
    # Evaluated while held: mode and reset, then the plant resumes.
    assert graph.answer_all() == ['evaluate', 'reset', 'resume'] and graph.state == EVALUATING
    graph.episode('explore', -5.0, length=3, end='reset')  # before the hold took hold
    graph.episode('evaluate', -800.0)
    graph.episode('evaluate', -700.0)
    assert graph.answer_all() == ['pause', 'explore', 'reset', 'resume']
    graph.episode('evaluate', -2.0, length=2, end='reset')
    graph.episode('explore', -600.0)  # 205 steps since the policy came: hold
    assert graph.answer_all() == ['pause']
    # The fit of the new data is rejected: exploring goes on for another chunk.
    graph.now = 6.0
    run.fit_state(FitState(refits=2, models_accepted=1, fit_running=True, model_version=1))
    run.fit_state(FitState(refits=2, models_accepted=1, models_rejected=1, model_version=1))
    assert graph.answer_all() == ['resume'] and graph.state == EXPLORE
    graph.episode('explore', -550.0)
    assert graph.answer_all() == ['pause']
    # A policy retrained on the same model is not what the hold waits for.
    graph.now = 9.0
    run.policy(policy(2, source_model=1))
    assert graph.state == HOLDING and graph.pending == []
    graph.now = 10.0
    run.policy(policy(3, source_model=2))
    assert graph.answer_all() == ['evaluate', 'reset', 'resume']
    graph.episode('evaluate', -250.0)
    graph.episode('evaluate', -200.0)

    assert graph.state == FINISHED
    summary = graph.record.summary(now=11.0)
    assert summary['real_steps'] == 200 + 3 + 2 + 200 + 200 and summary['eval_steps'] == 800
    assert [e['real_steps'] for e in summary['evaluations']] == [203, 605]
    assert summary['holds'] == 3 and summary['held_wall_time_s'] == 5.0 + 1.0 + 4.0
    assert graph.kinds('hold', 'reason') == [
        'initial_steps',
        'steps_per_iteration',
        'steps_per_iteration',
    ]
    assert graph.kinds('resume', 'reason') == ['policy', 'model_rejected', 'policy']
    assert graph.kinds('resume', 'held_s') == [5.0, 1.0, 4.0]
    assert graph.kinds('release', 'policy_version') == [1, 3]


def test_a_hold_ends_after_its_timeout_and_the_budget_ends_the_run():
    graph = Graph(budget=400, hold_timeout=0.5, initial_steps=150)
    run = graph.supervision
    run.start(pause_available=True)
    graph.answer_all()
    graph.episode('explore', -1200.0, length=100)  # under initial_steps: goes on
    graph.episode('explore', -1100.0, length=100)
    assert graph.answer_all() == ['pause']
    graph.now = 0.4
    run.check_hold()
    assert graph.state == HOLDING
    graph.now = 0.5
    run.check_hold()
    assert graph.answer_all() == ['resume']
    graph.episode('explore', -1000.0)  # 400 >= budget: the final hold awaits a last policy
    assert graph.answer_all() == ['pause']
    graph.now = 1.0
    run.check_hold()  # none came: the run ends without an evaluation
    assert graph.state == FINISHED and graph.record.stop_reason == 'budget'
    assert graph.calls == ['explore', 'resume', 'pause', 'resume', 'pause']
    assert graph.kinds('hold', 'reason') == ['initial_steps', 'budget']
    assert graph.kinds('resume', 'reason') == ['hold_timeout'] * 2


def test_no_refit_coming_ends_a_hold_once_the_fit_state_counts_the_chunk():
    """On a loaded machine the updater's count lags the plant by seconds (the chaos test
    once released after 1 s with no model coming, and the run ended without a policy): a
    hold ends on 'no_refit' only once the fit state counts every step of the chunk."""
    graph = Graph(initial_steps=150, hold_timeout=600.0)
    run = graph.supervision
    run.start(pause_available=True)
    graph.answer_all()
    run.fit_state(FitState(transitions_explore=150, transitions_to_refit=150))
    graph.episode('explore', -1200.0)  # 200 steps
    graph.answer_all()
    graph.now = 5.0
    run.check_hold()
    assert graph.state == HOLDING  # 150 of the chunk's 200 steps counted: more may come
    run.fit_state(FitState(transitions_explore=200, transitions_to_refit=100))
    assert graph.kinds('resume', 'reason') == ['no_refit']
    assert graph.kinds('resume', 'held_s') == [5.0]


def test_a_fit_state_that_never_counts_the_chunk_settles_after_the_longest_wait():
    """A plant whose transitions can be lost (best-effort joint states) never lets the count
    catch up: 'no_refit' then ends the hold after FIT_STATE_SETTLE_MAX_S."""
    graph = Graph(initial_steps=150, hold_timeout=600.0)
    run = graph.supervision
    run.start(pause_available=True)
    graph.answer_all()
    run.fit_state(FitState(transitions_explore=190, transitions_to_refit=10))
    graph.episode('explore', -1200.0)
    graph.answer_all()
    graph.now = FIT_STATE_SETTLE_MAX_S - 0.1
    run.check_hold()
    assert graph.state == HOLDING
    graph.now = FIT_STATE_SETTLE_MAX_S
    run.check_hold()
    assert graph.kinds('resume', 'reason') == ['no_refit']
    assert graph.kinds('resume', 'held_s') == [FIT_STATE_SETTLE_MAX_S]


def test_episodes_that_end_while_the_resume_is_on_its_way_count_once_it_is_answered():
    graph = Graph(initial_steps=200)
    run = graph.supervision
    run.start(pause_available=True)
    graph.answer_all()
    graph.episode('explore', -1200.0)
    graph.answer_all()
    run.policy(policy(1, source_model=1))
    graph.answer()  # evaluate mode
    graph.answer()  # reset; the resume is on its way, and the plant already runs
    assert graph.state == SWITCHING and graph.supervision.resuming
    graph.episode('evaluate', -250.0)
    assert graph.events[-1]['deferred'] is True and graph.record.eval_returns == []
    graph.answer()  # the resume: the evaluation is on, the deferred episode is its first
    assert graph.state == EVALUATING and graph.record.eval_returns == [-250.0]
    graph.episode('evaluate', -200.0)
    assert graph.state == FINISHED and graph.record.last_return == -225.0


def test_a_policy_that_arrives_during_the_switch_to_evaluation_restarts_it_after_the_switch():
    graph = Graph(hold_for_policy=False)
    run = graph.supervision
    run.start(pause_available=False)
    graph.answer_all()
    run.policy(policy(1))
    graph.episode('explore', -1200.0)
    assert graph.state == SWITCHING and graph.calls[-1] == 'evaluate'
    run.policy(policy(2))  # the controller swaps to it at once
    assert graph.answer_all() == ['evaluate', 'reset', 'reset']
    assert graph.state == EVALUATING
    assert graph.record.evaluating_policy['policy_version'] == 2
    assert graph.events[-1] == {'event': 'mode', 'mode': 'evaluate', 'policy_version': 2}
    assert graph.kinds('evaluation_restart', 'policy_version') == [2]


def test_a_refused_call_ends_the_run_and_says_which():
    graph = Graph()
    graph.supervision.start(pause_available=True)
    graph.answer(ok=False, detail='no controller here')
    assert graph.state == FINISHED and graph.finished == 1
    assert graph.record.stop_reason == 'service_refused: explore mode'
    assert graph.errors == ['explore mode refused: no controller here']
    assert graph.pending == []  # the resume after it is never sent


def test_a_resumed_run_past_its_initial_chunk_holds_before_any_real_step():
    history = RunHistory.from_events(
        [{'event': 'start'}, {'event': 'hold', 'real_steps': 200}, {'event': 'episode'}]
    )
    graph = Graph(history=history)
    graph.supervision.start(pause_available=True)
    assert graph.answer_all() == ['explore', 'pause'] and graph.state == HOLDING
    assert graph.kinds('hold', 'reason') == ['resume'] and graph.record.protocol.holds == 2


@pytest.mark.parametrize('value, what', [(True, 'explore mode'), (False, 'evaluate mode')])
def test_a_call_says_what_it_is(value, what):
    assert Call(SET_MODE, value).what == what
    assert Call(RESET).what == 'plant reset' and Call(PAUSE, value).what == 'plant pause'
