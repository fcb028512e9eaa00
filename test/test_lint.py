"""Lint as part of `make test`: ament flake8 conventions (99 columns, single quotes) via ruff."""

from pathlib import Path
import subprocess
import sys

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_clean():
    ruff = Path(sys.executable).with_name('ruff')
    result = subprocess.run(
        [str(ruff), 'check', '--no-cache', '.'], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
