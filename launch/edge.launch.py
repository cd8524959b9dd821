"""A robot: edge_learner + bandwidth_monitor, fed by an existing camera topic of your perception stack."""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, SetEnvironmentVariable
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


def generate_launch_description() -> LaunchDescription:
    config = os.path.join(get_package_share_directory("eclm_ros"), "config")
    sim_time = {"use_sim_time": LaunchConfiguration("use_sim_time")}
    return LaunchDescription([
        DeclareLaunchArgument("namespace", default_value="robot1", description="robot namespace"),
        DeclareLaunchArgument("camera_topic", default_value="camera/image_raw", description="sensor_msgs/Image input"),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="follow /clock"),
        SetEnvironmentVariable("FASTDDS_DEFAULT_PROFILES_FILE", os.path.join(config, "fastdds_profile.xml")),
        Node(package="eclm_ros", executable="edge_learner", name="edge_learner", output="screen",
             namespace=LaunchConfiguration("namespace"),
             parameters=[os.path.join(config, "edge_learner.yaml"), sim_time],
             remappings=[("image", LaunchConfiguration("camera_topic"))]),
        Node(package="eclm_ros", executable="bandwidth_monitor", name="bandwidth_monitor", output="screen",
             namespace=LaunchConfiguration("namespace"),
             parameters=[os.path.join(config, "bandwidth_monitor.yaml"), sim_time]),
    ])
