"""How every node process runs: signals, parent death, exit codes.

:func:`run_node` runs a node the same way in every process: signals handled by the node (so
the controller can still publish its safe command on shutdown), shutdown when the process
that started the node dies, exit code 2 for a configuration error.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import ctypes
import os
import signal
import sys
import threading

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions

from sindyrl_ros.graph import PARENT_PID_ENV
from sindyrl_ros.params import ParameterFileError
from sindyrl_ros.ros.parameters import remember_command_line

__all__ = ['run_node']

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _die_with_parent() -> int:
    """Ask Linux for SIGTERM when the parent dies; returns the parent's pid seen now.

    Why: a node outliving the program that started it (``sindyrl-ros train`` killed with
    ``kill -9``) would go on driving the plant with nobody supervising; every node starts
    in its own session, so no terminal or process-group signal reaches it either. The
    SIGTERM lands in :func:`run_node`'s handler, so the node stops exactly as on SIGTERM
    (the controller sends its safe command first).

    PR_SET_PDEATHSIG fires when the parent *thread* that forked this process exits, not
    the parent process: ``sindyrl-ros train``/``deploy`` (``runs.Graph.start``) start the
    nodes from their main thread, which lives until the end of the run, and under
    ``ros2 launch`` the launch process is the parent, so in both the signal means the
    parent is gone. Elsewhere than Linux, or where prctl is refused, the liveness check in
    :func:`run_node`'s spin loop is the only guard. A parent that died before this call
    (during the node's imports) cannot be told from its adopter by ``getppid``, unless the
    parent put its pid in the environment (``graph.PARENT_PID_ENV``, as ``sindyrl-ros`` and
    the launch files do): then that pid is the parent to watch, and the caller sees at once
    that it is gone.
    """
    parent = os.getppid()
    announced = os.environ.get(PARENT_PID_ENV, '')
    if announced.isdigit() and 0 < int(announced) < 2**22:
        parent = int(announced)
    if sys.platform.startswith('linux'):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(
                ctypes.c_int(_PR_SET_PDEATHSIG),
                ctypes.c_ulong(int(signal.SIGTERM)),
                ctypes.c_ulong(0),
                ctypes.c_ulong(0),
                ctypes.c_ulong(0),
            )
        except (OSError, AttributeError):  # no libc symbol: the spin-loop check remains
            pass
    return parent


def run_node(
    make_node: Callable[[], Node], args: Sequence[str] | None = None, name: str = 'sindyrl_ros'
) -> int:
    """Initialise rclpy, build the node, spin until SIGINT/SIGTERM, shut down cleanly.

    rclpy's own signal handlers would shut the context down before the node could act, so
    SIGINT and SIGTERM only set a flag here; the node's ``on_shutdown()`` (if any) then
    runs while it can still publish (the controller's safe command). The death of the
    process that started the node stops it the same way: a parent-death SIGTERM on Linux
    (see :func:`_die_with_parent`) and, as a fallback, a ``getppid()`` check on every turn
    of the spin loop (at least every 0.1 s).

    Parameters
    ----------
    make_node : callable
        Builds the node (its class); may raise :class:`ParameterFileError`.
    args : list of str, optional
        Command line (default ``sys.argv``), read for ``--params-file`` too.
    name : str
        Logger name for errors raised before the node exists (the node's name).

    Returns
    -------
    int
        Exit code: 0 after a signal, 2 for a configuration error (logged as FATAL).
    """
    command_line = list(args) if args is not None else list(sys.argv)
    remember_command_line(command_line)
    stop = threading.Event()
    previous = {
        signum: signal.signal(signum, lambda *_: stop.set())
        for signum in (signal.SIGINT, signal.SIGTERM)
    }
    logger = rclpy.logging.get_logger(name)
    # After the handlers: the parent-death SIGTERM must find them installed.
    parent = _die_with_parent()
    if os.getppid() != parent:  # died between getppid and prctl: no signal will come
        logger.warning(f'parent process {parent} is gone before start-up: not starting')
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        return 0
    try:
        rclpy.init(args=command_line, signal_handler_options=SignalHandlerOptions.NO)
    except Exception as error:  # rcl refuses the command line or an unparsable params file
        logger.fatal(f'cannot start: {error}')
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        return 2
    node = None
    code = 0
    try:
        node = make_node()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        while not stop.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=0.1)
            if os.getppid() != parent:  # orphaned: the fallback where no signal came
                stop.set()
    except ParameterFileError as error:
        logger.fatal(str(error))
        code = 2
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if os.getppid() != parent:
            logger.warning(
                f'parent process {parent} is gone: shutting down as on SIGTERM '
                '(the controller sends its safe command first)'
            )
        if node is not None:
            on_shutdown = getattr(node, 'on_shutdown', None)
            if on_shutdown is not None and rclpy.ok():
                on_shutdown()
            node.destroy_node()
        rclpy.try_shutdown()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return code
