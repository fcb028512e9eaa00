"""What the model updater's fit state means for a held plant (core.protocol)."""

import math

import pytest

from sindyrl_ros.core.protocol import FIT_STATE_NAMES, FitState, hold_outcome


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
