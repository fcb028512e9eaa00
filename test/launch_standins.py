"""Stand-ins for ROS 2 `launch` / `launch_ros`, which cannot be installed from pip.

Launch files are executed for real against these minimal recording classes: every action a
launch file creates is recorded with its arguments, so tests can check what it would start.
Only what cannot run here is replaced; the graph description, parameter files and node
declarations the launch files use are the real ones.
"""

from pathlib import Path
import runpy
import sys
import types


class _Recorded:
    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


class _LaunchConfiguration:
    def __init__(self, name):
        self.name = name

    def perform(self, context):
        return context.launch_configurations[self.name]


def _stub_launch_modules(created_nodes: list) -> dict[str, types.ModuleType]:
    """Stand-ins for the launch / launch_ros APIs our launch files use, recording calls."""

    class Node(_Recorded):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            created_nodes.append(self)

    class DeclareLaunchArgument(_Recorded):
        def __init__(self, name, **kwargs):
            super().__init__(name, **kwargs)
            self.name = name

    class OnProcessExit(_Recorded):
        def __init__(self, *, target_action, on_exit):
            super().__init__(target_action=target_action, on_exit=on_exit)

    names = [
        'launch',
        'launch.actions',
        'launch.event_handlers',
        'launch.launch_description_sources',
        'launch.substitutions',
        'launch_ros',
        'launch_ros.actions',
        'launch_ros.parameter_descriptions',
        'launch_ros.substitutions',
    ]
    modules = {name: types.ModuleType(name) for name in names}
    modules['launch'].LaunchDescription = lambda entities: list(entities)
    actions = modules['launch.actions']
    actions.DeclareLaunchArgument = DeclareLaunchArgument
    actions.OpaqueFunction = lambda function: _Recorded(function=function)
    for name in (
        'IncludeLaunchDescription',
        'RegisterEventHandler',
        'Shutdown',
        'LogInfo',
        'GroupAction',
        'ExecuteProcess',
    ):
        setattr(actions, name, type(name, (_Recorded,), {}))
    modules['launch.event_handlers'].OnProcessExit = OnProcessExit
    sources = modules['launch.launch_description_sources']
    sources.PythonLaunchDescriptionSource = type('PythonLaunchDescriptionSource', (_Recorded,), {})
    modules['launch.substitutions'].LaunchConfiguration = _LaunchConfiguration
    modules['launch.substitutions'].PathJoinSubstitution = type(
        'PathJoinSubstitution', (_Recorded,), {}
    )
    modules['launch_ros.actions'].Node = Node
    modules['launch_ros.parameter_descriptions'].ParameterValue = type(
        'ParameterValue', (_Recorded,), {}
    )
    modules['launch_ros.substitutions'].FindPackageShare = type(
        'FindPackageShare', (_Recorded,), {}
    )
    for name in names:
        parent, _, child = name.rpartition('.')
        if parent:
            setattr(modules[parent], child, modules[name])
    return modules


class Exited:
    """The event launch hands to an OnProcessExit callback."""

    def __init__(self, returncode):
        self.returncode = returncode


def run_launch_file(path: Path, overrides: dict, monkeypatch):
    """Execute a launch file with its arguments; return (entities its OpaqueFunction made,
    created Node stand-ins)."""
    created: list = []
    for name, module in _stub_launch_modules(created).items():
        monkeypatch.setitem(sys.modules, name, module)
    description = runpy.run_path(str(path))['generate_launch_description']()
    values = {}
    for argument in (entity for entity in description if hasattr(entity, 'name')):
        values[argument.name] = overrides.get(argument.name, argument.kwargs.get('default_value'))
        choices = argument.kwargs.get('choices')
        assert choices is None or values[argument.name] in choices, (argument.name, choices)
    missing = [name for name, value in values.items() if value is None]
    assert not missing, f'{Path(path).name}: no value for launch arguments {missing}'
    context = types.SimpleNamespace(launch_configurations=values)
    entities = []
    for entity in description:
        function = getattr(entity, 'kwargs', {}).get('function')
        if function is not None:
            entities += function(context)
    return entities, created
