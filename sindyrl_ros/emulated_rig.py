"""The rig emulator as a run's serial rig (`sindyrl-ros train --backend serial --emulate`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
import sys
import time

from sindyrl_ros import graph
from sindyrl_ros.processes import ChildProcess
from sindyrl_ros.task_files import parameter_sections


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
        sections = parameter_sections(task_file)
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
        self.process: ChildProcess | None = None

    def start(self, timeout: float = 60.0) -> str:
        """Start the emulator, wait until its port is there; returns the port path."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        # Through the command, which knows where the emulator lives.
        command = [
            sys.executable, '-m', 'sindyrl_ros.cli', 'rig-emulator', '--task', self.task,
            '--link', str(self.port), '--speed', repr(self.speed),
        ]
        self.process = ChildProcess(command, self.env, self.log_path)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if 'rig emulator ready' in self.process.output():
                return str(self.port)
            if not self.process.alive():
                break
            time.sleep(0.1)
        self.stop()
        raise SystemExit(
            'sindyrl-ros train: the rig emulator did not start:\n' + self.process.output()[-2000:]
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
        """Its exit code once it has exited; None while it runs or before it starts."""
        return None if self.process is None else self.process.returncode

    def log_tail(self, lines: int = 15) -> str:
        return '' if self.process is None else self.process.tail(lines)

    def stop(self) -> None:
        """Ctrl-C, then harder (after the graph: the serial bridge first sends its safe
        command to the rig)."""
        if self.process is not None:
            self.process.stop(timeout=5.0)
