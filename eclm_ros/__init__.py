"""eclm_ros: edge-cloud collaborative learning with continuous environment adaptation for ROS 2.

The source tree and the build's generated interfaces (eclm_ros.msg, eclm_ros.srv and their typesupport
libraries, installed by colcon/CMake) are two halves of one package: extending ``__path__`` lets
``import eclm_ros.msg`` work from a source checkout once the package has been built.
"""
from pkgutil import extend_path

__path__ = extend_path(__path__, __name__)
__version__ = "0.1.0"
