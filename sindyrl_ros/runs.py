"""The graph run from the shell: `sindyrl-ros train` (and ``--resume``) and `deploy`.

A run starts the nodes of sindyrl_ros.graph as separate processes (the same nodes and
parameter files as the launch files), shows what an operator must see while it goes on
(progress events, ``WAITING:`` and error lines), stops every process cleanly on Ctrl-C or
when the run is done, and prints a summary. Its directory keeps everything: the task file
(``config.yaml``), the settings it was started with (``run.json``, what ``--resume``
starts again), the node logs, the progress log, models, policies and ``summary.json``.
"""

from __future__ import annotations

import os
from pathlib import Path
import shutil
import subprocess
import sys
import threading
import time

from sindyrl_ros import graph
from sindyrl_ros.core.progress import ProgressFollower, describe
from sindyrl_ros.emulated_rig import EmulatedRig
from sindyrl_ros.processes import ChildProcess, ros_environment, stop_processes
from sindyrl_ros.run_plots import plot_learning_curve
from sindyrl_ros.task_files import task_name

RUN_FORMAT = 'sindyrl_ros/run'
# What a run was started with, so that --resume starts the same graph again.
RUN_SETTINGS = ('task', 'backend', 'budget', 'port', 'emulate', 'emulator_speed')
# The task a run without --task and --config trains.
DEFAULT_TASK = 'pendulum'


class Graph:
    """The graph's processes: started together, stopped together, logs in one folder.

    Every node is told this process's pid (``graph.PARENT_PID_ENV``) and is started from
    the calling thread, which must live as long as the run (see sindyrl_ros.processes).
    """

    def __init__(self, specs: list[graph.NodeSpec], log_dir: Path, env: dict[str, str]):
        self.specs = specs
        self.log_dir = log_dir
        self.env = env
        self.processes: dict[str, ChildProcess] = {}

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for spec in self.specs:
            self.processes[spec.name] = ChildProcess(
                [*node_command(spec), *spec.ros_arguments()],
                self.env,
                self.log_dir / f'{spec.name}.log',
                announce_parent=True,
            )

    def exited(self) -> dict[str, int]:
        """``{node name: exit code}`` of the nodes that have exited."""
        return {
            name: process.returncode
            for name, process in self.processes.items()
            if not process.alive()
        }

    def log_tail(self, name: str, lines: int = 15) -> str:
        return self.processes[name].tail(lines)

    def stop(self, timeout: float = 10.0) -> None:
        """Ctrl-C to every node at once (the controller sends its safe command), then harder."""
        stop_processes(self.processes.values(), timeout)


def node_command(spec: graph.NodeSpec) -> list[str]:
    """The installed console script if it sits beside this Python, else `python -m module`."""
    script = Path(sys.executable).with_name(spec.executable)
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, '-m', spec.module]


def environment(arguments) -> dict[str, str]:
    """The nodes' environment: --domain-id, discovery on this machine unless --network."""
    return ros_environment(arguments.domain_id, localhost=not arguments.network)


def task_file(arguments) -> Path:
    """The task parameter file: --config, else the shipped file of --task (or the default)."""
    path = arguments.config or graph.task_config(arguments.task or DEFAULT_TASK)
    if not Path(path).is_file():
        raise SystemExit(f'sindyrl-ros: parameter file {path} does not exist')
    return Path(path).resolve()


def default_run_dir(task: str) -> Path:
    """``runs/<task>-<date>-<time>`` in the working directory."""
    return Path('runs') / f'{task}-{time.strftime("%Y%m%d-%H%M%S")}'


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


def _operator_ready_on_enter(env: dict[str, str]) -> None:
    """Enter on the terminal: tell the episodes node the robot is reset (daemon thread)."""
    if not sys.stdin or not sys.stdin.isatty():
        return

    def read() -> None:
        for _ in sys.stdin:
            subprocess.run(
                [sys.executable, '-m', 'sindyrl_ros.cli', 'operator-ready'],
                env=env, check=False, timeout=30,
            )

    threading.Thread(target=read, daemon=True, name='operator-enter').start()


def training_specs(arguments, run_dir: Path, port: str | None = None) -> list[graph.NodeSpec]:
    """The training graph's processes for these command-line arguments."""
    return graph.training_graph(
        task_file(arguments), backend=arguments.backend, run_dir=str(run_dir),
        budget=arguments.budget, port=port or getattr(arguments, 'port', None),
        resume=getattr(arguments, 'resume', None) is not None,
    )


def deploy_specs(arguments) -> list[graph.NodeSpec]:
    """The deployment graph's processes for these command-line arguments."""
    return graph.deploy_graph(
        task_file(arguments), str(Path(arguments.policy).resolve()), arguments.backend
    )


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


def plan_training(arguments) -> tuple[Path, Path]:
    """Settle a training's task file, task name and run directory (nothing is started).

    ``--resume`` takes the run's own settings; otherwise the run is named after the task
    the file names (``/** task``), else ``--task``, else the file's stem, and
    ``arguments.task`` is set to that name (it goes to run.json).

    Returns
    -------
    task_file, run_dir : Path
        The resolved parameter file and run directory (not created yet).
    """
    if arguments.resume is not None:
        _resume_arguments(arguments)
    path = task_file(arguments)
    if (arguments.emulate or arguments.port) and arguments.backend != 'serial':
        raise SystemExit('sindyrl-ros train: --emulate and --port need --backend serial')
    arguments.task = task_name(path, arguments.task)
    run_dir = (arguments.run_dir or default_run_dir(arguments.task)).resolve()
    return path, run_dir


def train(arguments) -> int:
    """`sindyrl-ros train`: exit code 0 reached, 3 not reached, 1 failed, 130 interrupted."""
    path, run_dir = plan_training(arguments)
    run_dir.mkdir(parents=True, exist_ok=True)
    env = environment(arguments)
    emulator = None
    port = None
    if arguments.emulate:
        emulator = EmulatedRig(path, run_dir, arguments.emulator_speed, env)
        port = emulator.start()
        print(
            f'sindyrl-ros train: rig emulator on {port} (task {emulator.task}, '
            f'{arguments.emulator_speed:g} x real time)'
        )
    specs = training_specs(arguments, run_dir, port)
    if emulator is not None:
        specs = emulator.adapt(specs)
    if arguments.resume is None:
        shutil.copy(path, run_dir / 'config.yaml')
        _save_run_settings(arguments, run_dir)
    log_dir = run_dir / 'logs'
    if arguments.resume is not None:
        # The logs of the start that crashed are evidence: each start keeps its own.
        log_dir = next(
            run_dir / f'logs_resume_{k}' for k in range(1, 10_000)
            if not (run_dir / f'logs_resume_{k}').exists()
        )
    nodes = Graph(specs, log_dir, env)
    resuming = ' (resuming the run)' if arguments.resume is not None else ''
    print(f'sindyrl-ros train: task {arguments.task}, backend {arguments.backend}{resuming}')
    print(f'  parameters: {path}')
    print(f'  run directory: {run_dir} (node logs in {nodes.log_dir})')
    print(f'  nodes: {", ".join(spec.name for spec in specs)}')
    started = time.monotonic()

    def say(line: str) -> None:
        print(f'[{time.monotonic() - started:7.1f} s] {line}', flush=True)

    progress = ProgressFollower(run_dir)  # only this start's events are told
    outcome = 1
    watch = LogWatch(nodes.log_dir)
    nodes.start()
    if arguments.backend in graph.EXTERNAL_PLANTS:
        _operator_ready_on_enter(env)
    try:
        while True:
            time.sleep(0.2)
            for line in watch.lines():
                say(line)
            for event in progress.new_events():
                line = describe(event)
                if line:
                    say(line)
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
                print(emulator.log_tail())
                break
    except KeyboardInterrupt:
        print('\nsindyrl-ros train: interrupted, stopping the graph')
        outcome = 130
    finally:
        # The nodes first: the controller and the serial bridge send their safe command to
        # a rig that is still there.
        nodes.stop()
        if emulator is not None:
            emulator.stop()
    return _finish(run_dir, outcome, time.monotonic() - started)


def _finish(run_dir: Path, outcome: int, wall_time: float) -> int:
    """Print the summary and the learning curve; the exit code (3: target not reached)."""
    summary_path = run_dir / 'summary.json'
    summary = None
    if summary_path.exists():
        from sindyrl_ros.core.serialization import FormatError, parse_json_text, read_document_file

        try:
            summary = parse_json_text(read_document_file(summary_path), str(summary_path))
        except (FormatError, OSError) as error:
            print(f'sindyrl-ros train: cannot read {summary_path}: {error}')
    if isinstance(summary, dict):
        print(summary_text(summary, run_dir, wall_time))
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


def summary_text(summary: dict, run_dir: Path, wall_time: float) -> str:
    """What the terminal shows of a run's summary.json at its end."""
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


def deploy(arguments) -> int:
    """`sindyrl-ros deploy` once the policy file is known good: runs until Ctrl-C,
    --duration or a node's exit (exit code 1)."""
    specs = deploy_specs(arguments)
    log_dir = arguments.log_dir or Path(os.environ.get('TMPDIR', '/tmp')) / (
        f'sindyrl-ros-deploy-{time.strftime("%Y%m%d-%H%M%S")}'
    )
    nodes = Graph(specs, log_dir, environment(arguments))
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
