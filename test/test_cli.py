"""The sindyrl-ros command: help, argument errors, progress lines, run plots."""

import json
import subprocess
import sys

import pytest

from sindyrl_ros import cli
from sindyrl_ros.run_plots import plot_learning_curve


@pytest.mark.parametrize('command', [[], ['train'], ['deploy'], ['export'], ['rig-emulator']])
def test_help_works_for_every_command(command):
    result = subprocess.run(
        [sys.executable, '-m', 'sindyrl_ros.cli', *command, '--help'],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert 'usage:' in result.stdout


def test_train_refuses_a_missing_parameter_file(tmp_path):
    with pytest.raises(SystemExit, match='does not exist'):
        cli.main(['train', '--config', str(tmp_path / 'nope.yaml'), '--run-dir', str(tmp_path)])


def test_deploy_refuses_a_corrupt_policy_file(tmp_path):
    policy = tmp_path / 'policy.json'
    policy.write_text('{"format": "sindyrl_ros/policy", "version": 1, "kind": "ml')
    with pytest.raises(SystemExit, match='policy'):
        cli.main(['deploy', '--policy', str(policy)])


def test_progress_lines_name_steps_models_policies_and_returns():
    lines = [
        cli._describe(event)
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
    assert cli._describe({'event': 'episode', 'evaluation': True}) is None


def test_learning_curve_is_drawn_from_the_progress_log(tmp_path):
    events = [
        {'event': 'episode', 'real_steps': 200, 'episode_return': -1071.9, 'end': 'truncated'},
        {'event': 'evaluation', 'real_steps': 202, 'eval_return_mean': -168.4},
    ]
    (tmp_path / 'progress.jsonl').write_text(''.join(json.dumps(e) + '\n' for e in events))
    path = plot_learning_curve(tmp_path, -200.0)
    assert path is not None and path.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert plot_learning_curve(tmp_path / 'empty') is None
