"""Model fits off the executor thread: one worker process, polled, replaced when it dies.

A fit takes a second or more of pysindy's Python loops. In a thread of the model updater
it would compete with the subscription callbacks for the GIL; in a worker process it
only competes for a core, and at a lower priority (``niceness``). The worker is a
``concurrent.futures.ProcessPoolExecutor`` with one *spawned* process (a fresh
interpreter: forking a process that holds DDS threads is unsafe), started with the
:class:`FitWorker` so that its seconds of imports happen while the plant still collects,
not before the first model. A worker that dies (killed, out of memory) breaks the pool
(``BrokenProcessPool``): the fit is reported as failed and a new worker started.

The worker ignores SIGINT (Ctrl-C reaches the whole process group; the node decides when
its worker stops) and exits by itself when the node's process is gone.
"""

from __future__ import annotations

from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
import multiprocessing
import os
import signal
import threading
import time
import traceback

from sindyrl_ros.core.model_fitting import fit_model
from sindyrl_ros.core.priority import lower_thread_priority

__all__ = ['FitWorker']

# Seconds between the worker's checks that the process that started it is still there.
PARENT_CHECK_S = 0.5


def _start_worker(niceness: int, parent_pid: int) -> None:
    """Set up the worker process before its first fit (runs in it, once)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    lower_thread_priority(niceness)  # the main thread: the one that runs the fits
    threading.Thread(
        target=_exit_with_parent, args=(parent_pid,), name='parent_watch', daemon=True
    ).start()
    # Import now, while the plant is still collecting: seconds of imports must not delay
    # the first model.
    import sindyrl_ros.core.dyna  # noqa: F401
    import sindyrl_ros.core.tasks  # noqa: F401


def _exit_with_parent(parent_pid: int) -> None:
    """End the worker once the node's process is gone (killed with ``kill -9``)."""
    while os.getppid() == parent_pid:
        time.sleep(PARENT_CHECK_S)
    os._exit(1)


class FitWorker:
    """Runs one fit at a time outside the executor thread and hands the result back.

    Parameters
    ----------
    kind : {'process', 'thread'}
        ``process``: fits run in a spawned worker process (see the module docstring);
        ``thread``: in a daemon thread, lighter and fine on a quiet machine.
    niceness : int
        Nice value of the thread that runs the fits (0: the node's priority).

    Attributes
    ----------
    busy : bool
        A fit was submitted and its result not yet taken by :meth:`poll`.
    pid : int or None
        The worker process's pid (``process`` kind).
    """

    def __init__(self, kind: str = 'process', niceness: int = 0) -> None:
        if kind not in ('process', 'thread'):
            raise ValueError(f"kind must be 'process' or 'thread', got {kind!r}")
        self.kind = kind
        self.niceness = int(niceness)
        self._future: Future | None = None
        self._pool: ProcessPoolExecutor | None = None
        self._process: multiprocessing.Process | None = None
        if kind == 'process':
            self._start_pool()

    @property
    def busy(self) -> bool:
        return self._future is not None

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def _start_pool(self) -> None:
        self._pool = ProcessPoolExecutor(
            max_workers=1,
            mp_context=multiprocessing.get_context('spawn'),
            initializer=_start_worker,
            initargs=(self.niceness, os.getpid()),
        )
        self._pool.submit(os.getpid)  # starts the worker now (a pool spawns on demand)
        # Its one process, to stop it and read its exit code (Python < 3.14 has no public
        # accessor); spawned by the submit above.
        [self._process] = self._pool._processes.values()

    def _restart(self) -> None:
        """Replace a broken pool (its worker died) by a new one."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._start_pool()

    def submit(self, request: dict) -> None:
        """Start a fit of ``request`` (see :func:`fit_model`); one at a time.

        Raises
        ------
        RuntimeError
            If a fit is running (check :attr:`busy` first) or the worker is closed.
        """
        if self.busy:
            raise RuntimeError('a fit is already running')
        if self.kind == 'thread':
            future = Future()

            def run() -> None:
                lower_thread_priority(self.niceness)
                future.set_result(fit_model(request))

            self._future = future
            threading.Thread(target=run, name='sindy_fit', daemon=True).start()
            return
        if self._pool is None:
            raise RuntimeError('the fit worker is closed')
        if not self._process.is_alive():  # died between fits
            self._restart()
        try:
            self._future = self._pool.submit(fit_model, request)
        except BrokenProcessPool:  # died just now
            self._restart()
            self._future = self._pool.submit(fit_model, request)

    def poll(self) -> dict | None:
        """The finished fit's result, or None while it runs (never blocks).

        Returns
        -------
        dict or None
            :func:`fit_model`'s result; ``{'error': 'fit worker process died (exit code
            N)'}`` if the worker died during the fit (a new one is started).
        """
        if self._future is None or not self._future.done():
            return None
        future, self._future = self._future, None
        try:
            return future.result()
        except BrokenProcessPool:
            # Dead and reaped by the pool by now (its end is what broke the pool): the wait
            # is for its exit code, and short.
            self._process.join(timeout=0.2)
            code = self._process.exitcode
            if self._pool is not None:
                self._restart()
            return {'error': f'fit worker process died (exit code {code})'}
        except Exception as error:  # a result that could not come back (unpicklable...)
            return {
                'error': f'{type(error).__name__}: {error}',
                'traceback': traceback.format_exc(),
            }

    def close(self, timeout: float = 2.0) -> None:
        """Stop the worker process: at once if a fit is running (nobody will publish it)."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        pool.shutdown(wait=False, cancel_futures=True)
        if self._future is not None:
            self._future = None
            self._process.terminate()
        self._process.join(timeout)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(timeout)
