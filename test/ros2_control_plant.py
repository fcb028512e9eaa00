"""A stand-in for a ros2_control pendulum robot, independent of sindyrl_ros.

It imports nothing from sindyrl_ros: it is what a robot's driver stack looks like from the
outside, so training against it shows the package learns on a plant it does not drive.

* Physics: gymnasium's Pendulum-v1 (its own equations and limits), integrated in steps of
  ``--physics-dt`` seconds and advanced on the wall clock, as hardware moves: on every
  timer tick it catches up with the time that passed.
* ``/joint_states`` (sensor_msgs/JointState, ``pendulum_joint``: position θ, velocity θ̇,
  effort = applied torque) at ``--joint-rate`` Hz (a joint_state_broadcaster runs faster
  than the 20 Hz control loop), stamped with the wall-clock time of the state it carries
  (as ros2_control stamps a state with the time its hardware was read), not the time the
  timer happened to publish it.
* ``/effort_controller/commands`` (std_msgs/Float64MultiArray): the torque, held until
  the next command, like a ros2_control ForwardCommandController. A command of the wrong
  length or not finite is ignored and counted.
* Resets, per ``--reset``:
  ``trigger``: ``/pendulum/reset`` (std_srvs/Trigger) puts the pendulum at a random state
  (Pendulum-v1's start distribution), like a homing routine;
  ``self``: the rig resets itself to a random state once it has received only zero torque
  for ``--idle-reset`` seconds (firmware that re-homes when its host goes idle);
  ``none``: never (with ``--damping`` the pendulum comes to rest: the settle provider).

On SIGINT/SIGTERM it prints one JSON line of counters (steps, commands, ignored commands,
resets, largest torque applied, the gaps between commands and the age of each command on
arrival, from the joint state it answers: p50, p99, max in ms) and exits 0.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import time

import gymnasium
import numpy as np
import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray
from std_srvs.srv import Trigger


class PendulumRobot(Node):
    def __init__(self, options: argparse.Namespace) -> None:
        super().__init__('pendulum_robot')
        self.options = options
        self.env = gymnasium.make('Pendulum-v1').unwrapped
        self.env.dt = options.physics_dt  # finer steps: close to a continuous pendulum
        self.env.reset(seed=options.seed)
        self.max_torque = float(self.env.max_torque)
        self.torque = 0.0
        self.zero_since: float | None = time.monotonic()
        self.reset_while_idle = False
        self.counters = {
            'physics_steps': 0,
            'commands': 0,
            'ignored_commands': 0,
            'resets': 0,
            'max_abs_torque': 0.0,
            'joint_states': 0,
        }
        self.started = time.monotonic()
        self.started_wall_ns = time.time_ns()
        self.command_times: list[float] = []
        self.command_ages: list[int] = []  # ns from the answered joint state to arrival
        self.simulated = 0.0  # seconds of physics done
        self.publisher = self.create_publisher(JointState, 'joint_states', 10)
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.create_subscription(
            Float64MultiArray, '/effort_controller/commands', self.on_command, reliable
        )
        if options.reset == 'trigger':
            self.create_service(Trigger, '/pendulum/reset', self.on_reset)
        self.message = JointState(name=['pendulum_joint'])
        self.create_timer(1.0 / options.joint_rate, self.tick)
        print(json.dumps({'ready': True, 'reset': options.reset}), flush=True)

    def on_command(self, message: Float64MultiArray) -> None:
        values = list(message.data)
        if len(values) != 1 or not math.isfinite(values[0]):
            self.counters['ignored_commands'] += 1
            return
        self.counters['commands'] += 1
        self.command_times.append(time.monotonic())
        # The command says which joint state it answers (layout label 'stamp_ns=<int>', the
        # package's topic contract; a real ros2_control robot ignores it): its age on arrival.
        for dim in message.layout.dim:
            if dim.label.startswith('stamp_ns='):
                self.command_ages.append(time.time_ns() - int(dim.label[len('stamp_ns='):]))
        self.torque = float(values[0])
        if self.torque == 0.0:
            if self.zero_since is None:
                self.zero_since = time.monotonic()
        else:
            self.zero_since = None
            self.reset_while_idle = False

    def randomize(self) -> None:
        self.env.reset()
        self.counters['resets'] += 1

    def on_reset(self, request: Trigger.Request, response: Trigger.Response):
        self.randomize()
        theta, theta_dot = self.env.state
        response.success = True
        response.message = f'homed to theta {theta:.3f}, theta_dot {theta_dot:.3f}'
        return response

    def tick(self) -> None:
        now = time.monotonic()
        # Catch up with the wall clock, torque held between commands (and clipped as the
        # motor driver would).
        applied = float(np.clip(self.torque, -self.max_torque, self.max_torque))
        due = now - self.started
        while self.simulated + self.options.physics_dt <= due:
            self.env.step(np.array([applied], dtype=np.float32))
            if self.options.damping > 0.0:
                self.env.state[1] *= 1.0 - self.options.damping * self.options.physics_dt
            self.simulated += self.options.physics_dt
            self.counters['physics_steps'] += 1
        self.counters['max_abs_torque'] = max(self.counters['max_abs_torque'], abs(applied))
        if (
            self.options.reset == 'self'
            and self.zero_since is not None
            and not self.reset_while_idle
            and now - self.zero_since >= self.options.idle_reset
        ):
            self.randomize()
            self.reset_while_idle = True
        theta, theta_dot = (float(v) for v in self.env.state)
        message = self.message
        stamp_ns = self.started_wall_ns + int(round(self.simulated * 1e9))
        message.header.stamp.sec, message.header.stamp.nanosec = divmod(stamp_ns, 10**9)
        message.position = [theta]
        message.velocity = [theta_dot]
        message.effort = [applied]
        self.publisher.publish(message)
        self.counters['joint_states'] += 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--reset', choices=('trigger', 'self', 'none'), default='trigger')
    parser.add_argument('--joint-rate', type=float, default=200.0, help='joint states per s')
    parser.add_argument('--physics-dt', type=float, default=0.005, help='integration step, s')
    parser.add_argument('--idle-reset', type=float, default=0.3, help='self reset: idle s')
    parser.add_argument('--damping', type=float, default=0.0, help='1/s velocity damping')
    parser.add_argument('--seed', type=int, default=0)
    options = parser.parse_args()
    rclpy.init(signal_handler_options=rclpy.signals.SignalHandlerOptions.NO)
    stop = {'now': False}

    def request_stop(*_):
        stop['now'] = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    node = PendulumRobot(options)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        while not stop['now'] and rclpy.ok():
            executor.spin_once(timeout_sec=0.05)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        gaps = np.diff(node.command_times) * 1e3
        if gaps.size:
            node.counters.update(
                {
                    f'command_gap_{name}_ms': round(float(value), 2)
                    for name, value in zip(
                        ('p50', 'p99', 'max'), (*np.percentile(gaps, [50, 99]), gaps.max())
                    )
                }
            )
        ages = np.asarray(node.command_ages, dtype=np.float64) * 1e-6
        if ages.size:
            node.counters.update(
                {
                    f'command_age_{name}_ms': round(float(value), 2)
                    for name, value in zip(
                        ('p50', 'p99', 'max'), (*np.percentile(ages, [50, 99]), ages.max())
                    )
                }
            )
        print(json.dumps(node.counters), flush=True)
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == '__main__':
    sys.exit(main())
