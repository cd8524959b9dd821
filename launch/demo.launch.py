"""One robot and its cloud on one machine: camera_stream + edge_learner + bandwidth_monitor + cloud_coordinator."""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, SetEnvironmentVariable
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


def generate_launch_description() -> LaunchDescription:
    config = os.path.join(get_package_share_directory("eclm_ros"), "config")
    robot = LaunchConfiguration("namespace")
    sim_time = {"use_sim_time": LaunchConfiguration("use_sim_time")}

    def node(name: str, namespace) -> Node:
        return Node(package="eclm_ros", executable=name, name=name, namespace=namespace, output="screen",
                    parameters=[os.path.join(config, f"{name}.yaml"), sim_time])

    return LaunchDescription([
        DeclareLaunchArgument("namespace", default_value="robot1", description="robot namespace"),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="follow /clock"),
        SetEnvironmentVariable("FASTDDS_DEFAULT_PROFILES_FILE", os.path.join(config, "fastdds_profile.xml")),
        node("camera_stream", robot),
        node("edge_learner", robot),
        node("bandwidth_monitor", robot),
        node("cloud_coordinator", "eclm"),
    ])
