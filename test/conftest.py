"""Test-wide set-up: this folder on ``sys.path`` so that shared test data
(``pendulum_data.py``) imports the same way from test/unit and test/ros."""

from pathlib import Path
import sys

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
