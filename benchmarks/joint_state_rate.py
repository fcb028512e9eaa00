"""The control loop on a ros2_control robot whose joint states come faster than it runs.

A robot's ``joint_state_broadcaster`` publishes at 100 Hz to 1 kHz; the pendulum is
controlled at 20 Hz. This benchmark runs the nodes of ``sindyrl-ros train --backend
ros2_control`` that see every observation (sensor ingestion, the controller, the episodes
node, the model updater recording to MCAP) as separate processes over real DDS, against
test/ros2_control_plant.py (Pendulum-v1 physics on the wall clock, its own process), and
measures for each joint-state rate and controller trigger:

* **command gaps at the plant**: the intervals between commands as the plant receives them
  (p50, p99, max): does the 20 Hz loop keep its period under the stream?
* **command age at the plant**: from the joint state a command answers to its arrival
  (p50, p99, max): during that time the previous command still acts;
* **recorded step lengths**: the intervals between the observations the controller
  answered, as recorded by the model updater (p1, p50, p99): the steps the model is fitted
  on, which should be one control period (50 ms).

Triggers: ``timer`` (a steady-clock timer using the latest observation, what the backend
used before) and ``stamp`` (the first observation of each control period by the
observations' stamps, what it uses now). The controller explores (random torques: no
policy) and nothing else runs: no learning load.

    python benchmarks/joint_state_rate.py [--seconds 20] [--rates 200 1000]

Results go to benchmarks/results/joint_state_rate.json (merged per phase).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
import sys
import tempfile
import time

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / 'test' / 'ros'))

from common import (  # noqa: E402
    command_line,
    machine_info,
    package_versions,
    read_json,
    utc_now,
    write_json,
)
from ros_testing import DomainLease  # noqa: E402

from sindyrl_ros import graph  # noqa: E402
from sindyrl_ros.core.recording import read_recording  # noqa: E402
from sindyrl_ros.processes import ChildProcess, ros_environment, stop_processes  # noqa: E402

RESULTS = ROOT / 'benchmarks' / 'results' / 'joint_state_rate.json'
PLANT = ROOT / 'test' / 'ros2_control_plant.py'
TASK_FILE = ROOT / 'config' / 'example_ros2_control_pendulum.yaml'
NODES = ('sensor_ingestion', 'controller', 'episodes', 'model_updater')


def percentiles(values_ms: np.ndarray, which: tuple[int, ...]) -> dict[str, float]:
    return {f'p{q}_ms': round(float(np.percentile(values_ms, q)), 2) for q in which} | {
        'max_ms': round(float(values_ms.max()), 2)
    }


def run_phase(trigger: str, rate_hz: float, seconds: float, work: Path) -> dict:
    """One phase: the plant at ``rate_hz`` joint states, the nodes, ``seconds`` of control."""
    lease = DomainLease()
    env = ros_environment(lease.domain_id)
    run_dir = work / f'{trigger}_{int(rate_hz)}'
    specs = {
        spec.name: spec
        for spec in graph.training_graph(TASK_FILE, backend='ros2_control', run_dir=str(run_dir))
    }
    overrides = {
        'controller': {'trigger': trigger, 'clock': 'steady', 'start_active': True},
        'episodes': {'start_paused': False, 'reset': 'none'},
    }
    processes = []
    try:
        processes.append(
            ChildProcess(
                [sys.executable, str(PLANT), '--reset', 'none', '--joint-rate', str(rate_hz)],
                env,
                work / f'plant_{trigger}_{int(rate_hz)}.log',
            )
        )
        for name in NODES:
            spec = specs[name]
            spec = dataclasses.replace(
                spec, parameters={**spec.parameters, **overrides.get(name, {})}
            )
            processes.append(
                ChildProcess(
                    [sys.executable, '-m', spec.module, *spec.ros_arguments()],
                    env,
                    work / f'{name}_{trigger}_{int(rate_hz)}.log',
                )
            )
        time.sleep(seconds + 5.0)  # start-up, then the measured time
    finally:
        stop_processes(reversed(processes), timeout=20.0)
        lease.release()
    counters = json.loads(
        (work / f'plant_{trigger}_{int(rate_hz)}.log').read_text().strip().splitlines()[-1]
    )
    (log,) = read_recording(run_dir / 'recording')  # one session
    stamps = np.array(sorted({a.stamp_ns for a in log.actions if a.frame_id == 'explore'}))
    steps_ms = np.diff(stamps) / 1e6
    steps_ms = steps_ms[steps_ms < 1000.0]  # a hold, not a step
    return {
        'trigger': trigger,
        'joint_state_rate_hz': rate_hz,
        'control_period_ms': 50.0,
        'seconds': seconds,
        'joint_states_published': counters['joint_states'],
        'commands_received': counters['commands'],
        'command_gap': {
            'p50_ms': counters.get('command_gap_p50_ms'),
            'p99_ms': counters.get('command_gap_p99_ms'),
            'max_ms': counters.get('command_gap_max_ms'),
        },
        # From the joint state a command answers to its arrival at the plant: the part of
        # each step still driven by the previous command.
        'command_age': {
            'p50_ms': counters.get('command_age_p50_ms'),
            'p99_ms': counters.get('command_age_p99_ms'),
            'max_ms': counters.get('command_age_max_ms'),
        },
        'recorded_steps': int(steps_ms.size),
        'recorded_step': percentiles(steps_ms, (1, 50, 99)),
        'recorded_steps_within_5ms': round(float(np.mean(np.abs(steps_ms - 50.0) <= 5.0)), 4),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--seconds', type=float, default=20.0, help='measured seconds per phase')
    parser.add_argument('--rates', type=float, nargs='+', default=[200.0, 1000.0])
    parser.add_argument('--triggers', nargs='+', default=['timer', 'stamp'])
    parser.add_argument('--out', type=Path, default=RESULTS)
    arguments = parser.parse_args(argv)
    document = read_json(arguments.out) or {'format': 'sindyrl_ros/benchmark/joint_state_rate'}
    phases = document.setdefault('phases', {})
    with tempfile.TemporaryDirectory(prefix='joint_state_rate-') as work:
        for rate in arguments.rates:
            for trigger in arguments.triggers:
                result = run_phase(trigger, rate, arguments.seconds, Path(work))
                phases[f'{trigger}_{int(rate)}hz'] = result
                print(json.dumps(result), flush=True)
    document.update(
        date=utc_now(),
        command=command_line(),
        machine=machine_info(),
        versions=package_versions(),
    )
    write_json(arguments.out, document)
    print(f'written {arguments.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
