"""n3d_ros.tools"""
