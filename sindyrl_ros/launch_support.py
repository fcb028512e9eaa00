"""Turns sindyrl_ros.graph node specs into launch_ros Node actions (for launch/*.launch.py).

launch_ros is imported only here and only when a launch file calls this: the rest of the
package works where launch is not installed (a pip venv).
"""


def ros_nodes(specs):
    """One `launch_ros.actions.Node` per graph.NodeSpec, with its files and overrides."""
    import os

    from launch_ros.actions import Node

    from sindyrl_ros.graph import PACKAGE, PARENT_PID_ENV

    return [
        Node(
            package=PACKAGE,
            executable=spec.executable,
            name=spec.name,
            # With name and namespace given, launch_ros writes the overrides dict under the
            # node's own name (not /**), so it wins over the task file's node section.
            namespace='',
            parameters=[*map(str, spec.parameter_files), spec.parameters],
            remappings=list(spec.remappings),
            # The launch process is the nodes' parent: one that died while a node was still
            # starting is noticed by the node (see graph.PARENT_PID_ENV).
            additional_env={PARENT_PID_ENV: str(os.getpid())},
            output='screen',
        )
        for spec in specs
    ]
