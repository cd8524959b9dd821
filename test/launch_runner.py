"""`ros2 launch eclm_ros FILE name:=value ...` without the ros2 CLI (not available from a registry): one
LaunchService that includes the installed launch file, as ros2launch does, and exits with its return code."""
import os
import sys

from ament_index_python.packages import get_package_share_directory
from launch import LaunchService
from launch.actions import IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource


def main() -> int:
    path = os.path.join(get_package_share_directory("eclm_ros"), "launch", sys.argv[1])
    arguments = [tuple(a.split(":=", 1)) for a in sys.argv[2:]]
    service = LaunchService(argv=sys.argv[2:])
    service.include_launch_description(IncludeLaunchDescription(PythonLaunchDescriptionSource(path),
                                                                launch_arguments=arguments))
    return service.run()


if __name__ == "__main__":
    sys.exit(main())
