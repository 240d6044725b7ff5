"""n3d_ros.pipeline"""
