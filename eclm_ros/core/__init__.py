"""ROS-free learning core: importable without rclpy."""
