"""What `sindyrl-ros` reads itself from a task parameter file (the nodes read all of it).

A task file is a ROS 2 parameter file: ``{section: {ros__parameters: {...}}}``, with the
parameters every node shares under ``/**`` (among them ``task``, the task's name).
"""

from __future__ import annotations

import os
from pathlib import Path


def parameter_sections(task_file: str | os.PathLike) -> dict[str, dict]:
    """``{section name: ros__parameters}`` of a parameter file.

    Raises
    ------
    OSError
        If the file cannot be read.
    yaml.YAMLError
        If it is not YAML.
    """
    import yaml

    document = yaml.safe_load(Path(task_file).read_text()) or {}
    if not isinstance(document, dict):
        return {}
    sections = {}
    for name, section in document.items():
        parameters = section.get('ros__parameters') if isinstance(section, dict) else None
        if isinstance(parameters, dict):
            sections[name] = parameters
        elif isinstance(section, dict):
            sections[name] = {}
    return sections


def task_name(task_file: str | os.PathLike, given: str | None = None) -> str:
    """The task a run of this file is named after.

    Parameters
    ----------
    task_file : path-like
        The task parameter file.
    given : str, optional
        The task named on the command line (``--task``).

    Returns
    -------
    str
        The ``task`` parameter of the file's ``/**`` section; else ``given``; else the
        file's stem (``my_robot.yaml`` -> ``my_robot``). A malformed file is named by the
        same fallbacks: the nodes report what is wrong with it, with the details.
    """
    try:
        name = parameter_sections(task_file).get('/**', {}).get('task')
    except Exception:  # noqa: BLE001 - see the docstring
        name = None
    if isinstance(name, str) and name:
        return name
    return given or Path(task_file).stem
