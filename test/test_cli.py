"""The sindyrl-ros command: help, argument errors, progress lines, run plots."""

import json
from pathlib import Path
import shutil
import subprocess
import sys

import pytest
import yaml

from sindyrl_ros import cli, graph, runs
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


def test_a_run_is_named_after_the_task_its_config_file_names(tmp_path, monkeypatch):
    """`train --config FILE` without --task: the run (its directory, and the task run.json
    keeps for --resume) is named after the file's /** task, else after the file itself;
    never after the default task."""
    monkeypatch.chdir(tmp_path)
    cartpole = tmp_path / 'my_cartpole.yaml'
    shutil.copy(graph.task_config('cartpole_swingup'), cartpole)
    arguments = cli.build_parser().parse_args(['train', '--config', str(cartpole)])
    task_file, run_dir = runs.plan_training(arguments)
    assert task_file == cartpole.resolve() and arguments.task == 'cartpole_swingup'
    assert run_dir.parent == tmp_path.resolve() / 'runs', run_dir
    assert run_dir.name.startswith('cartpole_swingup-'), run_dir
    assert not run_dir.exists()  # settled, nothing started
    # A file that names no task: its own name.
    document = yaml.safe_load(cartpole.read_text())
    del document['/**']['ros__parameters']['task']
    nameless = tmp_path / 'my_robot.yaml'
    nameless.write_text(yaml.safe_dump(document))
    arguments = cli.build_parser().parse_args(['train', '--config', str(nameless)])
    _, run_dir = runs.plan_training(arguments)
    assert arguments.task == 'my_robot' and run_dir.name.startswith('my_robot-'), run_dir
    # No --config: the default task's shipped file.
    arguments = cli.build_parser().parse_args(['train'])
    task_file, run_dir = runs.plan_training(arguments)
    assert task_file == graph.task_config('pendulum').resolve()
    assert arguments.task == 'pendulum' and run_dir.name.startswith('pendulum-')


def _bad_policy_files(tmp_path):
    """(path, what the FATAL line must say) for files that once gave a traceback (exit 1),
    read until MemoryError (/dev/zero) or hung (a FIFO)."""
    import os

    from sindyrl_ros.core.policies import SparsePolynomialPolicy
    from sindyrl_ros.core.serialization import MAX_DOCUMENT_BYTES

    good = SparsePolynomialPolicy([[0], [1]], [[0.0], [-1.5]], ['x'], ['u'], [-1.0], [1.0])
    text = json.dumps(good.to_dict(), separators=(',', ':'))
    assert '[[0.0],[-1.5]]' in text
    files = {
        'truncated.json': (text[: len(text) // 2], 'not valid JSON'),
        'digits400.json': (text.replace('[-1.5]', '[-' + '9' * 400 + ']'), '400 digits'),
        'digits5000.json': (text.replace('[-1.5]', '[' + '9' * 5000 + ']'), '5000 digits'),
        'nested.json': (text.replace('[-1.5]', '[' * 5000 + ']' * 5000), 'nested'),
        'nan.json': (text.replace('-1.5', 'NaN'), 'NaN is not a JSON number'),
        'latin1.json': (text.replace('"x"', '"\xe9"').encode('latin-1'), 'not UTF-8'),
    }
    cases = []
    for name, (content, expected) in files.items():
        path = tmp_path / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        cases.append((path, expected))
    oversized = tmp_path / 'oversized.json'
    with open(oversized, 'wb') as stream:
        stream.truncate(MAX_DOCUMENT_BYTES + 1)
    fifo = tmp_path / 'fifo.json'
    os.mkfifo(fifo)
    directory = tmp_path / 'directory.json'
    directory.mkdir()
    return cases + [
        (oversized, f'larger than the {MAX_DOCUMENT_BYTES}-byte cap'),
        (fifo, 'a FIFO, not a regular file'),
        (directory, 'a directory, not a regular file'),
        (Path('/dev/zero'), 'a character device, not a regular file'),
        (tmp_path / 'absent.json', 'no such file'),
    ]


@pytest.mark.parametrize('command', ['deploy', 'export'])
def test_bad_policy_files_give_one_fatal_line_and_exit_2(tmp_path, command):
    """deploy and export given a malformed, oversized or non-regular policy file: exit code 2
    and one FATAL line on stderr naming the file and the problem; no traceback, no hang,
    no node started."""
    for path, expected in _bad_policy_files(tmp_path):
        extra = ['--format', 'c'] if command == 'export' else ['--duration', '1']
        result = subprocess.run(
            [sys.executable, '-m', 'sindyrl_ros.cli', command, '--policy', str(path), *extra],
            capture_output=True,
            text=True,
            timeout=60,
        )
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2, (path, result.returncode, result.stderr[-2000:])
        assert len(lines) == 1 and 'Traceback' not in result.stderr, result.stderr[-2000:]
        assert lines[0].startswith(f'sindyrl-ros {command}: FATAL: {path}'), lines[0][:300]
        assert expected in lines[0], (expected, lines[0][:300])
        assert len(lines[0]) < 1500 and result.stdout == '', lines[0][:300]


def test_learning_curve_is_drawn_from_the_progress_log(tmp_path):
    events = [
        {'event': 'episode', 'real_steps': 200, 'episode_return': -1071.9, 'end': 'truncated'},
        {'event': 'evaluation', 'real_steps': 202, 'eval_return_mean': -168.4},
    ]
    (tmp_path / 'progress.jsonl').write_text(''.join(json.dumps(e) + '\n' for e in events))
    path = plot_learning_curve(tmp_path, -200.0)
    assert path is not None and path.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert plot_learning_curve(tmp_path / 'empty') is None
