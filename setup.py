"""pip install -e . : the ROS-free learning core and the `eclm-ros` command.

The ROS 2 side (msg/srv interfaces, node executables, launch files) is built by colcon/CMake from
CMakeLists.txt; this file exists so the core is usable from a notebook or a plain Python project.
"""
from setuptools import find_packages, setup

setup(
    name="eclm_ros",
    version="0.1.0",
    description="Edge-cloud collaborative learning with continuous environment adaptation (ROS 2)",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["eclm_ros", "eclm_ros.*"]),
    package_data={"eclm_ros": ["weights/*.pt", "weights/manifest.json"]},  # the trained defaults
    install_requires=[
        "numpy>=1.21.5",  # Humble's apt numpy (requirements-humble.txt, tested there)
        "torch>=2.1",
        "onnxruntime>=1.12.1",  # the newest that takes numpy 1.21.5
        "onnx>=1.15",
        "opencv-python-headless>=4.8",
        "cryptography>=41",
        "tqdm>=4.60",
        "rich>=13",
        "matplotlib>=3.7",
    ],
    extras_require={"ray": ["ray==2.60.0"]},  # the cloud's learning on Ray workers (requirements-ray.txt)
    entry_points={"console_scripts": ["eclm-ros = eclm_ros.cli:main"]},
)
