"""The hold/reset protocol of a plant the package does not own (a ros2_control robot, Gazebo).

:class:`EpisodeControl` decides which steps count (none while the run supervisor holds the
robot or a reset runs), when the controller must be deactivated (the safe command) and
activated again, when a simulator is paused and played, and when a reset provider must run
(after every episode, and on the supervisor's request; the providers themselves are
:mod:`sindyrl_ros.core.resets`). :class:`Answer` gathers the answers of the calls one
request makes, :class:`PendingCalls` holds calls back until their service is there, and
:class:`Settle` tells when the robot has come to rest. The episodes node
(``nodes/episodes.py``) feeds these and makes the calls they return; the steps and episodes
themselves are :mod:`sindyrl_ros.core.episodes`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = [
    'ACTIVATE',
    'ANSWER_RESETS',
    'Answer',
    'DEACTIVATE',
    'END_EPISODE',
    'EpisodeControl',
    'HELD',
    'PAUSE_SIMULATION',
    'PLAY_SIMULATION',
    'PendingCalls',
    'RESETTING',
    'RESTART_STEPS',
    'RUNNING',
    'RUN_RESET',
    'Settle',
]


RUNNING, HELD, RESETTING = 'running', 'held', 'resetting'
# What EpisodeControl asks its node to do, in order.
DEACTIVATE = 'deactivate'  # the controller sends its safe command from now on
ACTIVATE = 'activate'  # the controller drives the plant again
RESTART_STEPS = 'restart_steps'  # no step spans what comes (AnsweredSteps.restart)
END_EPISODE = 'end_episode'  # close the episode in progress as 'reset'
RUN_RESET = 'run_reset'  # start the reset provider; report with reset_finished()
ANSWER_RESETS = 'answer_resets'  # answer the reset requests waiting for this reset
PAUSE_SIMULATION = 'pause_simulation'  # (a simulator) stop simulating: the plant is held
PLAY_SIMULATION = 'play_simulation'  # (a simulator) simulate again, before ACTIVATE


class EpisodeControl:
    """The hold/reset protocol of a plant the package does not own (module docstring).

    States: ``held`` (the run supervisor holds the plant: the controller sends its safe
    command and no step counts), ``running`` (steps count) and ``resetting`` (a reset
    provider runs, the controller holds the safe command, no step counts). Each method
    returns the list of things the node must do, in order (the constants above).

    A simulator (``simulation``) is really paused while the run supervisor holds the
    plant, not only commanded the safe command: ``PAUSE_SIMULATION`` follows a
    ``DEACTIVATE`` that holds it, and a reset that ends held, while ``PLAY_SIMULATION``
    comes before every ``ACTIVATE``. During a reset the simulator plays on (its reset
    service resets it).

    Parameters
    ----------
    start_paused : bool
        Start held: nothing moves before the run supervisor resumes the plant.
    reset_after_episode : bool
        Reset the plant through the provider after every episode (False for a plant that
        resets itself without help).
    simulation : bool
        The plant is a simulator that can be paused and played.
    """

    def __init__(
        self, start_paused: bool = True, reset_after_episode: bool = True, simulation: bool = False
    ) -> None:
        self.paused = bool(start_paused)
        self.reset_after_episode = bool(reset_after_episode)
        self.simulation = bool(simulation)
        self.state = HELD if self.paused else RUNNING
        self.waiting_resets = 0  # reset requests answered when the running reset ends
        self.resets = 0
        self.simulation_playing: bool | None = None  # what the simulator was last asked

    def _simulated(self, actions: list[str]) -> list[str]:
        """``actions`` with the simulator's pause and play where a simulator needs them."""
        if not self.simulation:
            return actions
        done = []
        for action in actions:
            if action == ACTIVATE:
                done.append(PLAY_SIMULATION)
                self.simulation_playing = True
            done.append(action)
            if action == DEACTIVATE and self.paused:
                done.append(PAUSE_SIMULATION)
                self.simulation_playing = False
        return done

    @property
    def counting(self) -> bool:
        """Whether the plant's steps count now."""
        return self.state == RUNNING

    def start(self) -> list[str]:
        """What to do at start-up."""
        return self._simulated([DEACTIVATE] if self.state == HELD else [ACTIVATE])

    def pause(self, hold: bool) -> list[str]:
        """The run supervisor holds (True) or resumes (False) the plant."""
        self.paused = bool(hold)
        if self.state == RESETTING:
            return []  # reset_finished() decides
        if hold and self.state == RUNNING:
            self.state = HELD
            return self._simulated([DEACTIVATE, RESTART_STEPS])
        if not hold and self.state == HELD:
            self.state = RUNNING
            return self._simulated([RESTART_STEPS, ACTIVATE])
        return []

    def request_reset(self) -> list[str]:
        """The run supervisor asks for a reset; answer it after ``ANSWER_RESETS``."""
        self.waiting_resets += 1
        if self.state == RESETTING:
            return []  # the reset already running answers it
        return self._reset()

    def episode_ended(self) -> list[str]:
        """The ledger closed an episode (length or termination) while running."""
        if not self.reset_after_episode or self.state != RUNNING:
            return []
        return self._reset()

    def _reset(self) -> list[str]:
        was_running = self.state == RUNNING
        self.state = RESETTING
        self.resets += 1
        actions = [END_EPISODE, RESTART_STEPS, RUN_RESET]
        return self._simulated([DEACTIVATE, *actions] if was_running else actions)

    def reset_finished(self, ok: bool = True) -> list[str]:
        """The reset provider is done, or failed (``ok`` False: the plant is held, so nothing
        moves unsupervised, and the node answers the requests with the failure); the plant
        goes back to held or running."""
        if not ok:
            self.paused = True
        if self.state != RESETTING:
            return []
        actions = [ANSWER_RESETS] if self.waiting_resets else []
        self.waiting_resets = 0
        if self.paused:
            self.state = HELD
            if self.simulation_playing:
                # Held during the reset (the supervisor's pause came meanwhile, or the reset
                # failed): the controller already holds the safe command, the simulator
                # must stop too.
                self.simulation_playing = False
                actions.append(PAUSE_SIMULATION)
            return actions
        self.state = RUNNING
        return self._simulated([*actions, RESTART_STEPS, ACTIVATE])


class Answer:
    """The answer to one of the run supervisor's requests (``/plant/pause``,
    ``/plant/reset``), gathered from what the node does for it.

    Each call made for it is expected (:meth:`expect`) and its outcome added (:meth:`add`):
    the answer is ok only if every outcome is, and complete once none is outstanding. A
    reset request is answered whole, with the reset's outcome (:meth:`complete`). Past
    ``deadline`` it completes as failed, with 'no outcome in time' (:meth:`expire`).

    Parameters
    ----------
    deadline : float
        Monotonic seconds.
    on_complete : callable
        Called once, when the answer is complete.
    ok : bool
        The answer while no outcome says otherwise.
    """

    def __init__(self, deadline: float, on_complete: Callable[[], None], ok: bool = True) -> None:
        self.deadline = float(deadline)
        self.ok = bool(ok)
        self.messages: list[str] = []
        self.outstanding = 0
        self.done = False
        self._on_complete = on_complete

    @property
    def message(self) -> str:
        return '; '.join(self.messages)

    def expect(self) -> None:
        """One more call is made for this request."""
        self.outstanding += 1

    def add(self, ok: bool, message: str) -> None:
        """The outcome of one call made for it."""
        self.ok = self.ok and bool(ok)
        self.messages.append(str(message))
        self.outstanding -= 1
        if self.outstanding == 0:
            self.complete()

    def complete(self, ok: bool | None = None, message: str = '') -> None:
        """Complete now; with ``ok`` (and ``message``) as the whole answer, when given."""
        if ok is not None:
            self.ok, self.messages = bool(ok), [str(message)]
        if not self.done:
            self.done = True
            self._on_complete()

    def expire(self, now: float) -> bool:
        """Fail it when ``now`` is past the deadline; returns whether it is complete."""
        if not self.done and now > self.deadline:
            self.ok = False
            self.messages.append('no outcome in time')
            self.complete()
        return self.done


class PendingCalls:
    """Calls waiting for their service to be there, at most one per service.

    A newer call to a service replaces one not sent yet (a hold, then a resume, before
    the controller is up sends only the resume), and the answers waiting for the replaced
    call wait for the newer one. Each answer given expects one more outcome
    (:meth:`Answer.expect`).
    """

    def __init__(self) -> None:
        self._calls: dict[Any, tuple[Any, list[Answer]]] = {}

    @property
    def services(self) -> list:
        """The services with a call waiting, oldest call first."""
        return list(self._calls)

    def add(self, service: Any, call: Any, answers: Sequence[Answer] = ()) -> None:
        """Send ``call`` to ``service`` once it is there; ``answers`` wait for its outcome."""
        for answer in answers:
            answer.expect()
        replaced = self._calls.pop(service, None)
        self._calls[service] = (call, (replaced[1] if replaced else []) + list(answers))

    def take(self, service: Any) -> tuple[Any, list[Answer]]:
        """The call to send to ``service`` now, and the answers waiting for its outcome."""
        return self._calls.pop(service)


class Settle:
    """Whether a plant has settled: the named features stayed below a tolerance for long.

    The ``settle`` reset provider holds the safe command until every feature in
    ``indices`` (e.g. a pendulum's ``theta_dot``) has stayed within ``±tolerance`` for
    ``duration`` seconds: a pendulum that hangs still, an arm that stopped.

    Parameters
    ----------
    indices : sequence of int
        Observation indices of the velocities to watch.
    tolerance : float
        Largest absolute value that counts as still.
    duration : float
        Seconds the features must stay still.
    features : sequence of str, optional
        Their names, for people (:meth:`watching` gives them).
    """

    def __init__(self, indices, tolerance: float, duration: float, features=None) -> None:
        self.indices = np.asarray(list(indices), dtype=np.intp)
        if self.indices.size == 0:
            raise ValueError('settle needs at least one feature to watch')
        if not tolerance > 0 or not duration >= 0:
            raise ValueError('settle needs a positive tolerance and a duration >= 0')
        self.tolerance = float(tolerance)
        self.duration = float(duration)
        self.features = [str(name) for name in features] if features is not None else None
        self._still_since: float | None = None

    @classmethod
    def watching(cls, features, observation_names, tolerance: float, duration: float) -> Settle:
        """Watch the observations named ``features`` (out of ``observation_names``).

        Raises
        ------
        ValueError
            No feature named, or one that is no observation (the message lists them).
        """
        names = list(observation_names)
        unknown = [name for name in features if name not in names]
        if not features or unknown:
            raise ValueError(
                f'name the observations to watch, out of {names}'
                + (f' ({unknown} are not observations)' if unknown else '')
            )
        indices = [names.index(name) for name in features]
        return cls(indices, tolerance, duration, features=features)

    def restart(self) -> None:
        """Start watching anew (a new reset)."""
        self._still_since = None

    def update(self, now: float, observation: np.ndarray) -> bool:
        """Feed the latest observation (shape (n,)); True once the plant has settled."""
        values = np.asarray(observation, dtype=np.float64)[self.indices]
        if not (np.all(np.isfinite(values)) and np.all(np.abs(values) <= self.tolerance)):
            self._still_since = None
            return False
        if self._still_since is None:
            self._still_since = float(now)
        return now - self._still_since >= self.duration
