"""A run's record (core.run_record): inputs checked, steps counted, summary, resume."""

import json
import math

import numpy as np
import pytest

from sindyrl_ros.core.policies import MLPPolicy
from sindyrl_ros.core.progress import RunHistory
from sindyrl_ros.core.protocol import EXPLORE, FINISH, ProtocolSettings
from sindyrl_ros.core.run_record import (
    EpisodeRecord,
    RunRecord,
    parse_episode,
    parse_model_card,
    parse_policy,
    read_earlier_run,
)
from sindyrl_ros.core.serialization import FormatError

NAMES = ['cos_theta', 'sin_theta', 'theta_dot']
DEEP = '[' * 5000 + ']' * 5000


def episode(length, episode_return, plant_steps=None, mode='explore', end='episode_length'):
    return EpisodeRecord(1, length, episode_return, plant_steps, mode, end)


def policy_text(version: int, source_model: int, **metadata) -> str:
    """A real (small, untrained) network policy document as the trainer publishes it."""
    rng = np.random.default_rng(version)
    layers = [
        (rng.standard_normal((4, 3)), np.zeros(4)),
        (rng.standard_normal((1, 4)), np.zeros(1)),
    ]
    metadata = {'policy_version': version, 'source_model_version': source_model, **metadata}
    policy = MLPPolicy(layers, 'tanh', NAMES, ['torque'], [-2.0], [2.0], metadata=metadata)
    return policy.to_json()


def make_record(**settings) -> RunRecord:
    settings = {'budget': 5000, 'threshold': -300.0, **settings}
    return RunRecord('pendulum', ProtocolSettings(**settings), eval_episodes=2, started=100.0)


# ---------------------------------------------------------------------- inputs


def test_an_episode_record_is_read_with_what_its_steps_count_as():
    text = json.dumps(
        {'episode': 7, 'return': -12.5, 'length': 200, 'real_steps': 1400, 'mode': 'evaluate'}
    )
    record = parse_episode(text)
    assert record == EpisodeRecord(7, 200, -12.5, 1400, 'evaluate', '')
    assert record.is_evaluation and not record.cut_by_reset
    # An evaluation episode cut short by a reset counts as training (the safe side).
    cut = parse_episode('{"return": -1, "length": 5, "mode": "evaluate", "end": "reset"}')
    assert cut.cut_by_reset and not cut.is_evaluation and cut.plant_steps is None


def test_an_episode_with_missing_rewards_keeps_its_steps_and_an_unknown_return():
    """What a plant reports when rewards were missing: the ledger's NaN return goes out as
    JSON null (json_safe, as ros.diagnostics.EpisodeReporter sends it) and is read back
    with its steps, never refused (refusing it lost the steps from the budget)."""
    from sindyrl_ros.core.serialization import json_safe

    ledger_record = {'episode': 3, 'return': float('nan'), 'length': 200, 'real_steps': 600}
    text = json.dumps(json_safe(ledger_record), allow_nan=False)
    record = parse_episode(text)
    assert record.length == 200 and record.plant_steps == 600
    assert math.isnan(record.episode_return)


@pytest.mark.parametrize(
    'text, reason',
    [
        (DEEP, 'nested'),
        ('{"length": 200, "return": NaN}', 'NaN'),
        ('{"length": "x", "return": 1}', "length: 'x' is not a step count"),
        ('[1]', 'not a JSON object but list'),
        ('{"length": 10, "return": 1, "real_steps": "many"}', 'real_steps'),
        ('{"length": -10, "return": 1}', 'length: negative step count'),
        ('{"return": 1}', "no 'length'"),
        ('{"length": 10}', "no 'return'"),
        ('{"length": 10, "return": [1]}', 'return: [1] is not a number'),
    ],
)
def test_a_malformed_episode_record_is_refused_with_its_reason(text, reason):
    with pytest.raises(FormatError, match='sindyrl/episode') as refused:
        parse_episode(text)
    assert reason in str(refused.value)


def test_a_model_card_gives_what_the_run_reports_of_it():
    card = {
        'format': 'sindyrl_ros/model',
        'model_version': 3,
        'n_nonzero': 6,
        'equations': ['theta_dot[k+1] = 1.000 theta_dot[k]'],
        'validation': {'nrmse': 0.04, 'held_out': True},
        'transitions': 800,
    }
    assert parse_model_card(json.dumps(card)) == {
        'model_version': 3,
        'equations': ['theta_dot[k+1] = 1.000 theta_dot[k]'],
        'n_nonzero': 6,
        'validation_nrmse': 0.04,
        'validation_held_out': True,
        'transitions': 800,
    }
    # Only the version is required.
    assert parse_model_card('{"model_version": 1}')['equations'] == []


@pytest.mark.parametrize(
    'text, reason',
    [
        (DEEP, 'nested'),
        ('{"model_version": 2, "validation": [1]}', 'validation: not an object'),
        ('{"model_version": 2, "equations": 5}', 'equations: not a list'),
        ('{"equations": []}', "no 'model_version'"),
        ('{"model_version": "two"}', "model_version: 'two' is not a version number"),
        ('"model"', 'not a JSON object'),
    ],
)
def test_a_malformed_model_card_is_refused_with_its_reason(text, reason):
    with pytest.raises(FormatError, match='sindyrl/model') as refused:
        parse_model_card(text)
    assert reason in str(refused.value)


def test_a_policy_is_checked_in_full_and_reports_its_source_model_and_surrogate_return():
    text = policy_text(
        4, 2, sparse_policy_coefficients=9, surrogate_return=-150.0, surrogate_return_episodes=8
    )
    summary = parse_policy(text, NAMES, ['torque'])
    assert summary['policy_version'] == 4 and summary['source_model_version'] == 2
    assert summary['kind'] == 'mlp' and summary['nn_parameters'] == 4 * 3 + 4 + 4 + 1
    assert summary['sparse_policy_coefficients'] == 9
    assert summary['surrogate_return'] == -150.0 and summary['surrogate_return_episodes'] == 8
    assert summary['surrogate_return_cut_short'] is None
    with pytest.raises(FormatError):
        parse_policy(text, ['x', 'y', 'z'], ['torque'])  # trained for another task
    with pytest.raises(FormatError):
        parse_policy('{"kind": "mlp"', NAMES, ['torque'])


# ---------------------------------------------------------------------- counting


def test_training_and_evaluation_steps_are_counted_apart():
    record = make_record()
    record.count_episode(episode(200, -1200.0, plant_steps=200))
    record.count_episode(episode(5, -5.0, plant_steps=205, mode='evaluate', end='reset'))
    record.count_episode(episode(200, -800.0, plant_steps=405, mode='evaluate'))
    # A plant that does not say its step count: the length is added.
    record.count_episode(episode(100, -500.0))
    assert record.episodes == 4
    assert (record.real_steps, record.eval_steps, record.plant_steps) == (305, 200, 505)
    # The plant's own count is the truth: an episode record lost on the way still counts.
    record.count_episode(episode(10, -1.0, plant_steps=900))
    assert record.plant_steps == 900
    # ... and one behind what was counted (a late record) never counts backwards.
    record.count_episode(episode(10, -1.0, plant_steps=600))
    assert record.plant_steps == 900 and record.episodes == 6


def test_an_evaluation_records_its_mean_against_the_real_steps_and_the_protocol_decides():
    record = make_record()
    record.add_model({'model_version': 1, 'equations': ['x = x']})
    record.add_policy(parse_policy(policy_text(1, 1), NAMES, ['torque']))
    record.count_episode(episode(200, -1200.0, plant_steps=200))
    record.begin_evaluation()
    assert not record.add_evaluation_return(-800.0)
    assert record.add_evaluation_return(-700.0)  # eval_episodes = 2
    evaluation, decision = record.end_evaluation(now=160.0)
    assert decision.action == EXPLORE  # -750 < -300
    assert evaluation['eval_return_mean'] == -750.0 and evaluation['eval_returns'] == [-800, -700]
    assert evaluation['real_steps'] == 200 and evaluation['policy_version'] == 1
    assert evaluation['source_model_version'] == 1 and evaluation['wall_time_s'] == 60.0
    assert record.last_return == -750.0
    record.begin_evaluation()
    for episode_return in (-250.0, -200.0, -100.0):  # a third return is not averaged in
        record.add_evaluation_return(episode_return)
    evaluation, decision = record.end_evaluation(now=170.0)
    assert evaluation['eval_return_mean'] == -225.0 and decision == (FINISH, 'threshold', False)


def test_going_on_past_the_threshold_keeps_the_first_crossing():
    record = make_record(stop_at_threshold=False)
    record.add_policy(parse_policy(policy_text(1, 1), NAMES, ['torque']))
    for steps, returns in ((200, (-400.0, -400.0)), (400, (-250.0, -250.0)), (600, (-350, -350))):
        record.count_episode(episode(200, -1000.0, plant_steps=steps))
        record.begin_evaluation()
        for episode_return in returns:
            record.add_evaluation_return(episode_return)
        _, decision = record.end_evaluation(now=200.0)
        assert decision.action == EXPLORE
    summary = record.summary(now=300.0)
    assert summary['reached'] is True and summary['steps_to_threshold'] == 400
    assert summary['eval_return_mean'] == -350.0  # the last evaluation is reported


def test_held_wall_time_sums_the_holds_and_counts_the_one_in_progress():
    record = make_record()
    record.hold_began(10.0)
    assert record.hold_ended(12.5) == 2.5 and record.protocol.holds == 1
    record.hold_began(20.0)
    assert record.held_wall_time_s(21.0) == 3.5
    assert record.summary(now=21.0)['held_wall_time_s'] == 3.5


# ---------------------------------------------------------------------- summary


def test_the_summary_reports_the_evaluated_policy_and_the_model_it_was_trained_on():
    record = make_record()
    record.add_model({'model_version': 1, 'equations': ['x = 1'], 'n_nonzero': 3})
    record.add_policy(
        parse_policy(policy_text(1, 1, sparse_policy_coefficients=9), NAMES, ['torque'])
    )
    record.count_episode(episode(200, -1200.0, plant_steps=200))
    record.begin_evaluation()
    record.add_evaluation_return(-800.0)
    record.add_evaluation_return(float('nan'))
    record.end_evaluation(now=150.0)
    # A newer model arrives after the evaluation; its policy is not evaluated yet.
    record.add_model({'model_version': 2, 'equations': ['x = 2'], 'n_nonzero': 4})
    record.add_policy(
        parse_policy(policy_text(2, 2, sparse_policy_coefficients=5), NAMES, ['torque'])
    )
    record.node_status['/controller'] = {'level': 0, 'message': 'ok', 'values': {}}
    record.stop_reason = 'budget'
    summary = record.summary(now=200.0)
    assert summary['evaluated_policy_version'] == 1
    assert summary['model_version'] == 1 and summary['model_equations'] == ['x = 1']
    assert summary['model_nonzero'] == 3 and summary['newest_model_version'] == 2
    assert summary['policy_version'] == 2 and summary['sparse_policy_coefficients'] == 5
    assert summary['policy_kind'] == 'mlp' and summary['nn_parameters'] == 21
    assert summary['eval_return_mean'] is None  # NaN has no JSON: null
    assert summary['eval_returns'] == [-800.0, None]
    assert summary['evaluations'] == [
        {
            'real_steps': 200,
            'eval_steps': 0,
            'eval_return_mean': None,
            'policy_version': 1,
            'model_version': 1,
        }
    ]
    assert summary['stop_reason'] == 'budget' and summary['reached'] is False
    assert summary['task'] == 'pendulum' and summary['budget'] == 5000
    assert summary['threshold'] == -300.0 and summary['starts'] == 1
    assert summary['wall_time_s'] == 100.0 and summary['episodes'] == 1
    assert summary['node_diagnostics']['/controller']['message'] == 'ok'
    json.dumps(summary, allow_nan=False)  # writable as it is


def test_before_any_evaluation_the_summary_reports_the_newest_model():
    record = make_record()
    record.add_model({'model_version': 1, 'equations': ['x = 1']})
    summary = record.summary(now=101.0)
    assert summary['model_version'] == 1 and summary['evaluated_policy_version'] is None
    assert summary['eval_returns'] == [] and summary['evaluations'] == []


# ---------------------------------------------------------------------- resume


def earlier_run(real_steps=600, holds=2) -> RunHistory:
    return RunHistory.from_events(
        [
            {'event': 'start', 'real_steps': 0, 'eval_steps': 0},
            {'event': 'hold', 'real_steps': 200, 'eval_steps': 0},
            {'event': 'resume', 'held_s': 4.0, 'real_steps': 200},
            {
                'event': 'evaluation',
                'real_steps': 200,
                'eval_steps': 400,
                'eval_return_mean': -700.0,
                'eval_returns': [-700.0, -700.0],
                'policy_version': 1,
                'source_model_version': 1,
                'model_version': 1,
            },
            *([{'event': 'hold', 'real_steps': 400, 'eval_steps': 400}] * (holds - 1)),
            {'event': 'episode', 'real_steps': real_steps, 'eval_steps': 400},
        ]
    )


def test_a_resumed_run_takes_the_larger_step_count_and_goes_on_counting_from_it():
    record = make_record()
    # The recording holds 50 more training steps: an episode cut short by the crash.
    resumed = record.resume(earlier_run(), {'explore': 650, 'evaluate': 400})
    assert (record.real_steps, record.eval_steps) == (650, 400)
    assert resumed == {
        'real_steps': 650,
        'eval_steps': 400,
        'recorded_steps': {'explore': 650, 'evaluate': 400},
        'progress_real_steps': 600,
        'evaluations': 1,
        'holds': 2,
        'released_policy_version': 1,
    }
    assert record.starts == 2 and record.held_wall_time == 4.0
    # The plant counts from 0 again on this start: its steps add to the earlier ones.
    record.count_episode(episode(200, -600.0, plant_steps=200))
    assert record.real_steps == 850
    # The policy released before, republished, is not new; the evaluations go on.
    record.add_policy(parse_policy(policy_text(1, 1), NAMES, ['torque']))
    assert not record.protocol.new_policy() and not record.protocol.unevaluated()
    assert record.summary(now=100.0)['evaluations'][0]['eval_return_mean'] == -700.0


def test_a_resumed_run_past_its_initial_chunk_holds_first():
    assert make_record().holds_first is False  # a fresh run explores
    held_before = make_record(initial_steps=5000)
    held_before.resume(earlier_run(), {})
    assert held_before.holds_first  # it held before: past its initial chunk
    past = make_record(initial_steps=200)
    past.resume(RunHistory.from_events([{'event': 'start'}]), {'explore': 250})
    assert past.protocol.holds == 0 and past.holds_first
    within = make_record(initial_steps=500)
    within.resume(RunHistory.from_events([{'event': 'start'}]), {'explore': 120})
    assert within.real_steps == 120 and not within.holds_first  # finishes its initial chunk
    free = make_record(hold_for_policy=False)
    free.resume(earlier_run(), {})
    assert not free.holds_first  # a free-running run never holds


def test_reading_an_earlier_run_refuses_nothing_and_an_unreadable_recording(tmp_path):
    with pytest.raises(ValueError, match='holds no earlier run.*nothing to resume'):
        read_earlier_run(tmp_path)
    (tmp_path / 'recording').mkdir()
    with pytest.raises(ValueError, match='cannot read .*recording'):
        read_earlier_run(tmp_path)
    (tmp_path / 'recording').rmdir()
    (tmp_path / 'progress.jsonl').write_text(
        json.dumps({'event': 'start'}) + '\n' + json.dumps({'event': 'episode', 'real_steps': 7})
    )
    history, recorded = read_earlier_run(tmp_path)
    assert history.starts == 1 and history.real_steps == 7 and recorded == {}
