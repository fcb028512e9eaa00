"""The package is a well-formed ament_python package that colcon and pip can install."""

import importlib
import os
from pathlib import Path
import runpy
import xml.etree.ElementTree as ElementTree

import setuptools

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = 'sindyrl_ros'


def setup_arguments() -> dict:
    """What setup.py hands to setuptools.setup, captured the way colcon introspects it."""
    captured = {}
    original = setuptools.setup
    setuptools.setup = lambda **kwargs: captured.update(kwargs)
    cwd = Path.cwd()
    try:
        os.chdir(ROOT)  # setup.py globs relative to its own folder, as colcon runs it
        runpy.run_path(str(ROOT / 'setup.py'), run_name='__main__')
    finally:
        os.chdir(cwd)
        setuptools.setup = original
    return captured


def console_scripts(arguments: dict) -> dict[str, str]:
    entries = arguments['entry_points']['console_scripts']
    return dict(tuple(part.strip() for part in entry.split('=', 1)) for entry in entries)


def test_package_xml_is_format_3_ament_python():
    root = ElementTree.parse(ROOT / 'package.xml').getroot()
    assert root.tag == 'package'
    assert root.get('format') == '3'
    assert root.findtext('name') == PACKAGE
    assert root.findtext('export/build_type') == 'ament_python'
    exec_depends = {element.text for element in root.findall('exec_depend')}
    for key in ('rclpy', 'std_msgs', 'sensor_msgs', 'diagnostic_msgs', 'python3-numpy'):
        assert key in exec_depends, f'package.xml lacks <exec_depend>{key}</exec_depend>'


def test_resource_marker_and_setup_cfg():
    assert (ROOT / 'resource' / PACKAGE).is_file()
    setup_cfg = (ROOT / 'setup.cfg').read_text()
    assert f'script_dir=$base/lib/{PACKAGE}' in setup_cfg
    assert f'install_scripts=$base/lib/{PACKAGE}' in setup_cfg


def test_setup_name_matches_package_xml():
    assert setup_arguments()['name'] == PACKAGE
    assert 'tests_require' not in setup_arguments()


def data_files_problems(arguments: dict) -> list[str]:
    problems = []
    destinations = {destination for destination, _ in arguments['data_files']}
    for expected in (f'share/{PACKAGE}/launch', f'share/{PACKAGE}/config'):
        if expected not in destinations:
            problems.append(f'data_files installs nothing to {expected}')
    for destination, files in arguments['data_files']:
        if not files:
            problems.append(f'data_files entry for {destination} matches no file')
        problems += [
            f'data_files names {name}, which does not exist'
            for name in files
            if not (ROOT / name).is_file()
        ]
    return problems


def console_script_problems(arguments: dict) -> list[str]:
    problems = []
    for script, target in console_scripts(arguments).items():
        module_name, _, function_name = target.partition(':')
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            problems.append(f'{script}: cannot import {module_name}: {error}')
            continue
        if not callable(getattr(module, function_name, None)):
            problems.append(f'{script}: {target} is not callable')
    return problems


def test_every_data_files_entry_matches_files():
    assert data_files_problems(setup_arguments()) == []


def test_every_console_script_target_imports():
    arguments = setup_arguments()
    assert 'sindyrl-ros' in console_scripts(arguments)
    assert console_script_problems(arguments) == []


def test_checks_fail_when_a_target_or_data_file_goes_missing():
    """The two checks above are not vacuous: a missing target or file is reported."""
    arguments = setup_arguments()
    arguments['entry_points'] = {
        'console_scripts': [
            *arguments['entry_points']['console_scripts'],
            'ghost = sindyrl_ros.ghost_node:main',
            'mute = sindyrl_ros.cli:no_such_function',
        ]
    }
    problems = console_script_problems(arguments)
    assert any(problem.startswith('ghost:') for problem in problems), problems
    assert any(problem.startswith('mute:') for problem in problems), problems

    arguments['data_files'] = [
        *arguments['data_files'],
        (f'share/{PACKAGE}/launch', ['launch/ghost.launch.py']),
        (f'share/{PACKAGE}/meshes', []),
    ]
    problems = data_files_problems(arguments)
    assert any('ghost.launch.py' in problem for problem in problems), problems
    assert any('meshes matches no file' in problem for problem in problems), problems
