"""The progress log (core.progress): written, followed, read back totally, told."""

import json
import os

import numpy as np
import pytest

from sindyrl_ros.core.progress import (
    ProgressFollower,
    ProgressLog,
    RunHistory,
    describe,
    read_progress,
)


def write(run_dir, events, tail: str = ''):
    run_dir.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(event) for event in events]
    (run_dir / 'progress.jsonl').write_text('\n'.join(lines) + '\n' + tail)


def test_a_run_killed_mid_line_is_read_up_to_its_torn_line(tmp_path):
    events = [
        {'event': 'start', 'real_steps': 0, 'eval_steps': 0},
        {'event': 'episode', 'real_steps': 200, 'eval_steps': 0},
        {'event': 'hold', 'real_steps': 200, 'eval_steps': 0},
        {'event': 'resume', 'reason': 'policy', 'held_s': 12.5, 'real_steps': 200},
        {'event': 'release', 'policy_version': 1, 'source_model_version': 1, 'evaluation': True},
        {
            'event': 'evaluation',
            'real_steps': 200,
            'eval_steps': 2000,
            'eval_return_mean': -612.5,
            'eval_returns': [-600.0, -625.0],
            'policy_version': 1,
            'source_model_version': 1,
            'model_version': 1,
        },
        {'event': 'episode', 'real_steps': 400, 'eval_steps': 2000},
    ]
    write(tmp_path, events, tail='{"event": "episode", "real_st')
    read, skipped = read_progress(tmp_path)
    assert read == events and skipped == 1
    history = RunHistory.read(tmp_path)
    assert (history.real_steps, history.eval_steps) == (400, 2000)
    assert history.starts == 1 and history.holds == 1 and history.held_wall_time_s == 12.5
    assert [e['eval_return_mean'] for e in history.evaluations] == [-612.5]
    # The policy evaluated last is the released one: republished on resume, it is not new.
    assert (history.released_policy_version, history.released_model_version) == (1, 1)
    assert history.finished is None and not history.reached and history.skipped_lines == 1


def test_a_policy_released_for_evaluation_but_not_evaluated_is_not_taken_as_released(tmp_path):
    write(
        tmp_path,
        [
            {'event': 'start'},
            {
                'event': 'release',
                'policy_version': 3,
                'source_model_version': 2,
                'evaluation': True,
            },
        ],
    )
    history = RunHistory.read(tmp_path)
    assert history.released_policy_version is None and history.released_model_version == 0


def test_a_policy_sent_exploring_unevaluated_is_released(tmp_path):
    write(
        tmp_path,
        [
            {
                'event': 'release',
                'policy_version': 3,
                'source_model_version': 2,
                'evaluation': False,
            }
        ],
    )
    history = RunHistory.read(tmp_path)
    assert (history.released_policy_version, history.released_model_version) == (3, 2)


def test_anything_in_the_file_is_refused_line_by_line_never_raised(tmp_path):
    garbage = [
        '[1, 2, 3]',
        '"just a string"',
        '{"no_event_key": 1}',
        '{"event": 7}',
        '[' * 5000 + ']' * 5000,
        '{"event": "episode", "real_steps": "many", "eval_steps": -5}',
        '{"event": "episode", "real_steps": 1e400}',
        '{"event": "evaluation", "eval_return_mean": "high", "real_steps": 10}',
        '{"event": "evaluation", "eval_return_mean": NaN, "real_steps": 10}',
        '{"event": "resume", "held_s": "long"}',
        '{"event": "release", "evaluation": false, "source_model_version": true}',
        '\x00\xff not json',
    ]
    (tmp_path / 'progress.jsonl').write_text('\n'.join(garbage) + '\n')
    history = RunHistory.read(tmp_path)
    assert history.skipped_lines == 6
    assert (history.real_steps, history.eval_steps) == (10, 0)
    assert history.evaluations == [] and history.held_wall_time_s == 0.0
    assert history.released_model_version == 0


def test_the_last_start_decides_whether_the_run_finished(tmp_path):
    finish = {'event': 'finish', 'reason': 'threshold', 'reached': True}
    write(tmp_path, [{'event': 'start'}, finish])
    assert RunHistory.read(tmp_path).reached
    write(tmp_path, [{'event': 'start'}, finish, {'event': 'start'}])
    history = RunHistory.read(tmp_path)
    assert history.starts == 2 and not history.reached


def test_no_log_is_an_empty_history_and_a_fifo_is_refused_without_hanging(tmp_path):
    assert RunHistory.read(tmp_path) == RunHistory()
    os.mkfifo(tmp_path / 'progress.jsonl')
    with pytest.raises(ValueError, match='not a regular file'):
        read_progress(tmp_path)


def test_the_writer_appends_whole_json_lines_that_the_readers_read_back(tmp_path):
    write(tmp_path, [{'event': 'start', 'real_steps': 0}])  # an earlier start of the run
    follower = ProgressFollower(tmp_path)
    with ProgressLog(tmp_path) as log:
        log.append({'event': 'model', 'validation_nrmse': float('nan'), 'model_version': 1})
        # Flushed per event: readable before the writer closes.
        assert follower.new_events() == [
            {'event': 'model', 'validation_nrmse': None, 'model_version': 1}
        ]
        log.append({'event': 'episode', 'real_steps': np.int64(200), 'return': np.float32(-2)})
    text = (tmp_path / 'progress.jsonl').read_text()
    assert text.endswith('\n') and 'NaN' not in text and len(text.splitlines()) == 3
    events, skipped = read_progress(tmp_path)
    assert [event['event'] for event in events] == ['start', 'model', 'episode'] and not skipped
    assert events[2]['real_steps'] == 200 and events[2]['return'] == -2.0
    # Only what came after the first call, once.
    assert follower.new_events() == [events[2]] and follower.new_events() == []


def test_the_follower_waits_for_a_line_to_be_whole_and_skips_what_is_not_an_event(tmp_path):
    follower = ProgressFollower(tmp_path)  # before the log exists
    assert follower.new_events() == []
    path = tmp_path / 'progress.jsonl'
    path.write_text('{"event": "start"}\n[1, 2]\n\n{"event": "hold", "rea')
    assert follower.new_events() == [{'event': 'start'}]
    with open(path, 'a') as stream:
        stream.write('son": "initial_steps"}\n')
    assert follower.new_events() == [{'event': 'hold', 'reason': 'initial_steps'}]


def test_progress_lines_name_steps_models_policies_and_returns():
    lines = [
        describe(event)
        for event in (
            {
                'event': 'model',
                'real_steps': 200,
                'eval_steps': 0,
                'model_version': 1,
                'validation_nrmse': 0.005,
            },
            {
                'event': 'policy',
                'real_steps': 200,
                'eval_steps': 0,
                'policy_version': 1,
                'source_model_version': 1,
                'surrogate_return': -92.2,
            },
            {
                'event': 'evaluation',
                'real_steps': 202,
                'eval_steps': 2000,
                'policy_version': 1,
                'eval_return_mean': -168.4,
            },
            {'event': 'hold', 'real_steps': 200, 'eval_steps': 0, 'reason': 'initial_steps'},
        )
    ]
    assert 'model v1 accepted' in lines[0] and '0.005' in lines[0]
    assert 'policy v1 from model v1' in lines[1]
    assert 'real steps    202' in lines[2] and 'eval return -168.4' in lines[2]
    assert 'held' in lines[3]
    assert describe({'event': 'episode', 'evaluation': True}) is None
    assert 'held-out rollout error 0.005' in lines[0]
    # Episodes too short to hold a tail out: the error is on the fitting data, and says so.
    short = {'event': 'model', 'model_version': 1, 'validation_nrmse': 0.01}
    line = describe({**short, 'validation_held_out': False})
    assert 'fitting-data rollout error 0.010' in line and 'held-out' not in line
    # A surrogate return that is not the mean of whole episodes says so.
    policy = {'event': 'policy', 'policy_version': 2, 'surrogate_return': -50.0}
    assert 'cut short' not in describe(policy)
    cut = {**policy, 'surrogate_return_episodes': 16, 'surrogate_return_cut_short': 2}
    assert '(2 of 16 surrogate episodes cut short)' in describe(cut)


def test_an_event_with_fields_of_the_wrong_type_is_not_told_and_never_raises():
    # A NaN mean is written as null (JSON has no NaN); a hand edit may put anything.
    assert describe({'event': 'evaluation', 'eval_return_mean': None}) is None
    assert describe({'event': 'episode', 'episode_return': 'high'}) is None
    assert describe({'event': 'model', 'real_steps': None}) is None
    assert describe({'event': 'no such kind'}) is None
