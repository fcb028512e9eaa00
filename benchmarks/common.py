"""What every benchmark records beside its numbers: machine, versions, date, command line,
and the git commit the code was run from.

Numbers measured on a 2-core laptop-class machine and on a workstation differ by an order of
magnitude, so each results file says where and with what it was measured.  Results files
are JSON written atomically (a crash mid-write never leaves half a file) and are merged,
not overwritten, so runs done in parts add up to one report.
"""

from __future__ import annotations

from datetime import datetime, timezone
from importlib import metadata
import json
import math
import os
from pathlib import Path
import platform
import shlex
import subprocess
import sys
from typing import Any

# Distribution names as pip knows them; the key is the name used in the results.
PACKAGES = {
    'numpy': 'numpy',
    'scipy': 'scipy',
    'torch': 'torch',
    'pysindy': 'pysindy',
    'gymnasium': 'gymnasium',
    'mujoco': 'mujoco',
    'dm_control': 'dm_control',
    'stable-baselines3': 'stable-baselines3',
}


def package_versions() -> dict[str, str | None]:
    """Installed versions of Python and of the packages the benchmarks depend on."""
    versions: dict[str, str | None] = {'python': platform.python_version()}
    for key, distribution in PACKAGES.items():
        try:
            versions[key] = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            versions[key] = None
    return versions


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    try:
        with open('/proc/cpuinfo', encoding='utf-8') as cpuinfo:
            for line in cpuinfo:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """CPU model, usable cores, OS and whether a CUDA GPU was visible to torch."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    info: dict[str, Any] = {
        'cpu_model': cpu_model(),
        'cores': cores,
        'os': platform.platform(),
    }
    try:
        import torch

        info['cuda'] = bool(torch.cuda.is_available())
    except ImportError:
        info['cuda'] = None
    return info


def git_state(directory: Path | None = None) -> dict[str, Any]:
    """The commit the code was run from and whether the work tree differed from it.

    ``dirty_files`` lists (up to 50) paths that were modified or untracked, as
    ``git status --porcelain`` names them: a number measured on a dirty tree was measured on
    that commit plus those changes. Values are None where git or the repository is missing.
    """
    where = Path(directory) if directory else Path(__file__).resolve().parents[1]

    def git(*arguments: str) -> str | None:
        try:
            done = subprocess.run(
                ['git', '-C', str(where), *arguments],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout if done.returncode == 0 else None

    commit = git('rev-parse', 'HEAD')
    status = git('status', '--porcelain', '--untracked-files=normal')
    changed = [line[3:] for line in (status or '').splitlines() if line.strip()]
    return {
        'commit': commit.strip() if commit else None,
        'dirty': None if status is None else bool(changed),
        'dirty_files': changed[:50],
        'dirty_files_total': len(changed),
    }


def utc_now() -> str:
    """ISO 8601 UTC timestamp, seconds resolution."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def command_line() -> str:
    """The command that produced the results, quoted so it can be pasted into a shell."""
    return shlex.join([Path(sys.executable).name, *sys.argv])


def finite_or_none(value: Any) -> Any:
    """JSON has no NaN/inf: non-finite floats become null (recursively)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite_or_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(item) for item in value]
    if hasattr(value, 'tolist') and hasattr(value, 'dtype'):  # numpy scalar or array
        return finite_or_none(value.tolist())
    return value


def read_json(path: Path) -> dict | None:
    """A previous results file, or None when there is none.

    A file that exists but cannot be parsed is an error, not an empty result: silently
    starting over would throw away hours of measurements.
    """
    if not path.exists():
        return None
    with open(path, encoding='utf-8') as stream:
        try:
            document = json.load(stream)
        except json.JSONDecodeError as error:
            raise ValueError(
                f'{path}: not valid JSON ({error}); move it away to start over'
            ) from error
    if not isinstance(document, dict):
        raise ValueError(f'{path}: expected a JSON object at the top level')
    return document


def write_json(path: Path, document: dict) -> None:
    """Write atomically (temporary file, then rename), indented for diffs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + '.tmp')
    with open(temporary, 'w', encoding='utf-8') as stream:
        json.dump(finite_or_none(document), stream, indent=1, allow_nan=False)
        stream.write('\n')
    os.replace(temporary, path)


def write_text(path: Path, text: str) -> None:
    """Write a text report atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + '.tmp')
    temporary.write_text(text, encoding='utf-8')
    os.replace(temporary, path)
