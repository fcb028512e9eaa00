"""The package's layers (README "Architecture"), checked on the source: who imports whom.

params -> core -> hardware -> ros -> nodes: each layer imports only the layers before it, the
first three never import rclpy or a ROS message package, and no node imports another node.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / 'sindyrl_ros'
LAYERS = ['params', 'core', 'hardware', 'ros', 'nodes']
# What each layer may import from the package besides the layers before it.
EXTRA = {'ros': {'graph'}}
ROS_PACKAGES = {
    'rclpy',
    'builtin_interfaces',
    'diagnostic_msgs',
    'nav_msgs',
    'rcl_interfaces',
    'rosgraph_msgs',
    'sensor_msgs',
    'std_msgs',
    'std_srvs',
    'simulation_interfaces',
}


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth (lazy imports in functions too)."""
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(encoding='utf-8'))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
            if node.module == 'sindyrl_ros':
                modules.update(f'sindyrl_ros.{alias.name}' for alias in node.names)
    return modules


def package_part(module: str) -> str | None:
    """'core' for sindyrl_ros.core.x; None outside the package."""
    parts = module.split('.')
    return parts[1] if parts[0] == 'sindyrl_ros' and len(parts) > 1 else None


@pytest.mark.parametrize('layer', LAYERS)
def test_each_layer_imports_only_the_layers_before_it(layer):
    allowed = set(LAYERS[: LAYERS.index(layer) + 1]) | EXTRA.get(layer, set())
    problems = []
    for path in sorted((PACKAGE / layer).glob('*.py')):
        for module in imported_modules(path):
            part = package_part(module)
            if part is not None and part not in allowed:
                problems.append(f'{path.relative_to(PACKAGE.parent)} imports {module}')
            if layer == 'nodes' and part == 'nodes':
                problems.append(f'{path.relative_to(PACKAGE.parent)} imports node {module}')
            if LAYERS.index(layer) < LAYERS.index('ros') and module.split('.')[0] in ROS_PACKAGES:
                problems.append(f'{path.relative_to(PACKAGE.parent)} imports ROS: {module}')
    assert not problems, '\n'.join(problems)


def test_the_check_sees_a_forbidden_import(tmp_path):
    bad = tmp_path / 'bad.py'
    bad.write_text('def f():\n    from sindyrl_ros.nodes import plant\n    import rclpy\n')
    assert {'sindyrl_ros.nodes', 'rclpy'} <= imported_modules(bad)
    assert package_part('sindyrl_ros.nodes.plant') == 'nodes'
    assert package_part('numpy') is None
