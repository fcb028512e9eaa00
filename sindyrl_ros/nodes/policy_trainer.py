"""Policy trainer: trains a policy on the SINDy surrogate of each accepted model (Dyna).

Subscribes to ``/sindyrl/model`` (latched); every card is checked field by field on
receipt, and a malformed or mismatched one is refused and counted, never trained on
(``rejected.malformed_model``; ``rejected.missing_reward_model`` for a task that learns
its reward and a card without a reward model). Training runs in a worker thread
(:class:`~sindyrl_ros.core.policy_training.PolicyTraining`) on the newest model, skipping
the ones that arrive in between, with the SAC networks kept from one model to the next.

The policy goes out on ``/sindyrl/policy`` (latched, so a controller that starts later
still gets it) as the numpy policy document of :mod:`sindyrl_ros.core.policies`, with
the source model version, its own version and its surrogate metrics in ``metadata``.
Optionally a sparse polynomial policy is distilled from it, saved, and deployed instead.

On ``resume`` the run's last deployed policy (``run_dir/policies``) is read back through
the same checks as any policy file and published again, so the controller goes on with it
instead of random actions; versions go on from it.
"""

from __future__ import annotations

import json
from pathlib import Path
import sys

from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from std_msgs.msg import String

from sindyrl_ros.core.policy_training import (
    MissingRewardModelError,
    PolicyTraining,
    policy_summary,
    read_model_card,
)
from sindyrl_ros.core.serialization import FormatError
from sindyrl_ros.params.policy_trainer import PARAMETERS
from sindyrl_ros.ros.diagnostics import Diagnostics
from sindyrl_ros.ros.parameters import (
    check_parameter_files,
    configuration_error,
    declare_parameters,
    task_from_parameters,
)
from sindyrl_ros.ros.qos import LATCHED_QOS
from sindyrl_ros.ros.runtime import run_node


class PolicyTrainer(Node):
    """Turns accepted model cards into published policies, training off the executor."""

    def __init__(self) -> None:
        super().__init__('policy_trainer')
        self.parameters = declare_parameters(self, PARAMETERS)
        check_parameter_files(self)
        p = self.parameters
        if p.deploy_policy == 'sparse' and not p.distill_sparse:
            raise configuration_error(self, 'deploy_policy', 'sparse needs distill_sparse:=true')
        self.task = task_from_parameters(self, p)
        self.policies_dir = Path(p.run_dir).expanduser() / 'policies'
        try:
            self.policies_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise configuration_error(self, 'run_dir', f'cannot create it: {error}') from None
        try:
            # Versions go on from the policies a previous start left in run_dir.
            self.training = PolicyTraining(
                self.task, p, self.policies_dir, log=self.get_logger().info
            )
        except (ValueError, RuntimeError) as error:
            raise configuration_error(self, 'device', f'cannot set up SAC: {error}') from None

        self.diagnostics = Diagnostics(self, p.diagnostics_period)
        for key in (
            'models_received',
            'models_skipped',
            'policies_published',
            'training_failures',
        ):
            self.diagnostics.counters[key] = 0
        for key in (
            'training',
            'training_model_version',
            'updates',
            'surrogate_return',
            'policy_version',
            'source_model_version',
            'last_train_time_s',
            'sparse_policy_coefficients',
        ):
            self.diagnostics.set(key, 'none')
        self.diagnostics.set('training', False)

        self.policy_publisher = self.create_publisher(String, 'sindyrl/policy', LATCHED_QOS)
        self.create_subscription(String, 'sindyrl/model', self._on_model, LATCHED_QOS)
        # Steady clock: sim time stands still while a lockstep plant waits.
        self.create_timer(
            0.05, self._publish_finished, clock=Clock(clock_type=ClockType.STEADY_TIME)
        )
        if p.resume:
            self._republish_last_policy()
        self.training.start()
        self.get_logger().info(
            f'policy trainer ready: task {self.task.name}, deploys the {p.deploy_policy} '
            f'policy, saves to {self.policies_dir}'
        )

    def _republish_last_policy(self) -> None:
        """Resume: publish the run's last deployed policy again (none saved: nothing)."""
        try:
            last = self.training.last_deployed()
        except (FormatError, OSError) as error:
            raise configuration_error(self, 'resume', f'last policy: {error}') from None
        if last is None:
            self.get_logger().info(f'resume: no policy saved in {self.policies_dir} yet')
            return
        path, policy = last
        self.policy_publisher.publish(String(data=json.dumps(policy.to_dict(), allow_nan=False)))
        source = policy.metadata.get('source_model_version')
        self.diagnostics.set('policy_version', self.training.policy_version)
        self.diagnostics.set('source_model_version', source)
        self.get_logger().info(
            f'resume: policy {self.training.policy_version} ({path.name}, trained on model '
            f'{source}) published again'
        )

    def _on_model(self, message: String) -> None:
        try:
            job = read_model_card(message.data, self.task)
        except MissingRewardModelError as error:
            self.diagnostics.reject('missing_reward_model', str(error), severity='error')
            return
        except FormatError as error:
            self.diagnostics.reject('malformed_model', str(error))
            return
        self.diagnostics.increment('models_received')
        skipped = self.training.offer(job)
        if skipped is not None:
            self.diagnostics.increment('models_skipped')
            self.get_logger().info(
                f'model {skipped.model_version} skipped: model {job.model_version} is newer'
            )
        self.get_logger().info(f'model {job.model_version} received')

    def _publish_finished(self) -> None:
        """Executor side: publish finished policies and copy progress into diagnostics."""
        progress = self.training.progress
        if progress is not None:
            self.diagnostics.set('training', progress.get('training', False))
            self.diagnostics.set('training_model_version', progress.get('model_version'))
            if 'updates' in progress:
                self.diagnostics.set('updates', progress['updates'])
                self.diagnostics.set('surrogate_return', progress.get('mean_episode_return'))
        for result in self.training.finished():
            if 'error' in result:
                self.diagnostics.increment('training_failures')
                self.diagnostics.warnings['training'] = f'last training failed: {result["error"]}'
                self.get_logger().error(
                    f'training on model {result["model_version"]} failed: {result["error"]}\n'
                    f'{result["traceback"]}'
                )
                continue
            self.diagnostics.warnings.pop('training', None)
            metadata = result['metadata']
            self.policy_publisher.publish(
                String(data=json.dumps(result['document'], allow_nan=False))
            )
            self.diagnostics.increment('policies_published')
            self.diagnostics.set('policy_version', metadata['policy_version'])
            self.diagnostics.set('source_model_version', metadata['source_model_version'])
            self.diagnostics.set('surrogate_return', metadata.get('surrogate_return'))
            self.diagnostics.set('last_train_time_s', round(metadata['train_time_s'], 3))
            self.diagnostics.set(
                'sparse_policy_coefficients', metadata.get('sparse_policy_coefficients', 'none')
            )
            self.get_logger().info(policy_summary(metadata, self.parameters.deploy_policy))

    def on_shutdown(self) -> None:
        self.training.stop()

    def destroy_node(self) -> None:
        self.training.stop()
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    return run_node(PolicyTrainer, args)


if __name__ == '__main__':
    sys.exit(main())
