"""When the model updater fits, and the fit state it publishes for the run supervisor."""

from sindyrl_ros.core.protocol import FIT_STATE_NAMES, FitState
from sindyrl_ros.core.refit_schedule import ACCEPTED, FAILED, REJECTED, RefitSchedule


def test_a_fit_starts_every_refit_every_transitions_one_at_a_time():
    schedule = RefitSchedule()
    schedule.transitions_explore = 199
    assert not schedule.start_fit(200, running=False)
    assert schedule.transitions_to_refit(200) == 1
    schedule.transitions_explore = 230
    assert not schedule.start_fit(200, running=True)  # one fit at a time
    assert schedule.start_fit(200, running=False)
    assert schedule.refits == 1 and schedule.explore_at_last_fit == 230
    assert schedule.next_model_version == 1
    # Transitions that came during the fit count towards the next one.
    schedule.transitions_explore = 420
    assert schedule.transitions_to_refit(200) == 10
    assert not schedule.start_fit(200, running=False)
    # refit_every may change while the node runs: read at each decision.
    assert schedule.start_fit(150, running=False)
    assert schedule.refits == 2


def test_recorded_data_is_fitted_at_once_unless_there_is_none():
    schedule = RefitSchedule(models_accepted=3)  # a resumed run went on from model 3
    schedule.initial_fit_pending = True
    assert schedule.transitions_to_refit(200) == 0
    assert not schedule.start_fit(200, running=False)  # no exploration transition: dropped
    assert not schedule.initial_fit_pending
    schedule.initial_fit_pending = True
    schedule.transitions_explore = 150
    assert schedule.start_fit(200, running=False)
    assert not schedule.initial_fit_pending
    assert schedule.next_model_version == 4


def test_how_fits_end_is_counted_and_published_as_the_fit_state():
    schedule = RefitSchedule(models_accepted=1)
    schedule.transitions_explore = 300
    assert schedule.start_fit(100, running=False)
    assert schedule.fit_state(100, running=True) == FitState(1, 1, 0, 0, True, 1, 300, 100)
    assert schedule.fit_ended({'error': 'fit worker process died (exit code -9)'}) == FAILED
    assert schedule.fit_ended({'accepted': False, 'validation': {}}) == REJECTED
    assert schedule.fit_ended({'accepted': True, 'validation': {}}) == ACCEPTED
    schedule.transitions_explore = 360
    state = schedule.fit_state(100, running=False)
    assert state == FitState(
        refits=1,
        models_accepted=2,
        models_rejected=1,
        fit_failures=1,
        fit_running=False,
        model_version=2,
        transitions_explore=360,
        transitions_to_refit=40,
    )
    # What travels on /sindyrl/fit_state reads back the same.
    assert FitState.from_vector(FIT_STATE_NAMES, state.to_vector()) == state
