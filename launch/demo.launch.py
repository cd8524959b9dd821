"""One robot and its cloud on one machine: camera_stream + edge_learner + bandwidth_monitor in the robot's
namespace, cloud_coordinator in `cloud_namespace`."""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration

from eclm_ros.ros.launch_common import common_arguments, node


def generate_launch_description() -> LaunchDescription:
    robot = LaunchConfiguration("namespace")
    return LaunchDescription([
        DeclareLaunchArgument("namespace", default_value="robot1", description="robot namespace"),
        *common_arguments(),
        node("camera_stream", robot),
        node("edge_learner", robot),
        node("bandwidth_monitor", robot),
        node("cloud_coordinator", LaunchConfiguration("cloud_namespace")),
    ])
