"""ROS 2 layer: the only package that imports rclpy and message types.

Nodes: `spatial_query_node` (lifecycle node answering /spatial_query), `sim_camera_node`, `bag_player`.
Pure message<->array functions live in `conversions` and `markers`, tested without a node.
"""
