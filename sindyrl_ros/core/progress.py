"""A run's event log (``progress.jsonl``) read back: for plots, and to resume a run.

The run supervisor appends one JSON object per line as things happen (``start``,
``episode``, ``model``, ``policy``, ``mode``, ``hold``, ``resume``, ``release``,
``evaluation``, ``evaluation_restart``, ``finish``), each with the real training steps and
evaluation steps counted so far. A process killed while writing leaves at most a torn last
line; a file edited by hand may hold anything. Both are read *totally*: a line that is not
a JSON object is skipped and counted, never a traceback.

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

__all__ = ['MAX_PROGRESS_BYTES', 'RunHistory', 'read_progress']

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
            try:
                event = json.loads(line)
            except (ValueError, RecursionError):
                skipped += 1
                continue
            if isinstance(event, dict) and isinstance(event.get('event'), str):
                events.append(event)
            else:
                skipped += 1
    return events, skipped


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
