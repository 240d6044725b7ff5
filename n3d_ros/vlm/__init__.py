"""n3d_ros.vlm"""
