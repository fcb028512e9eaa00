"""Fixtures for tests over real DDS: a private domain, an rclpy context, node processes."""

import pytest
from ros_testing import DomainLease, NodeProcess, ros_environment


@pytest.fixture
def ros_domain(monkeypatch):
    """A ROS_DOMAIN_ID no other test on this machine is using, discovery on localhost."""
    lease = DomainLease()
    for key, value in ros_environment(lease.domain_id).items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv('ROS_LOCALHOST_ONLY', raising=False)
    yield lease.domain_id
    lease.release()


@pytest.fixture
def ros_context(ros_domain):
    """An initialised rclpy context in this test process, joined to the test's domain."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    context = rclpy.Context()
    rclpy.init(context=context, domain_id=ros_domain)
    executor = SingleThreadedExecutor(context=context)
    yield context, executor
    executor.shutdown()
    context.try_shutdown()


@pytest.fixture
def start_process(ros_domain, tmp_path):
    """Start programs in separate processes on the test's domain; all stopped at teardown."""
    started: list[NodeProcess] = []

    def start(args: list[str], name: str | None = None) -> NodeProcess:
        log_path = tmp_path / f'{name or len(started)}.log'
        process = NodeProcess(args, ros_environment(ros_domain), log_path)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()
