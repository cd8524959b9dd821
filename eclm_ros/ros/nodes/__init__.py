"""rclpy nodes of eclm_ros: one node class and main() per module."""
