"""`sindyrl-ros`: start the sindyrl_ros graph and its tools from a shell.

`sindyrl-ros train` starts the same nodes as `ros2 launch sindyrl_ros train.launch.py`, as
separate processes with the same parameter files (both read sindyrl_ros.graph), shows the
run's progress, stops everything cleanly on Ctrl-C or when the run is done, and prints a
summary. It needs rclpy and the message packages, not `ros2 launch`.

`sindyrl-ros train --backend serial --emulate` first starts the rig emulator (a simulated rig
behind the serial protocol, on a pseudo-terminal) and points the serial bridge at it: the
whole hardware path (protocol, bridge, wall clock, resets) without hardware.

While a run waits for something (a service, a first message, an operator's reset), the nodes
log a ``WAITING:`` line; the command shows those and every error line on the terminal. With
the operator reset provider, Enter on the terminal tells the episodes node the robot is
reset (`sindyrl-ros operator-ready` does the same from another shell).

This module is the command line and its dispatch; a run of the graph (processes, run
directory, progress on the terminal, summary) is sindyrl_ros.runs.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
import sys
import time

from sindyrl_ros import graph, runs

# Importable from here as before they moved (tests build training graphs through them).

__all__ = ['build_parser', 'main']


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='sindyrl-ros',
        description='SINDy-RL on ROS 2: learn a sparse model of a robot from a few minutes of '
        'data, train a policy on it, and run that policy as a real-time controller.',
    )
    commands = parser.add_subparsers(dest='command', required=True, metavar='COMMAND')

    train = commands.add_parser(
        'train',
        help='learn a controller through the ROS 2 graph',
        description='Start the training graph (plant, sensor ingestion, controller, model '
        'updater, policy trainer, run supervisor) as separate processes and run until the '
        'evaluation return reaches the threshold or the real-step budget is spent.',
    )
    _add_graph_arguments(train)
    train.add_argument(
        '--run-dir', type=Path, default=None,
        help='where the MCAP log, models, policies and summary.json go '
        '(default: runs/<task>-<date>-<time>)',
    )
    train.add_argument(
        '--resume', type=Path, default=None, metavar='RUN_DIR',
        help='continue the run in RUN_DIR after a crash or a stop, with its own task file, '
        'backend and budget (--budget may raise it): its recording, last model and policy '
        'and its real steps, which count against the budget',
    )
    train.add_argument(
        '--budget', type=int, default=None,
        help="real training steps the run may use (default: the config file's value)",
    )
    train.add_argument(
        '--timeout', type=float, default=None,
        help='give up after this many seconds of wall time (default: no limit)',
    )
    train.add_argument(
        '--port', default=None,
        help="backend serial: the rig's serial device (default: the config's serial_bridge port)",
    )
    train.add_argument(
        '--emulate', action='store_true',
        help='backend serial: start the rig emulator (the task simulated behind the serial '
        'protocol, on a pseudo-terminal) and train against it',
    )
    train.add_argument(
        '--emulator-speed', type=float, default=1.0,
        help='with --emulate: the emulated rig runs this many times faster than real time; '
        'the nodes are told its control period is dt / speed (default: %(default)s)',
    )

    deploy = commands.add_parser(
        'deploy', help='run a saved policy on the plant, no learning',
        description='Start sensor ingestion and the controller with a saved policy '
        '(exploration off) plus, for --backend sim, the simulated plant. Stops on Ctrl-C.',
    )
    _add_graph_arguments(deploy)
    deploy.add_argument('--policy', type=Path, required=True, help='saved policy JSON file')
    deploy.add_argument(
        '--log-dir', type=Path, default=None, help='where node logs go (default: a temp dir)'
    )
    deploy.add_argument(
        '--duration', type=float, default=None, help='stop after this many seconds'
    )
    export = commands.add_parser(
        'export', help='write a sparse polynomial policy as a C header or a Python function',
        description='Turn a saved sparse polynomial policy into dependency-free source code: '
        'a C99 header (static inline function, for a microcontroller) or a Python function. '
        'Only sparse polynomial policies export; an MLP policy is refused.',
    )
    export.add_argument('--policy', type=Path, required=True, help='saved policy JSON file')
    export.add_argument(
        '--format', required=True, choices=('c', 'python'), help='source language to write'
    )
    export.add_argument(
        '--output', type=Path, default=None, help='file to write (default: standard output)'
    )
    export.add_argument(
        '--name', default='sindyrl_policy',
        help='name of the generated function (default: %(default)s)',
    )
    params = commands.add_parser(
        'params', help="write the reference of every node's parameters (docs/parameters.md)",
        description="Render every node's parameters (name, type, default, range, read-only, "
        'description) from their declarations as Markdown, the reference `ros2 param '
        'describe` would give.',
    )
    params.add_argument(
        '--out', type=Path, default=None,
        help="file to write, '-' for standard output (default: the source tree's "
        'docs/parameters.md)',
    )
    params.add_argument(
        '--check', action='store_true',
        help='write nothing; exit 1 if the file is missing or out of date',
    )
    commands.add_parser(
        'operator-ready', help='tell a waiting run that the robot is reset (operator provider)',
        description='Publish std_msgs/Empty on /sindyrl/operator_ready once: the episodes '
        'node, waiting for an operator to reset the robot, goes on. Pressing Enter in the '
        'terminal of `sindyrl-ros train` does the same.',
    ).add_argument(
        '--domain-id', type=int, default=None,
        help="ROS_DOMAIN_ID of the run (default: the environment's)",
    )
    commands.add_parser(
        'rig-emulator', add_help=False,
        help='a simulated rig behind the serial protocol, on a pty (see rig-emulator --help)',
    )
    return parser


def _add_graph_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        '--task', default=None, choices=graph.TASKS,
        help=f'shipped task (default: {runs.DEFAULT_TASK}; with --config, the task the file '
        'names in its /** section)',
    )
    parser.add_argument(
        '--config', type=Path, default=None,
        help='your own task parameter file instead of config/<task>.yaml',
    )
    parser.add_argument(
        '--backend', default='sim', choices=graph.BACKENDS,
        help='where the plant is (default: %(default)s, the embedded simulated plant)',
    )
    parser.add_argument(
        '--domain-id', type=int, default=None,
        help="ROS_DOMAIN_ID for all nodes (default: the environment's)",
    )
    parser.add_argument(
        '--network', action='store_true',
        help='discover peers on the network (default: this machine only)',
    )


def operator_ready(arguments) -> int:
    """`sindyrl-ros operator-ready`: one std_msgs/Empty on /sindyrl/operator_ready."""
    if arguments.domain_id is not None:
        os.environ['ROS_DOMAIN_ID'] = str(arguments.domain_id)
    import rclpy
    from std_msgs.msg import Empty

    from sindyrl_ros.ros.qos import RELIABLE_QOS

    rclpy.init()
    try:
        node = rclpy.create_node('operator_ready')
        publisher = node.create_publisher(Empty, '/sindyrl/operator_ready', RELIABLE_QOS)
        deadline = time.monotonic() + 5.0
        while publisher.get_subscription_count() == 0 and time.monotonic() < deadline:
            rclpy.spin_once(node, timeout_sec=0.05)
        if publisher.get_subscription_count() == 0:
            print('sindyrl-ros operator-ready: no episodes node is listening', file=sys.stderr)
            return 1
        publisher.publish(Empty())
        rclpy.spin_once(node, timeout_sec=0.2)
        print('sindyrl-ros operator-ready: sent')
        return 0
    finally:
        rclpy.try_shutdown()


def _bad_policy_file(command: str, path: Path, error: Exception) -> int:
    """One FATAL line naming the policy file and its problem; exit code 2, as the nodes
    give for a bad configuration (a traceback tells an operator nothing about the file)."""
    problem = f'{path}: no such file' if isinstance(error, FileNotFoundError) else str(error)
    print(f'sindyrl-ros {command}: FATAL: {problem}', file=sys.stderr)
    return 2


def deploy(arguments) -> int:
    from sindyrl_ros.core.policy_loading import load_policy
    from sindyrl_ros.core.serialization import FormatError

    try:
        load_policy(arguments.policy)
    except (FormatError, OSError) as error:
        return _bad_policy_file('deploy', arguments.policy, error)
    return runs.deploy(arguments)


def export(arguments) -> int:
    from sindyrl_ros.core.export import export_c, export_python
    from sindyrl_ros.core.policies import SparsePolynomialPolicy
    from sindyrl_ros.core.policy_loading import load_policy
    from sindyrl_ros.core.serialization import FormatError

    try:
        policy = load_policy(arguments.policy)
    except (FormatError, OSError) as error:
        return _bad_policy_file('export', arguments.policy, error)
    if not isinstance(policy, SparsePolynomialPolicy):
        raise SystemExit(
            f'sindyrl-ros export: {arguments.policy} holds a policy of kind {policy.kind!r}; only '
            'sparse polynomial policies export (the policy trainer distils one when its '
            'distill_sparse parameter is true)'
        )
    writer = export_c if arguments.format == 'c' else export_python
    try:
        text = writer(policy, arguments.name)
    except ValueError as error:
        raise SystemExit(f'sindyrl-ros export: {error}') from error
    if arguments.output is None:
        sys.stdout.write(text)
    else:
        arguments.output.write_text(text)
        print(
            f'sindyrl-ros export: {arguments.output}: {arguments.name}() with '
            f'{policy.n_nonzero} coefficients from {arguments.policy}',
            file=sys.stderr,
        )
    return 0


def params(arguments) -> int:
    """`sindyrl-ros params`: write (or --check) the node parameter reference."""
    from sindyrl_ros import param_reference

    if str(arguments.out) == '-':
        sys.stdout.write(param_reference.render())
        return 0
    path = arguments.out or param_reference.default_path()
    if arguments.check:
        problem = param_reference.stale(path)
        if problem:
            print(f'sindyrl-ros params: {problem}', file=sys.stderr)
            return 1
        print(f'sindyrl-ros params: {path} is up to date')
        return 0
    changed = param_reference.write(path)
    print(f'sindyrl-ros params: {path} {"written" if changed else "was already up to date"}')
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ['rig-emulator']:
        from sindyrl_ros.hardware import emulator as rig_emulator

        return rig_emulator.main(argv[1:])
    arguments = build_parser().parse_args(argv)
    if arguments.command == 'train':
        return runs.train(arguments)
    if arguments.command == 'deploy':
        return deploy(arguments)
    if arguments.command == 'export':
        return export(arguments)
    if arguments.command == 'params':
        return params(arguments)
    if arguments.command == 'operator-ready':
        return operator_ready(arguments)
    return 2


if __name__ == '__main__':
    sys.exit(main())
