"""n3d_ros.ros"""
