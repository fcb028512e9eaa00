"""A run's event log (``progress.jsonl``): written, followed live, read back, told.

The run supervisor appends one JSON object per line as things happen (:class:`ProgressLog`:
``start``,
``episode``, ``model``, ``policy``, ``mode``, ``hold``, ``resume``, ``release``,
``evaluation``, ``evaluation_restart``, ``finish``), each with the real training steps and
evaluation steps counted so far. A process killed while writing leaves at most a torn last
line; a file edited by hand may hold anything. Both are read *totally*: a line that is not
a JSON object is skipped and counted, never a traceback.

`sindyrl-ros train` follows the log while the run goes on (:class:`ProgressFollower`) and
shows each event as one line (:func:`describe`).

:class:`RunHistory` is what a resumed run continues from: the steps already spent, the
evaluations already made, the holds, and the policy last released to the plant (so the
same policy, republished on the resume, is not taken for a new one).
"""

from __future__ import annotations

from dataclasses import dataclass, field
import json
import math
import os
from pathlib import Path
import stat
from typing import Any

__all__ = [
    'MAX_PROGRESS_BYTES',
    'ProgressFollower',
    'ProgressLog',
    'RunHistory',
    'describe',
    'read_progress',
]

PROGRESS_FILE = 'progress.jsonl'
# A run of a million real steps writes about 5,000 episode events of ~300 bytes: far below.
MAX_PROGRESS_BYTES = 256 * 1024 * 1024


def read_progress(run_dir: str | os.PathLike) -> tuple[list[dict], int]:
    """The events of ``run_dir/progress.jsonl`` and how many lines were not events.

    Parameters
    ----------
    run_dir : path-like
        The run directory.

    Returns
    -------
    events : list of dict
        In file order; empty when the file does not exist.
    skipped : int
        Lines that are not a JSON object (a torn last line after a kill, a hand edit).

    Raises
    ------
    ValueError
        If ``progress.jsonl`` is not a regular file or is larger than
        :data:`MAX_PROGRESS_BYTES` (the message names the file).
    """
    path = Path(run_dir) / PROGRESS_FILE
    try:
        info = path.stat()
    except FileNotFoundError:
        return [], 0
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(f'{path}: not a regular file')
    if info.st_size > MAX_PROGRESS_BYTES:
        raise ValueError(f'{path}: {info.st_size} bytes, more than {MAX_PROGRESS_BYTES}')
    events: list[dict] = []
    skipped = 0
    with open(path, encoding='utf-8', errors='replace') as stream:
        for line in stream:
            if not line.strip():
                continue
            event = _parse_event(line)
            if event is None:
                skipped += 1
            else:
                events.append(event)
    return events, skipped


def _parse_event(line: str) -> dict | None:
    """The event on one line of the log; None if the line is not an event."""
    try:
        event = json.loads(line)
    except (ValueError, RecursionError):
        return None
    if isinstance(event, dict) and isinstance(event.get('event'), str):
        return event
    return None


class ProgressLog:
    """Appends events to ``run_dir/progress.jsonl``: one JSON object a line, each flushed
    as it is written, so a reader (the `sindyrl-ros` terminal, a resumed run) sees it at
    once and a kill tears at most the last line.

    Parameters
    ----------
    run_dir : path-like
        The run directory (must exist); the log is appended to if it is there.
    """

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.path = Path(run_dir) / PROGRESS_FILE
        self._stream = open(self.path, 'a', encoding='utf-8')  # noqa: SIM115

    def append(self, event: dict) -> None:
        """Write one event (NaN and infinities as null, numpy scalars as numbers)."""
        from sindyrl_ros.core.serialization import json_safe

        self._stream.write(json.dumps(json_safe(event), allow_nan=False) + '\n')
        self._stream.flush()

    def close(self) -> None:
        if not self._stream.closed:
            self._stream.close()

    def __enter__(self) -> ProgressLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class ProgressFollower:
    """The events appended to a run's progress log since this follower was made.

    Only whole lines are read, so a line being written is read on a later call; a line
    that is not an event is skipped (see :func:`read_progress`).

    Parameters
    ----------
    run_dir : path-like
        The run directory; its log need not exist yet.
    """

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.path = Path(run_dir) / PROGRESS_FILE
        # A resumed run's log holds the earlier starts' events too: only new ones are told.
        try:
            self._offset = self.path.stat().st_size
        except FileNotFoundError:
            self._offset = 0

    def new_events(self) -> list[dict]:
        """The events written since the last call, in file order."""
        try:
            with open(self.path, 'rb') as stream:
                stream.seek(self._offset)
                data = stream.read()
        except OSError:
            return []
        end = data.rfind(b'\n') + 1  # whole lines only
        self._offset += end
        events = []
        for line in data[:end].decode('utf-8', errors='replace').splitlines():
            event = _parse_event(line) if line.strip() else None
            if event is not None:
                events.append(event)
        return events


def _count(value: Any) -> int:
    """A step count from an event: a non-negative int, else 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0
    if not math.isfinite(value) or value < 0:
        return 0
    return int(value)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


@dataclass
class RunHistory:
    """What the earlier starts of a run did, as its progress log tells it.

    Attributes
    ----------
    real_steps, eval_steps : int
        Real training and evaluation steps counted at the last event.
    evaluations : list of dict
        The ``evaluation`` events (``real_steps``, ``eval_steps``, ``eval_return_mean``,
        ``policy_version``, ``source_model_version``, ``model_version``), in order.
    holds : int
        Holds of the plant so far.
    held_wall_time_s : float
        Wall time the plant was held, summed over the holds that ended.
    released_policy_version, released_model_version
        The policy last evaluated (or released to explore unevaluated) and the model it
        was trained on; None / 0 when none was.
    starts : int
        How many times the run was started (``start`` events).
    finished : dict or None
        The last ``finish`` event, if the run's last start finished.
    skipped_lines : int
        Lines of the log that were not events.
    """

    real_steps: int = 0
    eval_steps: int = 0
    evaluations: list[dict] = field(default_factory=list)
    holds: int = 0
    held_wall_time_s: float = 0.0
    released_policy_version: Any = None
    released_model_version: int = 0
    starts: int = 0
    finished: dict | None = None
    skipped_lines: int = 0

    @classmethod
    def from_events(cls, events: list[dict], skipped_lines: int = 0) -> RunHistory:
        """Fold the events of a progress log (see :func:`read_progress`)."""
        history = cls(skipped_lines=skipped_lines)
        for event in events:
            kind = event.get('event')
            history.real_steps = max(history.real_steps, _count(event.get('real_steps')))
            history.eval_steps = max(history.eval_steps, _count(event.get('eval_steps')))
            if kind == 'start':
                history.starts += 1
                history.finished = None
            elif kind == 'hold':
                history.holds += 1
            elif kind == 'resume':
                history.held_wall_time_s += _number(event.get('held_s')) or 0.0
            elif kind == 'release' and event.get('evaluation') is False:
                history._release(event)  # sent exploring without an evaluation
            elif kind == 'evaluation':
                mean = _number(event.get('eval_return_mean'))
                if mean is None:
                    continue
                history.evaluations.append(
                    {
                        'real_steps': _count(event.get('real_steps')),
                        'eval_steps': _count(event.get('eval_steps')),
                        'eval_return_mean': mean,
                        'eval_returns': [
                            r for r in event.get('eval_returns') or [] if _number(r) is not None
                        ],
                        'policy_version': event.get('policy_version'),
                        'source_model_version': event.get('source_model_version'),
                        'model_version': event.get('model_version'),
                    }
                )
                history._release(event)
            elif kind == 'finish':
                history.finished = event
        return history

    @classmethod
    def read(cls, run_dir: str | os.PathLike) -> RunHistory:
        """The history of the run in ``run_dir`` (empty when it has no progress log)."""
        events, skipped = read_progress(run_dir)
        return cls.from_events(events, skipped)

    def _release(self, event: dict) -> None:
        self.released_policy_version = event.get('policy_version')
        source = event.get('source_model_version')
        if isinstance(source, int) and not isinstance(source, bool):
            self.released_model_version = max(0, source)

    @property
    def reached(self) -> bool:
        """Whether the last start finished with the threshold reached."""
        return bool(self.finished and self.finished.get('reached') is True)


def describe(event: dict) -> str | None:
    """One line telling an event of the log, for the terminal; None for an event not told.

    Fields of the wrong type (a hand-edited log) never raise: such an event is not told.
    """
    try:
        return _describe(event)
    except (TypeError, ValueError):
        return None


def _cut_short(event: dict) -> str:
    """' (k of n surrogate episodes cut short)' when the mean is not of whole episodes."""
    short = event.get('surrogate_return_cut_short')
    episodes = event.get('surrogate_return_episodes')
    if isinstance(short, int) and isinstance(episodes, int) and short > 0:
        return f' ({short} of {episodes} surrogate episodes cut short)'
    return ''


def _describe(event: dict) -> str | None:
    kind = event.get('event')
    steps = f'real steps {event.get("real_steps", 0):>6} (+{event.get("eval_steps", 0)} eval)'
    if kind == 'episode':
        if event.get('evaluation'):
            return None
        episode_return = event.get('episode_return', float('nan'))
        return f'{steps} | episode {event.get("episode")}: return {episode_return:.1f}'
    if kind == 'model':
        error = event.get('validation_nrmse')
        # Episodes too short to hold a tail out are validated on the data they were fit on.
        where = 'held-out' if event.get('validation_held_out', True) else 'fitting-data'
        error = f', {where} rollout error {error:.3f}' if error is not None else ''
        return f'{steps} | model v{event.get("model_version")} accepted{error}'
    if kind == 'policy':
        return (
            f'{steps} | policy v{event.get("policy_version")} from model '
            f'v{event.get("source_model_version")}, surrogate return '
            f'{event.get("surrogate_return", float("nan")):.1f}{_cut_short(event)}'
        )
    if kind == 'evaluation':
        return (
            f'{steps} | policy v{event.get("policy_version")}: eval return '
            f'{event.get("eval_return_mean"):.1f}'
        )
    if kind == 'hold':
        return f'{steps} | plant held until the next policy ({event.get("reason", "")})'
    if kind == 'resume':
        held = event.get('held_s')
        held = f' after {held:.1f} s' if isinstance(held, (int, float)) else ''
        return f'{steps} | plant resumed{held} ({event.get("reason", "")})'
    if kind == 'mode':
        return f'{steps} | controller mode {event.get("mode")}'
    if kind == 'finish':
        reached = 'target reached' if event.get('reached') else 'target not reached'
        return f'{steps} | finished ({event.get("reason")}): {reached}'
    if kind == 'start':
        details = ', '.join(
            f'{key} {value}'
            for key, value in event.items()
            if key not in ('event', 'time_s', 'real_steps', 'eval_steps')
        )
        return f'{steps} | {kind}: {details}'
    return None
