"""A robot: edge_learner + bandwidth_monitor in the robot's namespace, fed by a camera topic of your perception
stack (raw, or what image_transport publishes on <camera_topic>/compressed with image_transport:=compressed)."""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration

from eclm_ros.ros.launch_common import common_arguments, node


def generate_launch_description() -> LaunchDescription:
    robot, camera = LaunchConfiguration("namespace"), LaunchConfiguration("camera_topic")
    return LaunchDescription([
        DeclareLaunchArgument("namespace", default_value="robot1", description="robot namespace"),
        DeclareLaunchArgument("camera_topic", default_value="camera/image_raw",
                              description="camera base topic (sensor_msgs/Image)"),
        DeclareLaunchArgument("image_transport", default_value="raw",
                              description="raw: Image on camera_topic | compressed: CompressedImage on "
                                          "camera_topic/compressed"),
        *common_arguments(),
        node("edge_learner", robot, {"image_transport": LaunchConfiguration("image_transport")},
             remappings=[("image", camera), ("image/compressed", [camera, "/compressed"])]),
        node("bandwidth_monitor", robot),
    ])
