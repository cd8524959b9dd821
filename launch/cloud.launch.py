"""The cloud side: one cloud_coordinator, in `cloud_namespace`, serving every edge on the DDS domain."""
from launch import LaunchDescription
from launch.substitutions import LaunchConfiguration

from eclm_ros.ros.launch_common import common_arguments, node


def generate_launch_description() -> LaunchDescription:
    return LaunchDescription([*common_arguments(),
                              node("cloud_coordinator", LaunchConfiguration("cloud_namespace"))])
