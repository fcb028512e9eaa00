"""Chaos: kill -9 one node of a training run at a random moment, then `train --resume`.

Seven seeds, one per node and one for the runner itself (in a random order), each drawing
the moment. The test process listens to the command topic over DDS the whole time (it is
what reaches the plant) and checks:

- no command is ever non-finite or outside the task's limits, before, during or after the
  kill, nor in the resumed run;
- the graph does not drive the plant unsupervised: `sindyrl-ros train` stops every node
  once one is gone, and the controller's last word is its safe command (when the
  controller itself is the one killed, nothing commands the plant after the kill);
- `sindyrl-ros train --resume` finishes the run (threshold or budget) with the budget
  counting the steps of the killed start, and every transition recorded before the kill
  (observations and actions in the MCAP segments, read as they were left) is still in the
  run's recording, unchanged.

The budget and the surrogate training are small, so a seed takes about half a minute: what is
checked is safety and bookkeeping, not how well the pendulum is learned.
"""

import json
import math
import os
from pathlib import Path
import random
import signal
import sys
import time

import pytest
from ros_testing import child_pids, process_running, spin_until
import yaml

from sindyrl_ros import graph

pytestmark = pytest.mark.ros

# The runner itself (`sindyrl-ros train`) too: its nodes must stop when it is gone.
VICTIMS = (
    'runner',
    'plant',
    'sensor_ingestion',
    'controller',
    'model_updater',
    'policy_trainer',
    'run_supervisor',
)
LOW, HIGH = -2.0, 2.0  # config/pendulum.yaml's torque limits
SAFE = 0.0
BUDGET = 400
IN_FLIGHT_S = 2.0  # how long a command published before a kill may take to arrive (loaded)


def _train(start_process, name: str, *arguments: str):
    return start_process([sys.executable, '-m', 'sindyrl_ros.cli', 'train', *arguments], name=name)


def _recorded(run_dir) -> list[dict]:
    """Per session: {(topic, stamp): values} of everything the recording holds now."""
    from sindyrl_ros.core.mcap_reader import LogFormatError
    from sindyrl_ros.core.recording import read_recording

    try:
        logs = read_recording(run_dir / 'recording')
    except (FileNotFoundError, LogFormatError):  # nothing was recorded yet
        return []
    sessions = []
    for log in logs:
        messages = {}
        for topic, vectors in (('observation', log.observations), ('action', log.actions)):
            for vector in vectors:
                messages[(topic, vector.stamp_ns)] = (tuple(vector.values), vector.frame_id)
        sessions.append(messages)
    return sessions


@pytest.mark.parametrize('seed', range(len(VICTIMS)))
def test_a_node_killed_at_random_never_lets_a_bad_command_out_and_resume_finishes(
    seed, ros_context, start_process, tmp_path
):
    import rclpy.node
    from std_msgs.msg import Float64MultiArray

    from sindyrl_ros.ros.qos import RELIABLE_QOS

    # One seed per victim: each is killed once, in an order and at moments the seeds draw.
    victim = random.Random(2026).sample(VICTIMS, len(VICTIMS))[seed]
    kill_after = random.Random(seed).randint(30, 350)  # commands seen before the kill

    task = yaml.safe_load(graph.task_config('pendulum').read_text())
    task['policy_trainer']['ros__parameters'].update(
        surrogate_steps_first=10_000, surrogate_steps_per_model=5_000, distill_sparse=False
    )
    task['run_supervisor']['ros__parameters'].update(eval_episodes=1)
    task['model_updater']['ros__parameters'].update(segment_seconds=2.0, flush_period=0.2)
    config = tmp_path / 'pendulum.yaml'
    config.write_text(yaml.safe_dump(task, sort_keys=False))
    run_dir = tmp_path / 'run'

    context, executor = ros_context
    probe = rclpy.node.Node('chaos_probe', context=context)
    executor.add_node(probe)
    commands: list[tuple[float, tuple[float, ...]]] = []
    probe.create_subscription(
        Float64MultiArray,
        '/effort_controller/commands',
        lambda message: commands.append((time.monotonic(), tuple(message.data))),
        RELIABLE_QOS,
    )

    def bad_commands() -> list:
        return [
            values
            for _, values in commands
            if len(values) != 1 or not all(math.isfinite(v) and LOW <= v <= HIGH for v in values)
        ]

    first = _train(
        start_process,
        'train',
        '--config',
        str(config),
        '--budget',
        str(BUDGET),
        '--run-dir',
        str(run_dir),
        '--timeout',
        '300',
    )
    reached = spin_until(executor, lambda: len(commands) >= kill_after, timeout=180, step=0.05)
    assert reached, first.output()[-3000:]
    nodes = child_pids(first.process.pid)
    if victim == 'runner':
        pids = [first.process.pid]
    else:
        pids = [pid for pid in nodes if _node_name(pid) == victim]
    assert len(pids) == 1, (victim, pids, first.output()[-2000:])
    os.kill(pids[0], signal.SIGKILL)
    killed_at = time.monotonic()
    # The runner sees a node gone and stops the others (the controller: safe command first);
    # a killed runner's nodes see their parent gone and stop themselves.
    assert spin_until(executor, lambda: not first.alive(), timeout=60, step=0.1), first.output()
    assert spin_until(
        executor, lambda: not any(process_running(pid) for pid in nodes), timeout=30, step=0.1
    ), [pid for pid in nodes if process_running(pid)]
    spin_until(executor, lambda: False, timeout=1.0)  # what was in flight
    assert first.process.returncode not in (0, None), first.output()[-3000:]
    if victim != 'runner':
        assert f'node {victim} exited with code -9' in first.output(), first.output()[-3000:]
    assert not bad_commands(), bad_commands()[:5]
    # Commands published before the kill may still be on their way for a moment.
    after_kill = [values for at, values in commands if at > killed_at + IN_FLIGHT_S]
    if victim == 'controller':
        assert after_kill == [], after_kill[:5]
    else:
        assert commands[-1][1] == (SAFE,), commands[-5:]

    committed = _recorded(run_dir)
    if victim != 'model_updater':  # (a killed updater may not have flushed anything yet)
        assert sum(len(session) for session in committed) > 0

    commands.clear()
    resumed = _train(start_process, 'resume', '--resume', str(run_dir), '--timeout', '300')
    assert spin_until(executor, lambda: not resumed.alive(), timeout=330, step=0.2), (
        resumed.output()[-3000:]
    )
    code = resumed.process.returncode
    assert code in (0, 3), resumed.output()[-3000:]  # 0: threshold reached, 3: budget spent
    assert 'resuming the run' in resumed.output()
    assert commands and not bad_commands(), bad_commands()[:5]

    summary = json.loads((run_dir / 'summary.json').read_text())
    assert summary['stop_reason'] in ('threshold', 'budget'), summary['stop_reason']
    assert summary['starts'] == 2
    events = [
        json.loads(line)
        for line in (run_dir / 'progress.jsonl').read_text().splitlines()
        if line.endswith('}')
    ]
    start = [e for e in events if e['event'] == 'start'][-1]
    before = start['resumed']['real_steps']
    # The steps of the killed start count against the budget: the resumed start began there.
    assert before >= start['resumed']['progress_real_steps']
    assert summary['real_steps'] >= before
    if summary['stop_reason'] == 'budget':
        assert summary['real_steps'] >= BUDGET

    # Every transition recorded before the kill is still there, unchanged, in its session.
    after = _recorded(run_dir)
    assert len(after) == len(committed) + 1, (len(after), len(committed))
    for kept, now in zip(committed, after):
        missing = {key for key in kept if now.get(key) != kept[key]}
        assert not missing, sorted(missing)[:5]


def _node_name(pid: int) -> str | None:
    """The ROS node name a process was started under (its `__node:=` remapping)."""
    try:
        arguments = Path(f'/proc/{pid}/cmdline').read_bytes().split(b'\0')
    except OSError:
        return None
    for argument in arguments:
        if argument.startswith(b'__node:='):
            return argument.split(b':=', 1)[1].decode()
    return None
