"""n3d_ros.geometry"""
