"""The Dyna protocol (core.protocol): its decisions, and what the fit state means for a hold."""

import math

import numpy as np
import pytest

from sindyrl_ros.core.protocol import (
    CONTINUE,
    EVALUATE,
    EXPLORE,
    FINISH,
    FIT_STATE_NAMES,
    HOLD,
    DynaProtocol,
    FitState,
    ProtocolSettings,
    exploration_scale,
    hold_outcome,
)


def test_the_fit_state_travels_as_a_named_vector_and_comes_back_the_same():
    state = FitState(3, 2, 1, 0, True, 2, 600, 150)
    assert FitState.from_vector(FIT_STATE_NAMES, state.to_vector()) == state
    shuffled = list(zip(FIT_STATE_NAMES, state.to_vector()))[::-1]
    names, values = zip(*shuffled)
    assert FitState.from_vector(names, values) == state


@pytest.mark.parametrize(
    'change, message',
    [
        (('refits', -1.0), 'not a count'),
        (('refits', 1.5), 'not a count'),
        (('model_version', math.nan), 'not a count'),
        (('model_version', math.inf), 'not a count'),
        (('transitions_explore', 1e300), 'not a count'),
    ],
)
def test_a_malformed_fit_state_is_refused_naming_the_field(change, message):
    values = dict(zip(FIT_STATE_NAMES, FitState().to_vector()))
    values[change[0]] = change[1]
    with pytest.raises(ValueError, match=f'{change[0]}.*{message}'):
        FitState.from_vector(list(values), list(values.values()))


def test_missing_repeated_and_mismatched_fields_are_refused():
    names, values = list(FIT_STATE_NAMES), FitState().to_vector()
    with pytest.raises(ValueError, match="no 'transitions_to_refit'"):
        FitState.from_vector(names[:-1], values[:-1])
    with pytest.raises(ValueError, match='given twice'):
        FitState.from_vector([*names, 'refits'], [*values, 0.0])
    with pytest.raises(ValueError, match='names for'):
        FitState.from_vector(names, values[:-1])


CHUNK = FitState(refits=1, models_accepted=1, model_version=1, transitions_explore=200)


def test_a_running_fit_or_a_newer_accepted_model_keeps_the_hold():
    running = FitState(refits=2, models_accepted=1, fit_running=True, model_version=1)
    assert hold_outcome(running, CHUNK, released_model_version=1, settled=True) is None
    accepted = FitState(refits=2, models_accepted=2, model_version=2)
    assert hold_outcome(accepted, CHUNK, released_model_version=1, settled=True) is None
    assert hold_outcome(None, CHUNK, released_model_version=1, settled=True) is None


def test_a_rejected_or_failed_fit_of_the_chunk_ends_the_hold():
    rejected = FitState(refits=2, models_accepted=1, models_rejected=1, model_version=1)
    assert hold_outcome(rejected, CHUNK, 1, settled=False) == 'model_rejected'
    failed = FitState(refits=2, models_accepted=1, fit_failures=1, model_version=1)
    assert hold_outcome(failed, CHUNK, 1, settled=False) == 'model_rejected'
    # A rejection from before the chunk is not about the chunk's data.
    earlier = FitState(refits=1, models_rejected=1, model_version=1)
    assert hold_outcome(earlier, earlier, 1, settled=False) is None


def test_no_refit_coming_ends_the_hold_once_settled_without_waiting_for_a_timeout():
    short = FitState(refits=1, models_accepted=1, model_version=1, transitions_to_refit=60)
    assert hold_outcome(short, CHUNK, 1, settled=False) is None
    assert hold_outcome(short, CHUNK, 1, settled=True) == 'no_refit'
    # About to refit (no transition missing): the fit is coming, keep holding.
    due = FitState(refits=1, models_accepted=1, model_version=1, transitions_to_refit=0)
    assert hold_outcome(due, CHUNK, 1, settled=True) is None


def test_before_any_report_the_chunk_starts_from_zero():
    first_fit_rejected = FitState(refits=1, models_rejected=1)
    assert hold_outcome(first_fit_rejected, None, 0, settled=True) == 'model_rejected'


# ---------------------------------------------------------------- the protocol's decisions


SETTINGS = ProtocolSettings(
    budget=1000, threshold=-200.0, initial_steps=200, steps_per_iteration=200
)


def test_random_exploration_until_the_initial_chunk_then_a_hold_at_an_episode_end():
    protocol = DynaProtocol(SETTINGS)
    # Episodes end inside the chunk: exploring goes on, episodes stay whole.
    assert protocol.after_exploration_episode(150, False).action == CONTINUE
    assert protocol.after_exploration_episode(300, False) == (HOLD, 'initial_steps', False)
    protocol.held()
    assert protocol.holds == 1
    # Nothing from the updater yet, no policy: keep holding.
    assert protocol.release_reason(settled=True, timed_out=False) is None


def test_a_new_policy_ends_the_hold_is_evaluated_and_then_explores_a_chunk():
    protocol = DynaProtocol(SETTINGS)
    protocol.after_exploration_episode(200, False)
    protocol.held()
    protocol.policy_arrived(1, 1)
    assert protocol.release_reason(settled=False, timed_out=False) == 'policy'
    assert protocol.after_release('policy', 200).action == EVALUATE
    assert protocol.evaluation_started(200)  # held runs: the policy is released with it
    assert (protocol.released_policy, protocol.released_model, protocol.chunk_start) == (1, 1, 200)
    assert protocol.evaluation_done(1, -800.0, 200).action == EXPLORE
    assert not protocol.explore_started()  # nothing newer to evaluate
    assert protocol.after_exploration_episode(350, False).action == CONTINUE
    assert protocol.after_exploration_episode(400, False) == (HOLD, 'steps_per_iteration', False)


def test_a_policy_retrained_on_the_same_model_is_not_new():
    protocol = DynaProtocol(SETTINGS, released_policy=1, released_model=1)
    protocol.policy_arrived(2, 1)
    assert not protocol.new_policy()
    protocol.policy_arrived(3, 2)
    assert protocol.new_policy()


def test_a_rejected_model_ends_the_hold_and_exploring_goes_on_without_training_on_it():
    protocol = DynaProtocol(SETTINGS, released_policy=1, released_model=1)
    protocol.fit_state = FitState(refits=1, models_accepted=1, model_version=1)
    protocol.start_chunk(400)
    protocol.after_exploration_episode(600, False)
    protocol.held()
    protocol.fit_state = FitState(refits=2, models_accepted=1, fit_running=True, model_version=1)
    assert protocol.release_reason(settled=True, timed_out=False) is None
    protocol.fit_state = FitState(refits=2, models_accepted=1, models_rejected=1, model_version=1)
    assert protocol.release_reason(settled=False, timed_out=False) == 'model_rejected'
    decision = protocol.after_release('model_rejected', 600)
    assert decision == (EXPLORE, '', False) and protocol.chunk_start == 600
    assert protocol.released_policy == 1  # the policy there is explores on


def test_the_hold_timeout_ends_a_hold_nothing_else_ends():
    protocol = DynaProtocol(SETTINGS)
    protocol.after_exploration_episode(200, False)
    protocol.held()
    assert protocol.release_reason(settled=True, timed_out=False) is None
    assert protocol.release_reason(settled=True, timed_out=True) == 'hold_timeout'
    assert protocol.after_release('hold_timeout', 200).action == EXPLORE


def test_the_budget_waits_for_the_last_chunks_policy_and_evaluates_it_before_finishing():
    protocol = DynaProtocol(SETTINGS, holds=2, released_policy=2, released_model=2)
    assert protocol.after_exploration_episode(1000, False) == (HOLD, 'budget', False)
    protocol.held()
    protocol.policy_arrived(3, 3)
    assert protocol.after_release('policy', 1000).action == EVALUATE
    assert protocol.evaluation_done(3, -300.0, 1000) == (FINISH, 'budget', False)
    # A timed-out budget hold with an unevaluated policy evaluates it; without one, finishes.
    other = DynaProtocol(SETTINGS, holds=2, evaluated_policy=2)
    other.policy_arrived(2, 2)
    assert other.after_release('hold_timeout', 1000) == (FINISH, 'budget', False)


def test_the_threshold_finishes_the_run_or_only_records_the_first_crossing():
    protocol = DynaProtocol(SETTINGS)
    assert protocol.evaluation_done(1, -150.0, 400) == (FINISH, 'threshold', False)
    assert protocol.reached and protocol.steps_to_threshold == 400
    going_on = DynaProtocol(ProtocolSettings(**{**SETTINGS.__dict__, 'stop_at_threshold': False}))
    assert going_on.evaluation_done(1, -150.0, 400).action == EXPLORE
    assert going_on.evaluation_done(2, -250.0, 600).action == EXPLORE
    assert going_on.evaluation_done(3, -120.0, 1000) == (FINISH, 'budget', False)
    assert going_on.steps_to_threshold == 400  # the first crossing


def test_without_holds_a_policy_is_evaluated_at_the_end_of_the_episode_it_arrived_in():
    free = DynaProtocol(ProtocolSettings(**{**SETTINGS.__dict__, 'hold_for_policy': False}))
    assert free.after_exploration_episode(200, False).action == CONTINUE
    free.policy_arrived(1, 1)
    assert free.explore_started()
    assert free.after_exploration_episode(400, True).action == EVALUATE
    assert not free.evaluation_started(400)  # free running: nothing is held or released
    free.evaluation_done(1, -500.0, 400)
    assert free.after_exploration_episode(1000, False) == (FINISH, 'budget', False)


def test_a_policy_released_unevaluated_explores_when_eval_every_policy_is_off():
    protocol = DynaProtocol(ProtocolSettings(**{**SETTINGS.__dict__, 'eval_every_policy': False}))
    protocol.after_exploration_episode(200, False)
    protocol.held()
    protocol.policy_arrived(1, 1)
    decision = protocol.after_release('policy', 200)
    assert decision == (EXPLORE, '', True)
    protocol.release_policy(200)
    assert protocol.released_policy == 1 and not protocol.new_policy()


def test_exploration_noise_is_a_fraction_of_half_the_action_range():
    np.testing.assert_allclose(exploration_scale(0.1, [-2.0, 0.0], [2.0, 1.0]), [0.2, 0.05])
