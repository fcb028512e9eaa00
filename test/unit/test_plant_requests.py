"""The run supervisor's requests to a plant it does not own (core.episodes): a simulator held
and played with the robot, the answers gathered from the calls made, calls held back until
their service is there."""

import pytest

from sindyrl_ros.core.episode_control import (
    ACTIVATE,
    ANSWER_RESETS,
    DEACTIVATE,
    END_EPISODE,
    HELD,
    PAUSE_SIMULATION,
    PLAY_SIMULATION,
    RESTART_STEPS,
    RUN_RESET,
    Answer,
    EpisodeControl,
    PendingCalls,
)

RESET = [END_EPISODE, RESTART_STEPS, RUN_RESET]


def test_a_simulator_is_paused_whenever_the_plant_is_held_and_plays_before_it_drives():
    control = EpisodeControl(start_paused=True, simulation=True)
    assert control.start() == [DEACTIVATE, PAUSE_SIMULATION]
    assert control.pause(False) == [RESTART_STEPS, PLAY_SIMULATION, ACTIVATE]
    # An episode ends: the simulator plays on while its own reset service resets it.
    assert control.episode_ended() == [DEACTIVATE, *RESET]
    # The supervisor holds the plant during the reset: once it is over, the simulator stops.
    assert control.pause(True) == []
    assert control.reset_finished() == [PAUSE_SIMULATION] and control.state == HELD
    # A reset while held and paused: nothing to pause again.
    assert control.request_reset() == RESET
    assert control.reset_finished() == [ANSWER_RESETS] and control.state == HELD
    assert control.pause(False) == [RESTART_STEPS, PLAY_SIMULATION, ACTIVATE]
    assert control.pause(True) == [DEACTIVATE, PAUSE_SIMULATION, RESTART_STEPS]
    assert control.pause(False)[-2:] == [PLAY_SIMULATION, ACTIVATE]
    # Resumed after a reset: plays again before the controller drives.
    assert control.episode_ended() == [DEACTIVATE, *RESET]
    assert control.reset_finished() == [RESTART_STEPS, PLAY_SIMULATION, ACTIVATE]


def test_a_failed_reset_leaves_the_plant_held_and_the_simulator_paused():
    control = EpisodeControl(start_paused=False, simulation=True)
    assert control.start() == [PLAY_SIMULATION, ACTIVATE]
    assert control.request_reset() == [DEACTIVATE, *RESET]
    assert control.reset_finished(ok=False) == [ANSWER_RESETS, PAUSE_SIMULATION]
    assert control.paused and control.state == HELD and not control.counting
    # A robot without a simulator: held all the same, no simulator to pause.
    robot = EpisodeControl(start_paused=False)
    robot.request_reset()
    assert robot.reset_finished(ok=False) == [ANSWER_RESETS] and robot.state == HELD


def test_an_answer_is_ok_only_if_every_call_made_for_it_was():
    completed = []
    answer = Answer(deadline=10.0, on_complete=lambda: completed.append(True))
    answer.expect()
    answer.expect()
    answer.add(True, 'controller deactivate: deactivated')
    assert not answer.done and completed == []
    answer.add(False, 'simulation paused refused: busy')
    assert answer.done and completed == [True] and answer.ok is False
    assert answer.message == 'controller deactivate: deactivated; simulation paused refused: busy'
    assert answer.expire(11.0) and completed == [True]  # once


def test_a_reset_request_is_answered_with_the_resets_outcome_or_fails_at_its_deadline():
    completed = []
    reset = Answer(deadline=35.0, on_complete=lambda: completed.append('reset'), ok=False)
    assert not reset.expire(35.0)
    reset.complete(True, 'operator reset done in 12.0 s')
    assert reset.ok and reset.message == 'operator reset done in 12.0 s' and completed == ['reset']
    late = Answer(deadline=5.0, on_complete=lambda: completed.append('late'))
    late.expect()
    assert late.expire(5.1) and not late.ok and late.message == 'no outcome in time'
    late.add(True, 'controller activate: active')  # the call answers after all
    assert completed == ['reset', 'late']
    nothing = Answer(deadline=1.0, on_complete=lambda: completed.append('nothing'))
    nothing.complete()  # no call was needed (already so)
    assert nothing.ok and nothing.message == '' and completed[-1] == 'nothing'


def test_a_newer_call_replaces_one_not_sent_and_its_answers_wait_for_the_newer():
    pending = PendingCalls()
    hold = Answer(10.0, lambda: None)
    resume = Answer(10.0, lambda: None)
    pending.add('controller', 'deactivate', [hold])
    pending.add('simulator', 'pause')
    pending.add('controller', 'activate', [resume])
    assert pending.services == ['simulator', 'controller']  # the newest call is the last
    assert hold.outstanding == 1 and resume.outstanding == 1
    call, answers = pending.take('controller')
    assert call == 'activate' and answers == [hold, resume]
    assert pending.take('simulator') == ('pause', []) and pending.services == []
    with pytest.raises(KeyError):
        pending.take('controller')
