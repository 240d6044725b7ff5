"""n3d_ros.sim"""
