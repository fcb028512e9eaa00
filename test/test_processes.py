"""Child processes (sindyrl_ros.processes): real programs stopped by Ctrl-C, then harder."""

import os
from pathlib import Path
import signal
import sys
import time

import pytest

from sindyrl_ros.graph import PARENT_PID_ENV
from sindyrl_ros.processes import ChildProcess, ros_environment, stop_processes


def sleeper(tmp_path: Path, name: str, ignore=(), code: str = '') -> ChildProcess:
    """A Python program that exits 0 on SIGINT unless it ignores it (and the other signals
    named in ``ignore``), runs ``code``, says 'ready' and sleeps."""
    program = (
        'import os, signal, sys, time\n'
        'signal.signal(signal.SIGINT, lambda *_: sys.exit(0))\n'
        f'for name in {list(ignore)!r}:\n'
        '    signal.signal(getattr(signal, name), signal.SIG_IGN)\n'
        f'{code}\n'
        "print('ready', os.getpid(), flush=True)\n"
        'time.sleep(120)\n'
    )
    child = ChildProcess([sys.executable, '-c', program], os.environ.copy(), tmp_path / name)
    assert child.wait_for_output('ready', timeout=60), child.output()
    return child


def gone(pid: int) -> bool:
    """Not running: no such process, or a zombie nobody reaped yet."""
    try:
        stat = Path(f'/proc/{pid}/stat').read_text()
    except OSError:
        return True
    return stat.rsplit(')', 1)[1].split()[0] in ('Z', 'X')


def test_a_child_that_stops_on_ctrl_c_stops_at_once_with_its_own_exit_code(tmp_path):
    child = sleeper(tmp_path, 'polite.log')
    assert child.alive() and child.returncode is None
    started = time.monotonic()
    assert child.stop(timeout=30.0) == 0
    assert time.monotonic() - started < 10.0  # no escalation
    assert not child.alive() and child.returncode == 0


def test_a_child_that_ignores_ctrl_c_gets_sigterm_after_the_timeout(tmp_path):
    child = sleeper(tmp_path, 'deaf.log', ignore=('SIGINT',))
    started = time.monotonic()
    assert child.stop(timeout=1.0) == -signal.SIGTERM
    assert time.monotonic() - started >= 1.0


def test_a_child_that_ignores_ctrl_c_and_sigterm_is_killed(tmp_path):
    child = sleeper(tmp_path, 'stubborn.log', ignore=('SIGINT', 'SIGTERM'))
    started = time.monotonic()
    codes = stop_processes([child], timeout=0.5, term_timeout=0.5)
    assert codes == {child.pid: -signal.SIGKILL}
    assert time.monotonic() - started >= 1.0


def test_children_are_stopped_together_not_one_after_the_other(tmp_path):
    children = [sleeper(tmp_path, f'deaf_{k}.log', ignore=('SIGINT',)) for k in range(3)]
    started = time.monotonic()
    codes = stop_processes(children, timeout=2.0)
    elapsed = time.monotonic() - started
    assert codes == {child.pid: -signal.SIGTERM for child in children}
    # One SIGINT wait shared by all (2 s), not one per child (6 s).
    assert 2.0 <= elapsed < 5.5, elapsed


def test_stop_reaches_the_whole_process_group(tmp_path):
    """A node's worker (the model updater's fit worker) is in its group: stopped with it."""
    worker = 'import subprocess, sys; ' + (
        "w = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
        "print('worker', w.pid, flush=True)"
    )
    child = sleeper(tmp_path, 'with_worker.log', ignore=('SIGINT',), code=worker)
    worker_pid = int(child.output().split('worker', 1)[1].split()[0])
    assert not gone(worker_pid)
    child.stop(timeout=0.5)
    deadline = time.monotonic() + 10
    while not gone(worker_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gone(worker_pid)


def test_exit_code_output_and_tail_of_a_child_that_exits_by_itself(tmp_path):
    program = 'import sys\nfor k in range(40): print("line", k)\nsys.exit(3)'
    child = ChildProcess([sys.executable, '-c', program], os.environ.copy(), tmp_path / 'x.log')
    assert child.wait(timeout=60) == 3
    assert not child.alive() and child.returncode == 3
    assert child.stop() == 3  # nothing left to signal
    assert not child.signal(signal.SIGINT)
    assert child.output().splitlines()[0] == 'line 0'
    assert child.tail(2) == 'line 38\nline 39'
    assert (tmp_path / 'x.log').read_text() == child.output()
    assert not child.wait_for_output('never printed', timeout=5)


def test_a_program_that_cannot_start_raises_at_once(tmp_path):
    with pytest.raises(FileNotFoundError):
        ChildProcess([str(tmp_path / 'no_such_program')], {}, tmp_path / 'none.log')


def test_only_an_announcing_start_tells_the_child_its_parent(tmp_path):
    program = f'import os; print(os.environ.get({PARENT_PID_ENV!r}))'
    env = {key: value for key, value in os.environ.items() if key != PARENT_PID_ENV}
    told = ChildProcess(
        [sys.executable, '-c', program], env, tmp_path / 'told.log', announce_parent=True
    )
    untold = ChildProcess([sys.executable, '-c', program], env, tmp_path / 'untold.log')
    assert told.wait(60) == 0 and untold.wait(60) == 0
    assert told.output().strip() == str(os.getpid())
    assert untold.output().strip() == 'None'


def test_ros_environment_keeps_discovery_on_this_machine_unless_told_not_to():
    base = {'ROS_LOCALHOST_ONLY': '1', 'ROS_DOMAIN_ID': '7', 'PATH': '/bin'}
    env = ros_environment(42, base=base)
    assert env['ROS_DOMAIN_ID'] == '42' and env['PATH'] == '/bin'
    assert env['ROS_AUTOMATIC_DISCOVERY_RANGE'] == 'LOCALHOST'
    assert 'ROS_LOCALHOST_ONLY' not in env and env['PYTHONUNBUFFERED'] == '1'
    assert base['ROS_LOCALHOST_ONLY'] == '1'  # the base is not changed
    network = ros_environment(base=base, localhost=False)
    assert network['ROS_DOMAIN_ID'] == '7' and network['ROS_LOCALHOST_ONLY'] == '1'
    assert 'ROS_AUTOMATIC_DISCOVERY_RANGE' not in network
