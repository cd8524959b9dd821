"""Everything that imports rclpy: the nodes, their message conversions, the launcher and the demo."""
