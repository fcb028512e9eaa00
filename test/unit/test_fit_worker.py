"""The fit worker: real E-SINDy fits in a spawned process, a killed worker replaced."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from types import SimpleNamespace

import numpy as np
from pendulum_data import pendulum_episode
import pytest

from sindyrl_ros.core.dynamics import SindyDynamics
from sindyrl_ros.core.fit_worker import FitWorker
from sindyrl_ros.core.model_fitting import fit_model, fit_request
from sindyrl_ros.core.session_replay import transition_assembler
from sindyrl_ros.core.tasks import get_task
from sindyrl_ros.params.model_updater import PARAMETERS

TASK = get_task('pendulum')
DT_NS = 50_000_000
# A spawned worker imports numpy, pysindy and torch first: slow on a loaded machine.
TIMEOUT_S = 120.0


def pendulum_request(model_version: int = 1, steps: int = 200) -> dict:
    """A fit request of ``steps`` random Pendulum-v1 steps, paired as the updater does."""
    # One more step than paired: the last observation is answered too (as the plant does).
    observations, actions, _ = pendulum_episode(model_version, steps + 1)
    assembler = transition_assembler(TASK)
    for k in range(steps + 1):
        assembler.add_observation(k * DT_NS, observations[k])
        assembler.add_action(k * DT_NS, actions[k], 'explore')
    values = {spec.name: spec.default for spec in PARAMETERS}
    values['ensemble_models'] = 5
    return fit_request(TASK, assembler, SimpleNamespace(**values), model_version)


def wait_for_result(worker: FitWorker, timeout: float = TIMEOUT_S) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = worker.poll()
        if result is not None:
            return result
        time.sleep(0.05)
    raise AssertionError(f'no fit result after {timeout} s')


def alive(pid: int) -> bool:
    try:
        with open(f'/proc/{pid}/stat') as stat:
            return stat.read().rsplit(')', 1)[1].split()[0] != 'Z'
    except OSError:
        return False


def test_a_fit_in_the_worker_process_returns_the_model_at_a_lower_priority():
    worker = FitWorker('process', niceness=15)
    try:
        assert worker.pid is not None and worker.pid != os.getpid()
        assert worker.poll() is None and not worker.busy
        request = pendulum_request()
        worker.submit(request)
        assert worker.busy
        with pytest.raises(RuntimeError, match='already running'):
            worker.submit(request)
        result = wait_for_result(worker)
        assert not worker.busy and worker.poll() is None
        assert 'error' not in result, result
        assert result['accepted'] and result['card']['transitions'] == 200
        model = SindyDynamics.from_dict(result['card'])
        # The same fit as in this process: the worker only moves it elsewhere.
        here = SindyDynamics.from_dict(fit_model(request)['card'])
        np.testing.assert_array_equal(model.coefficients, here.coefficients)
        # The thread that runs fits yields the CPU (Linux: a per-thread nice value).
        if sys.platform.startswith('linux'):
            assert os.getpriority(os.PRIO_PROCESS, worker.pid) == 15
    finally:
        worker.close()
    assert not alive(worker.pid)


def test_a_killed_worker_is_reported_and_replaced():
    worker = FitWorker('process')
    try:
        first = worker.pid
        worker.submit(pendulum_request(1))
        os.kill(first, signal.SIGKILL)
        result = wait_for_result(worker)
        assert result['error'].startswith('fit worker process died'), result
        assert not worker.busy
        assert worker.pid != first and alive(worker.pid)
        # The new worker serves the next fit.
        result = wait_for_result_of(worker, pendulum_request(2))
        assert 'error' not in result, result
        assert result['accepted'] and result['model_version'] == 2
        # One that died between fits is replaced when the next fit is submitted. (Dead
        # once the pool has reaped it: a killed process with threads still exiting is not.)
        second = worker.pid
        os.kill(second, signal.SIGKILL)
        while os.path.exists(f'/proc/{second}'):
            time.sleep(0.05)
        result = wait_for_result_of(worker, pendulum_request(3))
        assert 'error' not in result and result['model_version'] == 3, result
        assert worker.pid not in (first, second)
    finally:
        worker.close()


def wait_for_result_of(worker: FitWorker, request: dict) -> dict:
    worker.submit(request)
    return wait_for_result(worker)


def test_closing_during_a_fit_stops_the_worker_at_once():
    worker = FitWorker('process')
    request = pendulum_request(steps=2000)
    request['config']['ensemble']['n_models'] = 400  # a fit of many seconds
    worker.submit(request)
    time.sleep(1.0)
    started = time.monotonic()
    worker.close()
    assert time.monotonic() - started < 5.0
    assert not alive(worker.pid)
    worker.close()  # again: nothing


def test_a_thread_worker_returns_the_same_fit():
    worker = FitWorker('thread', niceness=5)
    assert worker.pid is None
    request = pendulum_request()
    worker.submit(request)
    result = wait_for_result(worker)
    expected = fit_model(request)
    np.testing.assert_array_equal(result['card']['coefficients'], expected['card']['coefficients'])
    worker.close()
    with pytest.raises(ValueError, match='kind'):
        FitWorker('fork')


def test_the_worker_exits_when_the_node_process_is_killed(tmp_path):
    """A node killed with kill -9 leaves no worker behind (it would live on, orphaned)."""
    script = textwrap.dedent(
        """
        import sys, time
        from sindyrl_ros.core.fit_worker import FitWorker

        worker = FitWorker('process')
        print(worker.pid, flush=True)
        time.sleep(600)
        """
    )
    node = subprocess.Popen(
        [sys.executable, '-c', script], stdout=subprocess.PIPE, text=True, cwd=tmp_path
    )
    try:
        worker_pid = int(node.stdout.readline())
        assert alive(worker_pid)
        node.send_signal(signal.SIGKILL)
        node.wait(10)
        deadline = time.monotonic() + TIMEOUT_S
        while alive(worker_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(worker_pid)
    finally:
        node.kill()
        node.wait(10)
