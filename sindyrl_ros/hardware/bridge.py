"""The serial bridge's rules, without ROS: a rig as a robot and, for training, as a plant.

:class:`RigBridge` is what ``nodes/serial_bridge.py`` does with a rig behind a
:class:`~sindyrl_ros.hardware.link.SerialLink`; the node only translates ROS messages,
services and timers into calls of it.

* Commands are checked (length, finite: refused and counted otherwise), clipped into the
  limits and written as COMMAND frames with increasing sequence numbers (COMMAND and RESET
  share one counter: the rig echoes both). The values sent under each sequence are kept
  (:meth:`RigBridge.applied`), so the command the rig echoes as applied at a STATE is
  known, with the stamp of the observation it answered.
* Reset (``/plant/reset``, ``reset_on_connect``, and with ``reset_each_episode`` after
  every episode): the episode ends and RESET is sent, again every ``reset_retry`` while
  the rig shows no sign of it; the rig answers with ``RESETTING`` STATEs (a homing routine)
  and then its ``EPISODE_START`` STATE, both echoing the RESET's sequence. The reset is
  done at that STATE, or at the first ordinary STATE after an acknowledged one (the
  ``EPISODE_START`` frame was lost: ``episode_starts_missed``); it fails after
  ``reset_timeout``. A reset the rig did by itself (an operator's button) ends the episode
  too. While the rig resets nothing is published and controller commands are dropped.
* Pause (``/plant/pause``): a rig cannot stop time, so the bridge sends the zero command
  itself at every STATE, drops the controller's commands and publishes no joint state (so
  nobody records transitions the controller did not drive); paused steps are no episode
  steps. ``start_paused`` starts held.
* Steps: a step is two consecutive published STATEs, its action the command the rig echoes
  as applied; the accounting is :class:`~sindyrl_ros.core.episodes.EpisodeLedger`. A gap
  of more than 1.5 control periods in device time is STATEs lost on the way: the rig
  stepped all the same (``missed_states``). ``stale_command_steps`` counts steps the rig
  took with a command that did not answer the state they started from: the answer came
  later than the rig's next sample (the real-time contract was missed; a warning when more
  than a tenth of the last 200 steps did). ``answer_latency_ms`` /
  ``answer_latency_max_ms`` (last, and worst of the last 200) are the times from
  publishing a joint state to receiving the command that answers it.
* A pause, reset, reconnection or rig restart breaks the chain of states: no step spans
  it, and commands that answer a state from before it are dropped (``stale_commands``):
  they must not move the rig in the new episode.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
import math
import threading
import time
from types import SimpleNamespace
from typing import Any

import numpy as np

from sindyrl_ros.core.episodes import EpisodeLedger
from sindyrl_ros.core.simulated_plant import checked_command
from sindyrl_ros.hardware.link import Logger, Report, SerialLink
from sindyrl_ros.hardware.ports import open_rig_port
from sindyrl_ros.hardware.protocol import Command, CommandMode, Reset, ResetFlag, State, StateFlag
from sindyrl_ros.params import ParameterError
from sindyrl_ros.params.serial_bridge import BRIDGE_PARAMETERS

__all__ = [
    'BRIDGE_COUNTERS',
    'MODES',
    'ResetRequest',
    'RigBridge',
    'bridge_settings',
    'command_limits',
    'within_task',
]

MODES = {
    'effort': CommandMode.EFFORT,
    'velocity': CommandMode.VELOCITY,
    'position': CommandMode.POSITION,
}
BRIDGE_COUNTERS = (
    'states_published',
    'states_warmup',
    'states_paused',
    'states_resetting',
    'commands_sent',
    'commands_not_sent',
    'clipped_commands',
    'commands_while_paused',
    'commands_while_resetting',
    'stale_commands',
    'pauses',
    'resets',
    'resets_failed',
    'reset_resends',
    'episode_starts_missed',
    'steps',
    'episodes',
    'missed_states',
    'stale_command_steps',
    'unknown_applied_commands',
    'missing_rewards',
)
# Commands remembered by sequence number, to know what the rig applied at each STATE.
SENT_COMMANDS = 256
# Steps over which the share of stale-command steps is judged; answer latencies kept.
REAL_TIME_WINDOW = 200
# Joint states whose publishing time is kept, for the answer latency.
_PUBLISHED = 64


def bridge_settings(**values: Any) -> SimpleNamespace:
    """Settings for a bridge without ROS: the node's parameter defaults, with ``values``."""
    settings = {spec.name: spec.default for spec in BRIDGE_PARAMETERS}
    unknown = set(values) - set(settings)
    if unknown:
        raise TypeError(f'not a serial bridge parameter: {sorted(unknown)}')
    return SimpleNamespace(**{**settings, **values})


def command_limits(
    command_low: Sequence[float],
    command_high: Sequence[float],
    action_low: Sequence[float],
    action_high: Sequence[float],
    action_names: Sequence[str] = (),
) -> tuple[np.ndarray, np.ndarray]:
    """The command limits: ``command_low/high``, else the action limits.

    Raises
    ------
    ParameterError
        Naming the parameter to fix.
    """
    low = command_low or action_low
    high = command_high or action_high
    if not low or not high:
        raise ParameterError(
            'command_low', 'give command_low/command_high or action_low/action_high'
        )
    if len(low) != len(high):
        raise ParameterError('command_high', f'{len(high)} values for {len(low)} lower limits')
    if action_names and len(low) != len(action_names):
        raise ParameterError('command_low', f'{len(low)} limits for actions {list(action_names)}')
    low, high = np.array(low, dtype=np.float64), np.array(high, dtype=np.float64)
    if np.any(low >= high):
        raise ParameterError('command_low', 'must be below command_high')
    return low, high


def within_task(low: np.ndarray, high: np.ndarray, task) -> tuple[np.ndarray, np.ndarray]:
    """Command limits narrowed to the task's action limits (a ``TaskSpec``).

    The rig never gets more than the task allows, whatever the command limits say.

    Raises
    ------
    ParameterError
        When the channel counts differ or no command is within both.
    """
    if task.action_dim != low.size:
        raise ParameterError(
            'command_low',
            f'{low.size} channels for task {task.name} actions {list(task.action_names)}',
        )
    low = np.maximum(low, task.action_low)
    high = np.minimum(high, task.action_high)
    if np.any(low >= high):
        raise ParameterError('command_low', f'no command is within the task limits of {task.name}')
    return low, high


class ResetRequest:
    """A RESET in flight: the sequence it was sent with and how the rig answered."""

    def __init__(self, sequence: int, flags: int, now: float) -> None:
        self.sequence = sequence
        self.flags = flags
        self.started = now
        self.sent_at = now
        self.acknowledged = False  # a RESETTING or EPISODE_START STATE echoed the sequence
        self.done = threading.Event()
        self.ok = False
        self.message = ''


class RigBridge:
    """A rig behind a serial link as a robot and a plant (module docstring).

    Parameters
    ----------
    settings
        The serial bridge's parameters as attributes (:func:`bridge_settings`, or the node's
        parameter values, which are read when used, so that run-time changes apply).
    joint_names : sequence of str
    command_low, command_high : ndarray, shape (m,)
        From :func:`command_limits`.
    ledger : EpisodeLedger or None
        Episode accounting; None for a bare driver (no task).
    period_us : float
        The rig's control period, µs (a longer gap between STATEs lost some).
    report : Report
    log : Logger
    publish_state : callable (state, stamp_ns)
        Publishes a STATE as the robot's joint state (from the reader thread).
    clock_ns : callable () -> int
        Host time now, ns.
    commands_topic : str
        Where commands come from, for messages.
    """

    def __init__(
        self,
        settings,
        joint_names: Sequence[str],
        command_low: np.ndarray,
        command_high: np.ndarray,
        ledger: EpisodeLedger | None,
        period_us: float,
        report: Report,
        log: Logger,
        publish_state: Callable[[State, int], None],
        clock_ns: Callable[[], int],
        commands_topic: str = 'commands',
        open_port: Callable[[str, int], Any] = open_rig_port,
    ) -> None:
        self.settings = settings
        self.joint_names = list(joint_names)
        self.command_low, self.command_high = command_low, command_high
        self.mode = MODES[settings.command_mode]
        self.ledger = ledger
        self.period_us = period_us
        self.report = report
        self.log = log
        self.commands_topic = commands_topic
        self._publish_state = publish_state
        self.zero_command = np.clip(np.zeros(command_low.size), command_low, command_high)
        for key in BRIDGE_COUNTERS:
            report.counters[key] = 0
        for reason in ('command_length', 'command_nonfinite'):
            report.counters[f'rejected.{reason}'] = 0
        for key, value in (
            ('paused', settings.start_paused),
            ('resetting', False),
            ('episode', 1),
            ('episode_step', 0),
            ('last_return', 'none'),
            ('answer_latency_ms', 'unknown'),
            ('answer_latency_max_ms', 'unknown'),
        ):
            report.set(key, value)
        # Plant state, shared by the reader thread and the executor: under _lock.
        self._lock = threading.RLock()
        self.paused = bool(settings.start_paused)
        self._paused_at = time.monotonic()
        self.pending_reset: ResetRequest | None = None
        self._command_sequence = 0  # COMMAND and RESET share it (the rig echoes both)
        # Sequence -> (values applied, stamp of the observation answered or None).
        self._sent: OrderedDict[int, tuple[np.ndarray, int | None]] = OrderedDict()
        self._sent_lock = threading.Lock()
        self._previous: tuple[int, int] | None = None  # last published (stamp ns, device µs)
        self._restart = True  # the next published state follows a pause, reset or reconnect
        self._command_floor_ns: float = math.inf  # older answers are stale
        self._last_stamp_ns = -1
        self._real_time_window = (0, 0)  # (steps, stale_command_steps) at its start
        # Stamp -> monotonic time each joint state was published, and the recent times from
        # there to the command answering it (the host's share of the real-time contract).
        self._published_at: OrderedDict[int, float] = OrderedDict()
        self._answer_latencies: deque[float] = deque(maxlen=REAL_TIME_WINDOW)
        self.link = SerialLink(
            settings, len(self.joint_names), self, report, log, clock_ns, open_port
        )

    def start(self) -> None:
        """Start the reader thread (it opens the port)."""
        self.link.start()

    def stop(self) -> None:
        self.link.stop()

    def shutdown(self) -> None:
        """Leave the rig at rest: the zero command (clipped into the limits)."""
        if self.link.is_open:
            self._send_command(self.zero_command, None)

    # ------------------------------------------------------------------ the link's events

    def on_open(self) -> None:
        with self._lock:
            self._restart_chain()
            if self.settings.reset_on_connect:
                self.start_reset('port opened')

    def on_close(self) -> None:
        with self._lock:
            self._restart_chain()

    def on_restart(self) -> None:
        with self._lock:
            self._restart_chain()

    def on_poll(self) -> None:
        self.watch_reset()

    def on_state(self, state: State, stamp_ns: int, settled: bool) -> None:
        """A valid STATE: move a reset along, then hold, publish or skip it."""
        in_episode = self._follow_reset(state)  # every valid STATE, warm-up ones included
        if not settled:
            self.report.increment('states_warmup')
            with self._lock:
                self._previous = None
            return
        if stamp_ns <= self._last_stamp_ns:
            self.report.reject(
                'state_out_of_order', f'mapped stamp {stamp_ns} ns not after the last'
            )
            return
        self._last_stamp_ns = stamp_ns
        with self._lock:
            if not in_episode:
                self.report.increment('states_resetting')
                self._previous = None
                return
            if self.paused:
                # A rig cannot stop time: it gets the zero command and nobody sees it move.
                self.report.increment('states_paused')
                self._previous = None
                self._send_command(self.zero_command, None)
                return
            complete = self._count_step(state, stamp_ns)
            self._publish_state(state, stamp_ns)
            self.report.increment('states_published')
            self._published_at[stamp_ns] = time.monotonic()
            if len(self._published_at) > _PUBLISHED:
                self._published_at.popitem(last=False)
            if complete and self.settings.reset_each_episode:
                self.start_reset('episode end')

    # ------------------------------------------------------------------ steps

    def _restart_chain(self) -> None:
        """After a pause, reset or reconnection: no step spans it, older answers are stale."""
        self._restart = True
        self._previous = None
        self._command_floor_ns = math.inf

    def _count_step(self, state: State, stamp_ns: int) -> bool:
        """Count the step that ends at this published state; True when it ends an episode."""
        if self._restart:
            self._restart = False
            self._command_floor_ns = stamp_ns
        previous, self._previous = self._previous, (stamp_ns, state.device_time_us)
        if previous is None or self.ledger is None:
            return False
        elapsed_us = state.device_time_us - previous[1]
        if self.period_us > 0 and elapsed_us > 1.5 * self.period_us:
            # STATEs lost on the way: the rig stepped all the same.
            missed = max(0, round(elapsed_us / self.period_us) - 1)
            self.ledger.add_missed(missed)
            self.report.increment('missed_states', missed)
            return False
        action, answered = self.applied(state.command_sequence)
        if answered != previous[0]:
            self.report.increment('stale_command_steps')
        self.report.increment('steps')
        complete = self.ledger.add_step(previous[0], stamp_ns, action, answered, time.monotonic())
        self.report.set('episode', self.ledger.episode_number)
        self.report.set('episode_step', self.ledger.episode_steps)
        return complete

    def applied(self, sequence: int) -> tuple[np.ndarray, int | None]:
        """The command the rig applied (its echo) and the observation stamp it answered."""
        if sequence == 0:
            return self.zero_command, None  # the rig's own safe command
        with self._sent_lock:
            sent = self._sent.get(sequence)
        if sent is None:
            self.report.increment('unknown_applied_commands')
            return self.zero_command, None
        return sent

    # ------------------------------------------------------------------ resets

    def _follow_reset(self, state: State) -> bool:
        """Advance the reset in flight with this STATE; False while it is not an episode's."""
        resetting = bool(state.flags & StateFlag.RESETTING)
        start = bool(state.flags & StateFlag.EPISODE_START)
        with self._lock:
            request = self.pending_reset
            if request is None:
                if resetting or start:
                    # Reset by the rig itself (an operator's button) or late for our timeout.
                    if self.ledger is not None:
                        self.ledger.end_episode('reset')
                    self._restart_chain()
                return not resetting
            if state.command_sequence == request.sequence and (resetting or start):
                request.acknowledged = True
                if start:
                    self._finish_reset(request, True, 'the rig is at its start state')
                return start
            if request.acknowledged and not (resetting or start):
                # Its EPISODE_START frame was lost: the rig runs the new episode already.
                self.report.increment('episode_starts_missed')
                self._finish_reset(request, True, 'the rig runs again (EPISODE_START lost)')
                return True
            return False  # a state from before the rig took up this RESET

    def start_reset(self, cause: str) -> ResetRequest:
        """End the episode and send RESET (or join the reset already in flight)."""
        with self._lock:
            if self.ledger is not None:
                self.ledger.end_episode('reset')  # nothing when it just ended
            self._restart_chain()
            if self.pending_reset is not None:
                return self.pending_reset
            flags = ResetFlag.RANDOM_START if self.settings.reset_start == 'random' else 0
            request = ResetRequest(self._next_sequence(), int(flags), time.monotonic())
            self.pending_reset = request
            self.link.write(Reset(request.sequence, request.flags))
            self.report.set('resetting', True)
        self.log.info(f'reset {request.sequence} sent ({cause})')
        return request

    def _finish_reset(self, request: ResetRequest, ok: bool, message: str) -> None:
        with self._lock:
            request.ok, request.message = ok, message
            if self.pending_reset is request:
                self.pending_reset = None
            self._restart_chain()
            self.report.increment('resets' if ok else 'resets_failed')
            self.report.set('resetting', False)
            if ok:
                self.report.errors.pop('reset', None)
            else:
                self.report.errors['reset'] = f'reset {request.sequence} failed: {message}'
        request.done.set()

    def watch_reset(self, now: float | None = None) -> None:
        """Send a RESET again while unanswered; give up after reset_timeout."""
        s = self.settings
        with self._lock:
            request = self.pending_reset
            if request is None:
                return
            now = time.monotonic() if now is None else now
            if now - request.started > s.reset_timeout:
                self._finish_reset(
                    request, False, f'no EPISODE_START from the rig within {s.reset_timeout} s'
                )
                self.log.error(f'reset {request.sequence} failed: {request.message}')
                return
            if not request.acknowledged and now - request.sent_at > s.reset_retry:
                request.sent_at = now
                if self.link.write(Reset(request.sequence, request.flags)):
                    self.report.increment('reset_resends')

    def reset_and_wait(self, cause: str) -> tuple[bool, str]:
        """End the episode, reset the rig, wait until it is at its start state.

        Returns ``(success, message)``. Blocks the caller (at most ``reset_timeout``); the
        reader thread goes on reading frames and sending heartbeats meanwhile.
        """
        blocked = time.monotonic()
        reset = self.start_reset(cause)
        finished = reset.done.wait(self.settings.reset_timeout + 1.0)
        success = finished and reset.ok
        message = reset.message if finished else 'no answer from the reader thread'
        if success and self.paused:
            message += ' (held until /plant/pause false)'
        if self.ledger is not None:
            # Observations queued meanwhile are still to be read: not missing.
            with self._lock:
                self.ledger.extend_wait(time.monotonic() - blocked)
        return success, message

    def pause(self, hold: bool) -> str:
        """Hold (True) or resume (False) the rig; says what was done."""
        with self._lock:
            if hold == self.paused:
                return 'already paused' if self.paused else 'not paused'
            now = time.monotonic()
            self.paused = bool(hold)
            real_steps = self.ledger.real_steps if self.ledger is not None else 0
            if self.paused:
                self._paused_at = now
                self._restart_chain()
                self.report.increment('pauses')
                if self.pending_reset is None:
                    self._send_command(self.zero_command, None)
                message = f'paused after {real_steps} real steps'
            else:
                message = f'resumed after {now - self._paused_at:.3f} s'
            self.report.set('paused', self.paused)
        self.log.info(message)
        return message

    # ------------------------------------------------------------------ commands

    def command(self, values: Sequence[float], answered: int | None) -> None:
        """A controller's command; ``answered``: the observation stamp it answers, if known."""
        clipped, reason, detail = checked_command(values, self.command_low, self.command_high)
        if clipped is None:
            self.report.reject(reason, f'{self.commands_topic}: {detail}')
            return
        if reason == 'clipped':
            self.report.increment('clipped_commands')
        with self._lock:
            if self.paused:
                self.report.increment('commands_while_paused')
            elif self.pending_reset is not None:
                self.report.increment('commands_while_resetting')
            elif answered is not None and answered < self._command_floor_ns:
                self.report.increment('stale_commands')
            else:
                self._send_command(clipped, answered)
                published = self._published_at.get(answered) if answered is not None else None
                if published is not None:
                    self._answer_latencies.append(time.monotonic() - published)

    def _next_sequence(self) -> int:
        with self._lock:
            self._command_sequence = (self._command_sequence % 0xFFFF_FFFF) + 1
            return self._command_sequence

    def _send_command(self, values: np.ndarray, answered: int | None) -> None:
        """Write a COMMAND; ``answered`` is the observation stamp it answers (None: ours)."""
        sequence = self._next_sequence()
        with self._sent_lock:
            self._sent[sequence] = (values, answered)
            while len(self._sent) > SENT_COMMANDS:
                self._sent.popitem(last=False)
        if self.link.write(Command(sequence, tuple(values), self.mode)):
            self.report.increment('commands_sent')
        else:
            self.report.increment('commands_not_sent')

    # ------------------------------------------------------------------ episodes (executor)

    def add_observation(self, stamp_ns: int, observation: np.ndarray) -> None:
        with self._lock:
            self.ledger.add_observation(stamp_ns, observation)

    def add_action(self, stamp_ns: int, mode: str) -> None:
        with self._lock:
            self.ledger.add_action(stamp_ns, mode)

    def poll_ledger(self) -> tuple[list[tuple[int, float]], list[dict]]:
        """Rewards of newly scored steps and records of finished episodes (none without one)."""
        if self.ledger is None:
            return [], []
        with self._lock:
            rewards, records = self.ledger.poll(time.monotonic())
            self.report.counters['missing_rewards'] = self.ledger.missing_rewards
            self.report.set('real_steps', self.ledger.real_steps)
        return rewards, records

    # ------------------------------------------------------------------ watch (executor)

    def watch(self) -> None:
        """The real-time contract and the link, for /diagnostics."""
        self._watch_real_time()
        self.link.watch()

    def _watch_real_time(self) -> None:
        """Warn while more than a tenth of the recent steps ran with a stale command."""
        with self._lock:
            latencies = list(self._answer_latencies)
        if latencies:
            self.report.set('answer_latency_ms', f'{latencies[-1] * 1e3:.2f}')
            self.report.set('answer_latency_max_ms', f'{max(latencies) * 1e3:.2f}')
        counters = self.report.counters
        steps = counters['steps'] - self._real_time_window[0]
        if steps < REAL_TIME_WINDOW:
            return
        stale = counters['stale_command_steps'] - self._real_time_window[1]
        self._real_time_window = (counters['steps'], counters['stale_command_steps'])
        if stale > 0.1 * steps:
            self.report.warnings['real_time'] = (
                f'{stale} of the last {steps} steps applied a command that did not answer '
                'their state: answers come later than the rig samples'
            )
        else:
            self.report.warnings.pop('real_time', None)
