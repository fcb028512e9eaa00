"""`sindyrl-ros`: start the sindyrl_ros graph and its tools from a shell."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='sindyrl-ros',
        description='SINDy-RL on ROS 2: learn a sparse model of a robot from a few minutes of '
        'data, train a policy on it, and run that policy as a real-time controller.',
    )
    commands = parser.add_subparsers(dest='command', required=True, metavar='COMMAND')
    train = commands.add_parser('train', help='train a controller through the ROS 2 graph')
    train.add_argument('--task', default='pendulum', help='task name (default: %(default)s)')
    return parser


def main(argv: list[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    if arguments.command == 'train':
        print('sindyrl-ros train: the training graph is not there yet', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
