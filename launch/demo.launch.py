"""One robot and its cloud on one machine: camera_stream + edge_learner + bandwidth_monitor in the robot's
namespace, cloud_coordinator in `cloud_namespace`; the key ring (`keys_dir`) gets the cloud key and the robot's
edge key if it has none, so the pair is signed both ways from the first run."""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration

from eclm_ros.ros.launch_common import common_arguments, enrol_keys, node


def generate_launch_description() -> LaunchDescription:
    robot = LaunchConfiguration("namespace")
    return LaunchDescription([
        DeclareLaunchArgument("namespace", default_value="robot1", description="robot namespace"),
        *common_arguments(),
        enrol_keys("namespace"),
        node("camera_stream", robot),
        node("edge_learner", robot),
        node("bandwidth_monitor", robot),
        node("cloud_coordinator", LaunchConfiguration("cloud_namespace")),
    ])
