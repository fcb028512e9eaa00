"""The progress log read back to resume a run (core.progress): totally, and to the point."""

import json
import os

import pytest

from sindyrl_ros.core.progress import RunHistory, read_progress


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
