"""The cloud side: one cloud_coordinator serving every edge on the DDS domain."""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, SetEnvironmentVariable
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


def generate_launch_description() -> LaunchDescription:
    config = os.path.join(get_package_share_directory("eclm_ros"), "config")
    return LaunchDescription([
        DeclareLaunchArgument("namespace", default_value="eclm", description="cloud namespace"),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="follow /clock"),
        SetEnvironmentVariable("FASTDDS_DEFAULT_PROFILES_FILE", os.path.join(config, "fastdds_profile.xml")),
        Node(package="eclm_ros", executable="cloud_coordinator", name="cloud_coordinator", output="screen",
             namespace=LaunchConfiguration("namespace"),
             parameters=[os.path.join(config, "cloud_coordinator.yaml"),
                         {"use_sim_time": LaunchConfiguration("use_sim_time")}]),
    ])
