"""ament_python build of sindyrl_ros (colcon in a ROS 2 distro, or pip in a venv)."""

from glob import glob
import os

from setuptools import find_packages, setup

package_name = 'sindyrl_ros'
share = os.path.join('share', package_name)

setup(
    name=package_name,
    version='0.1.0',
    packages=find_packages(exclude=['test', 'test.*', 'benchmarks', 'benchmarks.*']),
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        (share, ['package.xml']),
        (os.path.join(share, 'launch'), glob('launch/*.launch.py')),
        (os.path.join(share, 'config'), glob('config/*.yaml')),
        (os.path.join(share, 'description'), glob('description/*')),
    ],
    install_requires=['setuptools'],
    zip_safe=True,
    maintainer='sindyrl_ros maintainers',
    maintainer_email='maintainers@sindyrl-ros.invalid',
    description='SINDy-RL on ROS 2: sparse dynamics models, surrogate training, real-time control',
    license='Apache-2.0',
    extras_require={'test': ['pytest', 'hypothesis']},
    entry_points={
        'console_scripts': [
            'sindyrl-ros = sindyrl_ros.cli:main',
            'plant = sindyrl_ros.nodes.plant:main',
            'sensor_ingestion = sindyrl_ros.nodes.sensor_ingestion:main',
            'controller = sindyrl_ros.nodes.controller:main',
            'model_updater = sindyrl_ros.nodes.model_updater:main',
            'policy_trainer = sindyrl_ros.nodes.policy_trainer:main',
            'run_supervisor = sindyrl_ros.nodes.run_supervisor:main',
            'serial_bridge = sindyrl_ros.nodes.serial_bridge:main',
            'episodes = sindyrl_ros.nodes.episodes:main',
            'rig_emulator = sindyrl_ros.hardware.emulator:main',
        ],
    },
)
