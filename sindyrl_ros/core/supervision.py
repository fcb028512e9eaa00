"""The run supervisor's state machine: the Dyna protocol carried out over service calls.

:class:`~sindyrl_ros.core.protocol.DynaProtocol` decides *what* comes next (explore, hold,
evaluate, finish); :class:`Supervision` carries each decision out over the plant's and the
controller's services, which answer later, and keeps what happens meanwhile apart:

- **Synchronous Dyna** (``hold_for_policy``, the default, as ``core.dyna.run_dyna`` runs
  it): the controller explores (random actions until a policy exists) for
  ``initial_steps`` real training steps, then, at the end of an episode (episodes stay
  whole), the plant is held (``/plant/pause`` true) while the model updater refits and the
  policy trainer trains, so that no real step is spent waiting. When a policy trained on a
  model newer than the current policy's source model arrives, it is evaluated and then
  explores (with the controller's exploration noise) for ``steps_per_iteration`` training
  steps, and the plant is held again; and so on. A hold also ends, and exploration goes on
  for another chunk, when the model updater's fit state says its fit of the new data was
  rejected or failed (``model_rejected``) or that no refit started and more transitions
  are needed for one (``no_refit``), or after ``hold_timeout``. Every mode switch happens
  while the plant is held (pause, set mode, reset, resume), so no episode mixes explore
  and evaluate steps. Holds and resumes are events (``hold`` / ``resume``, with their
  reason); the held wall time goes to the summary.
- **Free running** (``hold_for_policy`` false): the plant runs episodes and the controller
  explores while models and policies are learned; when a new policy arrives, the
  evaluation starts once the current episode ends.
- **Evaluation**: the controller switches to deterministic actions (set mode false), the
  plant is reset and runs ``eval_episodes`` episodes (``core.run_record.RunRecord`` keeps
  their returns); then the controller explores again. A policy that arrives during an
  evaluation restarts it: the controller swaps policies on receipt, so the episodes
  already run were partly the old policy's.
- **Calls in flight**: calls run one after the other, and a refused one ends the run
  (``service_refused: <what>``). From sending ``/plant/pause`` false to its answer the
  plant already runs: episodes that end meanwhile are handled once the state the resume
  leads to is set.
- The run ends at the threshold or when the budget is spent (checked at episode ends; when
  holding, the policy trained on the last chunk is awaited and evaluated first).

The owner (the run supervisor node) gives it four things to do: write an event, log a line
of progress, log an error, and make one service call (:class:`Call`), answering through
the callback it is given; and it is told when the run is over (``finished``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import time
from typing import NamedTuple

from sindyrl_ros.core import protocol as dyna
from sindyrl_ros.core.protocol import Decision, FitState, chunk_counted
from sindyrl_ros.core.run_record import EpisodeRecord, RunRecord

__all__ = [
    'EVALUATING',
    'EXPLORE',
    'FINISHED',
    'HOLDING',
    'PAUSE',
    'RESET',
    'SET_MODE',
    'STARTING',
    'SWITCHING',
    'WAIT_EPISODE_END',
    'Call',
    'Supervision',
]

STARTING, EXPLORE, WAIT_EPISODE_END, SWITCHING, HOLDING, EVALUATING, FINISHED = (
    'starting',
    'explore',
    'wait_episode_end',
    'switching',
    'holding',
    'evaluating',
    'finished',
)
# The services the supervisor calls.
SET_MODE = 'set_mode'  # the controller's mode: True explores, False evaluates
RESET = 'reset'  # the plant's reset
PAUSE = 'pause'  # the plant's hold: True holds, False runs

# The model updater's fit state settles a hold ("no refit started, more transitions
# needed" means none is coming) once it counts every exploration step of the chunk
# (core.protocol.chunk_counted), and at the latest this long into the hold: a plant whose
# transitions can be lost (best-effort joint states) never lets the count catch up.
FIT_STATE_SETTLE_MAX_S = 10.0


class Call(NamedTuple):
    """One service call: ``service`` (:data:`SET_MODE`, :data:`RESET`, :data:`PAUSE`) and
    its boolean request (unused for a reset)."""

    service: str
    value: bool = False

    @property
    def what(self) -> str:
        """What the call is, for people."""
        if self.service == SET_MODE:
            return 'explore mode' if self.value else 'evaluate mode'
        return 'plant reset' if self.service == RESET else 'plant pause'


Answered = Callable[[bool, str], None]


class Supervision:
    """The supervisor's states and transitions (module docstring).

    Parameters
    ----------
    record : RunRecord
        The run's record; its protocol takes the decisions.
    event : callable
        ``event(name, **fields)``: write an event of the progress log.
    progress : callable
        ``progress(text)``: log a line of progress (and show the counts).
    error : callable
        ``error(text)``: log an error.
    call : callable
        ``call(call, answered)``: make a :class:`Call`; ``answered(ok, detail)`` once the
        service answered (``ok`` False: refused or no response).
    finished : callable
        ``finished()``: the run is over (``record.stop_reason`` says why).
    hold_timeout : float
        Seconds a hold waits for a new policy (0: no limit).
    clock : callable
        Monotonic seconds.
    """

    def __init__(
        self,
        record: RunRecord,
        *,
        event: Callable[..., None],
        progress: Callable[[str], None],
        error: Callable[[str], None],
        call: Callable[[Call, Answered], None],
        finished: Callable[[], None],
        hold_timeout: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.record = record
        self.protocol = record.protocol
        self.settings = record.settings
        self.hold_timeout = float(hold_timeout)
        self._event, self._progress, self._error = event, progress, error
        self._make_call, self._finished, self._clock = call, finished, clock
        self.state = STARTING
        self.holds_first = record.holds_first  # a resumed run past its initial chunk
        self.hold_reason = ''
        self.plant_paused = False
        self.resuming = False  # a /plant/pause false is on its way
        self._to_evaluation = False  # from the switch to evaluate mode until its result
        self._restart_pending = False
        self._deferred: list[EpisodeRecord] = []

    # ------------------------------------------------------------------ inputs

    def start(self, pause_available: bool) -> None:
        """The services are there and the model updater records: the run begins."""
        self.state = SWITCHING
        calls = [Call(SET_MODE, True)]
        if self.holds_first:
            self._chain(calls, then=lambda: self._hold('resume'))
            return
        if self.settings.hold_for_policy or pause_available:
            # The first real step is this run's: a plant started paused (or left paused by
            # an earlier run) runs from here.
            calls.append(Call(PAUSE, False))
        self._chain(calls, then=self._explore_started)

    def episode(self, episode: EpisodeRecord) -> None:
        """An episode record came: count it, and take the protocol's step at its end."""
        self.record.count_episode(episode)
        deferred = self.state == SWITCHING and self.resuming and not episode.cut_by_reset
        self._event(
            'episode',
            episode=episode.episode,
            mode=episode.mode,
            end=episode.end,
            length=episode.length,
            episode_return=episode.episode_return,
            evaluation=self.state == EVALUATING and episode.is_evaluation,
            **({'deferred': True} if deferred else {}),
        )
        self._progress(
            f'episode {episode.episode} ({episode.mode or "?"}, {episode.end or "?"}) return '
            f'{episode.episode_return:.2f}'
        )
        if deferred:
            self._deferred.append(episode)
        elif not episode.cut_by_reset:
            self._episode_ended(episode)

    def model(self, model: dict) -> None:
        """An accepted model's card (``run_record.parse_model_card``)."""
        self.record.add_model(model)
        self._event('model', **model)
        self._progress(f'model {model["model_version"]} received')

    def policy(self, policy: dict) -> None:
        """A policy (``run_record.parse_policy``): evaluated when the protocol says so."""
        self.record.add_policy(policy)
        self._event('policy', **policy)
        self._progress(f'policy {policy["policy_version"]} received')
        if self.state == HOLDING:
            self.check_hold()
        elif self.state == EXPLORE and self.settings.eval_every_policy:
            self.state = WAIT_EPISODE_END  # evaluate once the current episode ends
        elif self._to_evaluation and policy != self.record.evaluating_policy:
            # The controller swaps policies on receipt: episodes already run were partly
            # the old policy's, so the evaluation starts over with the new one.
            if self.state == EVALUATING:
                self._restart_evaluation()
            else:
                self._restart_pending = True

    def fit_state(self, state: FitState) -> None:
        """The model updater's fit state: it may end a hold."""
        self.protocol.fit_state = state
        self.check_hold()

    def check_hold(self) -> None:
        """While holding: release on a new policy, the updater's word, or the timeout."""
        if self.state != HOLDING:
            return
        held = self._clock() - self.record.hold_started
        timeout = self.hold_timeout
        protocol = self.protocol
        counted = chunk_counted(
            protocol.fit_state,
            protocol.chunk_fit_state,
            self.record.real_steps - protocol.chunk_start,
        )
        reason = protocol.release_reason(
            settled=counted or held >= FIT_STATE_SETTLE_MAX_S,
            timed_out=bool(timeout) and held >= timeout,
        )
        if reason is not None:
            self._release(reason)

    def finish(self, reason: str) -> None:
        """End the run (once): the owner writes the summary and stops."""
        if self.state == FINISHED:
            return
        self.state = FINISHED
        self.record.stop_reason = reason
        self._finished()

    # ------------------------------------------------------------------ exploring

    def _episode_ended(self, episode: EpisodeRecord) -> None:
        """The protocol's step at the end of a whole episode (not one cut by a reset)."""
        if self.state == EVALUATING:
            if episode.is_evaluation and self.record.add_evaluation_return(episode.episode_return):
                self._evaluation_done()
        elif self.state in (EXPLORE, WAIT_EPISODE_END):
            decision = self.protocol.after_exploration_episode(
                self.record.real_steps, awaiting_evaluation=self.state == WAIT_EPISODE_END
            )
            self._act(decision)

    def _explore_started(self) -> None:
        self.state = EXPLORE
        self._event('mode', mode='explore')
        self._progress('exploring')
        if self.protocol.explore_started():
            self.state = WAIT_EPISODE_END  # evaluate the new policy once the episode ends

    def _act(self, decision: Decision) -> None:
        """Carry out a decision of the protocol (except EXPLORE, whose calls vary)."""
        if decision.action == dyna.EVALUATE:
            self._start_evaluation()
        elif decision.action == dyna.HOLD:
            self._hold(decision.reason)
        elif decision.action == dyna.FINISH:
            self.finish(decision.reason)
        elif decision.action != dyna.CONTINUE:
            raise ValueError(f'unexpected decision {decision}')

    # ------------------------------------------------------------------ holds

    def _release_policy(self, evaluation: bool) -> None:
        """Tell of the release of the newest policy (evaluated or sent exploring)."""
        self._event(
            'release',
            policy_version=self.protocol.released_policy,
            source_model_version=self.protocol.released_model,
            evaluation=evaluation,
        )

    def _hold(self, reason: str) -> None:
        """Pause the plant and wait for a new policy (or a rejected model, or the timeout)."""
        self.state = SWITCHING
        chunk_steps = self.record.real_steps - self.protocol.chunk_start

        def held() -> None:
            self.state = HOLDING
            self.record.hold_began(self._clock())
            self.hold_reason = reason
            self._event(
                'hold',
                reason=reason,
                chunk_steps=chunk_steps,
                waiting_for_model_newer_than=self.protocol.released_model,
            )
            self._progress(
                f'plant held ({reason}) after {chunk_steps} training steps: waiting for a '
                f'policy trained on a model newer than {self.protocol.released_model}'
            )
            self.check_hold()  # the policy may have come meanwhile

        self._chain([Call(PAUSE, True)], then=held)

    def _release(self, reason: str) -> None:
        """End the hold: evaluate the new policy, or explore another chunk, or finish."""
        held = self.record.hold_ended(self._clock())
        self._event(
            'resume',
            reason=reason,
            hold_reason=self.hold_reason,
            held_s=round(held, 3),
            policy_version=self.record.policy.get('policy_version'),
            source_model_version=self.record.policy.get('source_model_version'),
        )
        self._progress(f'hold over ({reason}) after {held:.1f} s')
        self.state = SWITCHING
        real_steps = self.record.real_steps
        decision = self.protocol.after_release(reason, real_steps)
        if decision.action != dyna.EXPLORE:
            self._act(decision)
            return
        if decision.release:  # explores unevaluated (eval_every_policy off)
            self.protocol.release_policy(real_steps, self.record.model_version)
            self._release_policy(evaluation=False)
        self._chain([Call(PAUSE, False)], then=self._explore_started)

    # ------------------------------------------------------------------ evaluations

    def _begin_evaluation(self) -> None:
        """The newest policy is evaluated from its first episode (released if holding)."""
        self.state = SWITCHING
        self._restart_pending = False
        self.record.begin_evaluation()
        if self.protocol.evaluation_started(self.record.real_steps, self.record.model_version):
            self._release_policy(evaluation=True)

    def _start_evaluation(self) -> None:
        self._to_evaluation = True
        self._begin_evaluation()
        self._switch(explore=False, then=self._evaluation_started)

    def _restart_evaluation(self) -> None:
        version = self.record.policy.get('policy_version')
        self._progress(
            f'policy {version} arrived during the evaluation of policy '
            f'{self.record.evaluating_policy.get("policy_version")}: evaluation restarts'
        )
        self._event('evaluation_restart', policy_version=version)
        self._begin_evaluation()
        self._chain([Call(RESET)], then=self._evaluation_started)

    def _evaluation_started(self) -> None:
        if self._restart_pending:
            self._restart_evaluation()
            return
        self.state = EVALUATING
        self.record.eval_returns.clear()
        version = self.record.evaluating_policy.get('policy_version')
        self._event('mode', mode='evaluate', policy_version=version)
        self._progress(f'evaluating policy {version}')

    def _evaluation_done(self) -> None:
        self._to_evaluation = False
        evaluation, decision = self.record.end_evaluation(self._clock())
        self._event(
            'evaluation',
            **{k: v for k, v in evaluation.items() if k not in ('real_steps', 'eval_steps')},
        )
        self._progress(
            f'evaluation of policy {evaluation["policy_version"]}: '
            f'{evaluation["eval_return_mean"]:.2f}'
        )
        if decision.action == dyna.EXPLORE:
            self.state = SWITCHING
            self._switch(explore=True, then=self._explore_started)
        else:
            self._act(decision)

    # ------------------------------------------------------------------ calls

    def _switch(self, explore: bool, then: Callable[[], None]) -> None:
        """Set the controller's mode and reset the plant, held meanwhile when holding."""
        calls = [Call(SET_MODE, explore), Call(RESET)]
        if self.settings.hold_for_policy:
            pause = [] if self.plant_paused else [Call(PAUSE, True)]
            calls = [*pause, *calls, Call(PAUSE, False)]
        self._chain(calls, then=then)

    def _chain(self, calls: Sequence[Call], then: Callable[[], None]) -> None:
        """Calls one after the other, then ``then()``; a refused one ends the run."""
        if not calls:
            then()
            return
        first, rest = calls[0], calls[1:]
        resume = first.service == PAUSE and not first.value
        if resume:
            self.resuming = True

        def answered(ok: bool, detail: str) -> None:
            if self.state == FINISHED:
                return
            if not ok:
                self._error(f'{first.what} refused: {detail}')
                self.finish(f'service_refused: {first.what}')
                return
            if first.service == PAUSE:
                self.plant_paused = bool(first.value)
            if not resume:
                self._chain(rest, then)
                return
            self.resuming = False
            self._chain(rest, then)
            deferred, self._deferred = self._deferred, []
            for episode in deferred:
                if self.state != FINISHED:
                    self._episode_ended(episode)

        self._make_call(first, answered)
