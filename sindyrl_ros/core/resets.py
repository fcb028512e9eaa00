"""Resets of a plant the package does not own: its provider, and one reset followed to its end.

A ros2_control robot or a Gazebo world has no ``reset()``: after every episode, and when
the run supervisor asks (``/plant/reset``), the episodes node resets it through the
provider its task file names (:class:`ResetProvider`) while the controller holds the safe
command (``core.episodes.EpisodeControl`` says when). :class:`ResetRun` follows one reset:
the provider's stage until it is done, fails or takes longer than its timeout, then the
hold after it. Nothing here knows about ROS: the node makes the calls and passes their
answers, the operator's word and the latest observation in.
"""

from __future__ import annotations

import math

import numpy as np

from sindyrl_ros.core.episode_control import Settle

__all__ = ['RESET_PROVIDERS', 'ResetProvider', 'ResetRun']

RESET_PROVIDERS = ('service', 'settle', 'operator', 'simulation_interfaces', 'none')
# A reset's stages.
PROVIDER, HOLD = 'provider', 'hold'


class ResetProvider:
    """How a plant the package does not own is reset, after every episode and on request.

    Providers (``kind``), each bounded by ``timeout``:

    ``service``
        Calls the robot's own ``std_srvs/Trigger`` (``service``): its homing routine.
    ``settle``
        Holds the safe command until the ``settle`` features stay within
        ``±tolerance`` for ``duration`` seconds (a pendulum hanging still).
    ``operator``
        A person resets the robot; the run waits and says so until the operator says it
        is done (``sindyrl-ros train`` tells the node when Enter is pressed).
    ``simulation_interfaces``
        The ROS 2 standard simulator services (Gazebo's ros_gz_sim, Isaac Sim, O3DE),
        under ``simulation_services``: ``ResetSimulation`` to reset, ``SetSimulationState``
        to pause and play (see :class:`EpisodeControl`).
    ``none``
        The plant resets itself; only the safe command is held for ``hold`` seconds (0:
        not at all) at each reset, and episode ends come from the termination expression
        and the episode length.

    Every provider holds the safe command ``hold`` seconds more after it is done. After
    every episode the robot is reset the same way (not with ``none`` and no ``hold``), so
    each episode starts like a simulator's.

    Parameters
    ----------
    kind : str
        One of :data:`RESET_PROVIDERS`.
    timeout : float
        Seconds a reset may take before it fails (0: no limit).
    hold : float
        Seconds of the safe command after the provider is done.
    service : str
        ``service``: the robot's reset service.
    simulation_services : str
        ``simulation_interfaces``: the namespace of the simulator's services.
    settle : Settle, optional
        ``settle``: what to watch (:meth:`Settle.watching`).
    """

    def __init__(
        self,
        kind: str,
        timeout: float = 30.0,
        hold: float = 0.0,
        service: str = '/reset',
        simulation_services: str = '',
        settle: Settle | None = None,
    ) -> None:
        if kind not in RESET_PROVIDERS:
            raise ValueError(f'reset provider {kind!r} is none of {RESET_PROVIDERS}')
        if kind == 'settle' and settle is None:
            raise ValueError('the settle provider needs the features to watch')
        self.kind = kind
        self.timeout = float(timeout)
        self.hold = float(hold)
        self.service = service
        self.simulation_services = simulation_services
        self.settle = settle

    @property
    def calls_a_service(self) -> bool:
        """The provider is one service call (its answer ends it)."""
        return self.kind in ('service', 'simulation_interfaces')

    @property
    def simulation(self) -> bool:
        """The plant is a simulator the node pauses and plays."""
        return self.kind == 'simulation_interfaces'

    @property
    def reset_after_episode(self) -> bool:
        """Each episode's end resets the plant (all but a plant that resets itself without
        a hold)."""
        return self.kind != 'none' or self.hold > 0.0

    @property
    def answer_within(self) -> float:
        """Seconds a reset request waits for the reset's end before it fails."""
        return self.timeout + self.hold + 5.0 if self.timeout > 0 else math.inf

    @property
    def waiting_for(self) -> str:
        """What a reset waits for, for people."""
        if self.kind == 'settle':
            settle = self.settle
            return (
                f'{settle.features} to stay within ±{settle.tolerance:g} for {settle.duration:g} s'
            )
        return {
            'service': f'the reset service {self.service}',
            'operator': 'the operator (Enter, or std_msgs/Empty on /sindyrl/operator_ready)',
            'simulation_interfaces': f'{self.simulation_services}/reset_simulation',
            'none': 'the plant to reset itself',
        }[self.kind]

    def start(self, now: float) -> ResetRun:
        """A reset starts now."""
        return ResetRun(self, now)


class ResetRun:
    """One reset in progress: its provider until it is done, fails or times out, then
    ``hold`` seconds of the safe command.

    The owner feeds it what the provider needs: the answer of the provider's service
    (:attr:`needs_call`, :meth:`call_sent`, :meth:`answered`), the operator's word
    (:meth:`operator_ready`) and the latest observation (``settle``), and calls
    :meth:`advance` on every tick.

    Parameters
    ----------
    provider : ResetProvider
    started : float
        Monotonic seconds.
    """

    def __init__(self, provider: ResetProvider, started: float) -> None:
        self.provider = provider
        self.started = float(started)
        timeout = provider.timeout
        self.deadline = self.started + timeout if timeout > 0 else math.inf
        self.stage = PROVIDER  # provider, then hold
        self.hold_until = 0.0
        self.calling = False
        self._answer: tuple[bool, str] | None = None  # the provider's service's
        self._operator_ready = False
        if provider.settle is not None:
            provider.settle.restart()

    @property
    def needs_call(self) -> bool:
        """The provider's service must be called now (once)."""
        return self.stage == PROVIDER and self.provider.calls_a_service and not self.calling

    def call_sent(self) -> None:
        """The provider's service was called: its answer is awaited."""
        self.calling = True

    def answered(self, ok: bool, message: str) -> None:
        """The provider's service answered (``ok`` False: refused, or no answer)."""
        self._answer = (bool(ok), str(message))

    def operator_ready(self) -> bool:
        """The operator says the robot is reset; False when this reset waits for no one."""
        if self.provider.kind != 'operator':
            return False
        self._operator_ready = True
        return True

    def advance(
        self, now: float, observation: np.ndarray | None = None
    ) -> tuple[bool, str] | None:
        """``(ok, message)`` once the reset is over, None while it goes on.

        Parameters
        ----------
        now : float
            Monotonic seconds.
        observation : array_like, shape (n,), optional
            The latest observation (None: none yet), for ``settle``.
        """
        provider = self.provider
        if self.stage == PROVIDER:
            if now > self.deadline:
                return False, f'{provider.kind} reset took longer than {provider.timeout:g} s'
            done = self._provider_done(now, observation)
            if done is None or not done[0]:
                return done
            self.stage = HOLD
            self.hold_until = now + provider.hold
        if now >= self.hold_until:
            return True, f'{provider.kind} reset done in {now - self.started:.1f} s'
        return None

    def _provider_done(self, now: float, observation) -> tuple[bool, str] | None:
        kind = self.provider.kind
        if kind == 'none':
            return True, 'the plant resets itself'
        if kind == 'operator':
            return (True, 'operator ready') if self._operator_ready else None
        if kind == 'settle':
            if observation is not None and self.provider.settle.update(now, observation):
                return True, 'settled'
            return None
        return self._answer  # service, simulation_interfaces
