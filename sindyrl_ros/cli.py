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
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path
import shutil
import signal
import subprocess
import sys
import threading
import time

from sindyrl_ros import graph
from sindyrl_ros.run_plots import plot_learning_curve


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
        '--task', default='pendulum', choices=graph.TASKS,
        help='shipped task (default: %(default)s)',
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


class Graph:
    """The graph's processes: started together, stopped together, logs in one folder."""

    def __init__(self, specs: list[graph.NodeSpec], log_dir: Path, env: dict[str, str]):
        self.specs = specs
        self.log_dir = log_dir
        self.env = env
        self.processes: dict[str, subprocess.Popen] = {}

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        env = dict(self.env, **{graph.PARENT_PID_ENV: str(os.getpid())})
        for spec in self.specs:
            log = open(self.log_dir / f'{spec.name}.log', 'wb')  # noqa: SIM115
            self.processes[spec.name] = subprocess.Popen(
                [*_command(spec), *spec.ros_arguments()],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
            log.close()

    def exited(self) -> dict[str, int]:
        return {
            name: process.returncode
            for name, process in self.processes.items()
            if process.poll() is not None
        }

    def log_tail(self, name: str, lines: int = 15) -> str:
        path = self.log_dir / f'{name}.log'
        text = path.read_text(errors='replace') if path.exists() else ''
        return '\n'.join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 10.0) -> None:
        """Ctrl-C to every node (the controller sends its safe command), then harder."""
        escalation = ((signal.SIGINT, timeout), (signal.SIGTERM, 3.0), (signal.SIGKILL, 3.0))
        for signum, wait in escalation:
            running = [p for p in self.processes.values() if p.poll() is None]
            if not running:
                return
            for process in running:
                try:
                    os.killpg(process.pid, signum)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + wait
            for process in running:
                try:
                    process.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass


def _command(spec: graph.NodeSpec) -> list[str]:
    """The installed console script if it sits beside this Python, else `python -m module`."""
    script = Path(sys.executable).with_name(spec.executable)
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, '-m', spec.module]


def _environment(arguments) -> dict[str, str]:
    env = dict(os.environ)
    env['PYTHONUNBUFFERED'] = '1'
    if arguments.domain_id is not None:
        env['ROS_DOMAIN_ID'] = str(arguments.domain_id)
    if not arguments.network:
        env['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
        env.pop('ROS_LOCALHOST_ONLY', None)
    return env


def _task_file(arguments) -> Path:
    path = arguments.config if arguments.config else graph.task_config(arguments.task)
    if not Path(path).is_file():
        raise SystemExit(f'sindyrl-ros: parameter file {path} does not exist')
    return Path(path).resolve()


def _task_name(task_file: Path, default: str) -> str:
    """The task a parameter file names in its /** section (the run is named after it)."""
    try:
        name = _parameter_sections(task_file).get('/**', {}).get('task')
    except Exception:  # noqa: BLE001 - the nodes report a malformed file with its details
        return default
    return name if isinstance(name, str) and name else default


class LogWatch:
    """Shows the lines of the node logs an operator must see: what the run waits for
    (``WAITING:``) and errors, as they are written."""

    MARKERS = ('WAITING:', '[ERROR]', '[FATAL]')

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._offsets: dict[Path, int] = {}

    def lines(self) -> list[str]:
        shown = []
        for path in sorted(self.log_dir.glob('*.log')):
            offset = self._offsets.get(path, 0)
            try:
                with open(path, 'rb') as log:
                    log.seek(offset)
                    data = log.read()
            except OSError:
                continue
            end = data.rfind(b'\n') + 1  # whole lines only
            self._offsets[path] = offset + end
            for line in data[:end].decode(errors='replace').splitlines():
                if any(marker in line for marker in self.MARKERS):
                    shown.append(f'{path.stem}: {line.strip()}')
        return shown


def _operator_ready_on_enter(environment: dict[str, str]) -> None:
    """Enter on the terminal: tell the episodes node the robot is reset (daemon thread)."""
    if not sys.stdin or not sys.stdin.isatty():
        return

    def read() -> None:
        for _ in sys.stdin:
            subprocess.run(
                [sys.executable, '-m', 'sindyrl_ros.cli', 'operator-ready'],
                env=environment, check=False, timeout=30,
            )

    threading.Thread(target=read, daemon=True, name='operator-enter').start()


def operator_ready(arguments) -> int:
    """`sindyrl-ros operator-ready`: one std_msgs/Empty on /sindyrl/operator_ready."""
    if arguments.domain_id is not None:
        os.environ['ROS_DOMAIN_ID'] = str(arguments.domain_id)
    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from std_msgs.msg import Empty

    rclpy.init()
    try:
        node = rclpy.create_node('operator_ready')
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        publisher = node.create_publisher(Empty, '/sindyrl/operator_ready', qos)
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


def _cut_short(event: dict) -> str:
    """' (k of n surrogate episodes cut short)' when the mean is not of whole episodes."""
    short = event.get('surrogate_return_cut_short')
    episodes = event.get('surrogate_return_episodes')
    if isinstance(short, int) and isinstance(episodes, int) and short > 0:
        return f' ({short} of {episodes} surrogate episodes cut short)'
    return ''


def _describe(event: dict) -> str | None:
    """One progress line for an event of the run supervisor's progress.jsonl (None: skip)."""
    kind = event.get('event')
    steps = f'real steps {event.get("real_steps", 0):>6} (+{event.get("eval_steps", 0)} eval)'
    if kind == 'episode':
        if event.get('evaluation'):
            return None
        episode_return = event.get('episode_return', float('nan'))
        return f'{steps} | episode {event.get("episode")}: return {episode_return:.1f}'
    if kind == 'model':
        error = event.get('validation_nrmse')
        # Episodes too short to hold a tail out are validated on the data they were fit on.
        where = 'held-out' if event.get('validation_held_out', True) else 'fitting-data'
        error = f', {where} rollout error {error:.3f}' if error is not None else ''
        return f'{steps} | model v{event.get("model_version")} accepted{error}'
    if kind == 'policy':
        return (
            f'{steps} | policy v{event.get("policy_version")} from model '
            f'v{event.get("source_model_version")}, surrogate return '
            f'{event.get("surrogate_return", float("nan")):.1f}{_cut_short(event)}'
        )
    if kind == 'evaluation':
        return (
            f'{steps} | policy v{event.get("policy_version")}: eval return '
            f'{event.get("eval_return_mean"):.1f}'
        )
    if kind == 'hold':
        return f'{steps} | plant held until the next policy ({event.get("reason", "")})'
    if kind == 'resume':
        held = event.get('held_s')
        held = f' after {held:.1f} s' if isinstance(held, (int, float)) else ''
        return f'{steps} | plant resumed{held} ({event.get("reason", "")})'
    if kind == 'mode':
        return f'{steps} | controller mode {event.get("mode")}'
    if kind == 'finish':
        reached = 'target reached' if event.get('reached') else 'target not reached'
        return f'{steps} | finished ({event.get("reason")}): {reached}'
    if kind == 'start':
        details = ', '.join(
            f'{key} {value}'
            for key, value in event.items()
            if key not in ('event', 'time_s', 'real_steps', 'eval_steps')
        )
        return f'{steps} | {kind}: {details}'
    return None


def training_specs(arguments, run_dir: Path, port: str | None = None) -> list[graph.NodeSpec]:
    """The training graph's processes for these command-line arguments."""
    return graph.training_graph(
        _task_file(arguments), backend=arguments.backend, run_dir=str(run_dir),
        budget=arguments.budget, port=port or getattr(arguments, 'port', None),
        resume=getattr(arguments, 'resume', None) is not None,
    )


RUN_FORMAT = 'sindyrl_ros/run'
# What a run was started with, so that --resume starts the same graph again.
RUN_SETTINGS = ('task', 'backend', 'budget', 'port', 'emulate', 'emulator_speed')


def _save_run_settings(arguments, run_dir: Path) -> None:
    from sindyrl_ros.core.serialization import save_json_document

    document = {'format': RUN_FORMAT, 'version': 1}
    document.update({key: getattr(arguments, key) for key in RUN_SETTINGS})
    save_json_document(run_dir / 'run.json', document)


def _resume_arguments(arguments) -> None:
    """Take the run's own settings (run.json, config.yaml) for --resume; exit 2 if unusable."""
    from sindyrl_ros.core.progress import RunHistory
    from sindyrl_ros.core.serialization import FormatError, load_json_document

    run_dir = arguments.resume.resolve()
    if arguments.run_dir is not None or arguments.config is not None:
        raise SystemExit('sindyrl-ros train: --resume takes the run directory, task file and '
                         'backend of the run: leave out --run-dir and --config')
    try:
        settings = load_json_document(run_dir / 'run.json', RUN_FORMAT, {1})
        history = RunHistory.read(run_dir)
    except (FormatError, OSError, ValueError) as error:
        print(f'sindyrl-ros train: FATAL: cannot resume {run_dir}: {error}', file=sys.stderr)
        raise SystemExit(2) from None
    if history.reached:
        print(f'sindyrl-ros train: the run in {run_dir} already reached its threshold '
              f'({history.finished.get("eval_return_mean")}): nothing to resume')
        raise SystemExit(0)
    budget = arguments.budget
    for key in RUN_SETTINGS:
        value = settings.get(key)
        if key == 'budget' and budget is not None:
            continue
        if key in ('task', 'backend') and not isinstance(value, str):
            print(f'sindyrl-ros train: FATAL: {run_dir / "run.json"}: no {key}', file=sys.stderr)
            raise SystemExit(2)
        setattr(arguments, key, value)
    arguments.config = run_dir / 'config.yaml'
    arguments.run_dir = run_dir


def _parameter_sections(task_file: Path) -> dict:
    """``{section name: ros__parameters}`` of a parameter file."""
    import yaml

    document = yaml.safe_load(Path(task_file).read_text()) or {}
    return {
        name: (section or {}).get('ros__parameters', {}) or {}
        for name, section in document.items()
        if isinstance(section, dict)
    }


class EmulatedRig:
    """The rig emulator as the run's serial rig: its own process, its port a link in run_dir.

    At ``speed`` s > 1 the emulated rig samples every dt / s wall seconds, so the graph is
    told exactly that: every node gets ``control_period`` dt / s, and the controller's soft
    start is shortened s-fold, so what is counted in steps (episodes, trajectory gaps, the
    soft start) stays as at real time.
    """

    def __init__(self, task_file: Path, run_dir: Path, speed: float, env: dict[str, str]):
        if not (speed > 0 and speed < 1e6):
            raise SystemExit(f'sindyrl-ros train: --emulator-speed {speed} is not positive')
        sections = _parameter_sections(task_file)
        shared = sections.get('/**', {})
        self.task = shared.get('task')
        if not self.task:
            raise SystemExit(f'sindyrl-ros train: {task_file} names no task (/** task)')
        try:
            from sindyrl_ros.core.tasks import get_task

            registered = get_task(self.task)
        except KeyError:
            raise SystemExit(
                f'sindyrl-ros train: the rig emulator simulates registered tasks only, not '
                f'{self.task!r}'
            ) from None
        self.control_period = float(shared.get('control_period') or registered.dt)
        controller = dict(shared)
        for name in ('controller', '/controller'):
            controller.update(sections.get(name, {}))
        self.soft_start_time = float(controller.get('soft_start_time', 0.5))
        self.speed = float(speed)
        self.port = run_dir / 'rig'
        self.log_path = run_dir / 'logs' / 'rig_emulator.log'
        self.env = env
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> str:
        """Start the emulator, wait until its port is there; returns the port path."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable, '-m', 'sindyrl_ros.rig_emulator', '--task', self.task,
            '--link', str(self.port), '--speed', repr(self.speed),
        ]
        with open(self.log_path, 'wb') as log:
            self.process = subprocess.Popen(
                command, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if 'rig emulator ready' in self.log_path.read_text(errors='replace'):
                return str(self.port)
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        self.stop()
        raise SystemExit(
            'sindyrl-ros train: the rig emulator did not start:\n'
            + self.log_path.read_text(errors='replace')[-2000:]
        )

    def adapt(self, specs: list[graph.NodeSpec]) -> list[graph.NodeSpec]:
        """The graph told the emulated rig's control period (see the class docstring)."""
        if self.speed == 1.0:
            return specs
        period = self.control_period / self.speed
        adapted = []
        for spec in specs:
            parameters = dict(spec.parameters, control_period=period)
            if spec.executable == 'controller':
                parameters['soft_start_time'] = self.soft_start_time / self.speed
            adapted.append(dataclasses.replace(spec, parameters=parameters))
        return adapted

    def exited(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        for signum, wait in ((signal.SIGINT, 5.0), (signal.SIGKILL, 3.0)):
            try:
                os.killpg(self.process.pid, signum)
                self.process.wait(wait)
                return
            except ProcessLookupError:
                return
            except subprocess.TimeoutExpired:
                continue


def deploy_specs(arguments) -> list[graph.NodeSpec]:
    """The deployment graph's processes for these command-line arguments."""
    return graph.deploy_graph(
        _task_file(arguments), str(Path(arguments.policy).resolve()), arguments.backend
    )


def train(arguments) -> int:
    if arguments.resume is not None:
        _resume_arguments(arguments)
    task_file = _task_file(arguments)
    if (arguments.emulate or arguments.port) and arguments.backend != 'serial':
        raise SystemExit('sindyrl-ros train: --emulate and --port need --backend serial')
    stamp = time.strftime('%Y%m%d-%H%M%S')
    task = _task_name(task_file, arguments.task)
    run_dir = (arguments.run_dir or Path('runs') / f'{task}-{stamp}').resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    environment = _environment(arguments)
    emulator = None
    port = None
    if arguments.emulate:
        emulator = EmulatedRig(task_file, run_dir, arguments.emulator_speed, environment)
        port = emulator.start()
        print(
            f'sindyrl-ros train: rig emulator on {port} (task {emulator.task}, '
            f'{arguments.emulator_speed:g} x real time)'
        )
    specs = training_specs(arguments, run_dir, port)
    if emulator is not None:
        specs = emulator.adapt(specs)
    if arguments.resume is None:
        shutil.copy(task_file, run_dir / 'config.yaml')
        _save_run_settings(arguments, run_dir)
    log_dir = run_dir / 'logs'
    if arguments.resume is not None:
        # The logs of the start that crashed are evidence: each start keeps its own.
        log_dir = next(
            run_dir / f'logs_resume_{k}' for k in range(1, 10_000)
            if not (run_dir / f'logs_resume_{k}').exists()
        )
    nodes = Graph(specs, log_dir, environment)
    resuming = ' (resuming the run)' if arguments.resume is not None else ''
    print(f'sindyrl-ros train: task {task}, backend {arguments.backend}{resuming}')
    print(f'  parameters: {task_file}')
    print(f'  run directory: {run_dir} (node logs in {nodes.log_dir})')
    print(f'  nodes: {", ".join(spec.name for spec in specs)}')
    started = time.monotonic()
    progress_path = run_dir / 'progress.jsonl'
    # Only this start's events are told (a resumed run's log holds the earlier ones too).
    progress_offset = progress_path.stat().st_size if progress_path.exists() else 0
    outcome = 1
    watch = LogWatch(nodes.log_dir)
    nodes.start()
    if arguments.backend in graph.EXTERNAL_PLANTS:
        _operator_ready_on_enter(environment)
    try:
        while True:
            time.sleep(0.2)
            for line in watch.lines():
                print(f'[{time.monotonic() - started:7.1f} s] {line}', flush=True)
            if progress_path.exists():
                with open(progress_path) as progress:
                    progress.seek(progress_offset)
                    for line in progress:
                        if not line.endswith('\n'):
                            break
                        progress_offset += len(line.encode())
                        try:
                            event = json.loads(line)
                        except (ValueError, RecursionError):
                            continue
                        if not isinstance(event, dict):
                            continue
                        line = _describe(event)
                        if line:
                            elapsed = time.monotonic() - started
                            print(f'[{elapsed:7.1f} s] {line}', flush=True)
            exited = nodes.exited()
            if 'run_supervisor' in exited and exited['run_supervisor'] == 0:
                outcome = 0
                break
            if exited:
                for name, code in exited.items():
                    print(f'sindyrl-ros train: node {name} exited with code {code}; its log:')
                    print(nodes.log_tail(name))
                break
            if arguments.timeout and time.monotonic() - started > arguments.timeout:
                print(f'sindyrl-ros train: stopped after the {arguments.timeout:.0f} s timeout')
                break
            if emulator is not None and emulator.exited() is not None:
                print('sindyrl-ros train: the rig emulator exited; its log:')
                print('\n'.join(emulator.log_path.read_text(errors='replace').splitlines()[-15:]))
                break
    except KeyboardInterrupt:
        print('\nsindyrl-ros train: interrupted, stopping the graph')
        outcome = 130
    finally:
        nodes.stop()
        if emulator is not None:
            emulator.stop()
    wall_time = time.monotonic() - started
    summary_path = run_dir / 'summary.json'
    summary = None
    if summary_path.exists():
        from sindyrl_ros.core.serialization import FormatError, parse_json_text, read_document_file

        try:
            summary = parse_json_text(read_document_file(summary_path), str(summary_path))
        except (FormatError, OSError) as error:
            print(f'sindyrl-ros train: cannot read {summary_path}: {error}')
    if isinstance(summary, dict):
        print(_summary_text(summary, run_dir, wall_time))
        plot = plot_learning_curve(run_dir, summary.get('threshold'))
        if plot:
            print(f'  learning curve: {plot}')
        if outcome == 0 and not summary.get('reached', False):
            outcome = 3
    elif outcome == 0:
        print('sindyrl-ros train: the run ended without writing summary.json')
        outcome = 1
    return outcome


def _number(value) -> str:
    return f'{value:.1f}' if isinstance(value, (int, float)) else str(value)


def _summary_text(summary: dict, run_dir: Path, wall_time: float) -> str:
    reached = 'reached' if summary.get('reached') else 'did NOT reach'
    lines = [
        '',
        f'Run {reached} the target: mean eval return {_number(summary.get("eval_return_mean"))}'
        f' (threshold {_number(summary.get("threshold"))})',
        f'  real training steps: {summary.get("real_steps")}'
        f' (+ {summary.get("eval_steps", 0)} evaluation steps)',
        f'  policy: {summary.get("nn_parameters")} network parameters; sparse policy '
        f'{summary.get("sparse_policy_coefficients")} coefficients',
        f'  wall time: {wall_time:.1f} s, of which the plant was held '
        f'{summary.get("held_wall_time_s", 0.0):.1f} s while models and policies were trained',
        '  model:',
        *(f'    {equation}' for equation in summary.get('model_equations', [])),
        f'  everything is in {run_dir}',
    ]
    return '\n'.join(lines)


def _bad_policy_file(command: str, path: Path, error: Exception) -> int:
    """One FATAL line naming the policy file and its problem; exit code 2, as the nodes
    give for a bad configuration (a traceback tells an operator nothing about the file)."""
    problem = f'{path}: no such file' if isinstance(error, FileNotFoundError) else str(error)
    print(f'sindyrl-ros {command}: FATAL: {problem}', file=sys.stderr)
    return 2


def deploy(arguments) -> int:
    from sindyrl_ros.core.policies import load_policy
    from sindyrl_ros.core.serialization import FormatError

    try:
        load_policy(arguments.policy)
    except (FormatError, OSError) as error:
        return _bad_policy_file('deploy', arguments.policy, error)
    specs = deploy_specs(arguments)
    log_dir = arguments.log_dir or Path(os.environ.get('TMPDIR', '/tmp')) / (
        f'sindyrl-ros-deploy-{time.strftime("%Y%m%d-%H%M%S")}'
    )
    nodes = Graph(specs, log_dir, _environment(arguments))
    print(f'sindyrl-ros deploy: {arguments.policy} on {arguments.backend}; logs in {log_dir}')
    nodes.start()
    started = time.monotonic()
    try:
        while not nodes.exited():
            time.sleep(0.2)
            if arguments.duration and time.monotonic() - started > arguments.duration:
                break
        for name, code in nodes.exited().items():
            print(f'sindyrl-ros deploy: node {name} exited with code {code}:')
            print(nodes.log_tail(name))
            return 1
    except KeyboardInterrupt:
        print('\nsindyrl-ros deploy: interrupted, sending the safe command and stopping')
    finally:
        nodes.stop()
    return 0


def export(arguments) -> int:
    from sindyrl_ros.core.export import export_c, export_python
    from sindyrl_ros.core.policies import SparsePolynomialPolicy, load_policy
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
        from sindyrl_ros import rig_emulator

        return rig_emulator.main(argv[1:])
    arguments = build_parser().parse_args(argv)
    if arguments.command == 'train':
        return train(arguments)
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
