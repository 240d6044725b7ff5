"""Bring up spatial_query_node (optionally RViz) in a namespace with topic remaps.

    ros2 launch n3d_ros bringup.launch.py namespace:=front image_topic:=/camera/color/image_raw \
        camera_info_topic:=/camera/color/camera_info depth_topic:=/camera/aligned_depth_to_color/image_raw

Needs `launch` and `launch_ros` (a full ROS 2 install; the PyPI wheel set has neither).
"""
import os

from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


def _share_file(*parts):
    try:
        return os.path.join(get_package_share_directory("n3d_ros"), *parts)
    except PackageNotFoundError:  # running from a source checkout
        return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), *parts)


def generate_launch_description():
    args = [
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node and its topics"),
        DeclareLaunchArgument("params_file", default_value=_share_file("config", "params.yaml"),
                              description="parameters file (see config/params.yaml)"),
        DeclareLaunchArgument("image_topic", default_value="image", description="colour image (rgb8/bgr8/...)"),
        DeclareLaunchArgument("camera_info_topic", default_value="camera_info", description="its CameraInfo"),
        DeclareLaunchArgument("depth_topic", default_value="depth",
                              description="registered depth (16UC1 mm / 32FC1 m); unused if absent"),
        DeclareLaunchArgument("use_rviz", default_value="false", description="start RViz with launch/n3d_ros.rviz"),
        DeclareLaunchArgument("fixed_frame", default_value="camera_color_optical_frame",
                              description="RViz fixed frame"),
    ]
    namespace = LaunchConfiguration("namespace")
    node = Node(
        package="n3d_ros", executable="spatial_query_node", name="spatial_query_node", namespace=namespace,
        parameters=[LaunchConfiguration("params_file")],
        remappings=[("image", LaunchConfiguration("image_topic")),
                    ("camera_info", LaunchConfiguration("camera_info_topic")),
                    ("depth", LaunchConfiguration("depth_topic"))],
        output="screen", emulate_tty=True)
    rviz = Node(
        package="rviz2", executable="rviz2", name="rviz2", namespace=namespace,
        arguments=["-d", _share_file("launch", "n3d_ros.rviz"), "-f", LaunchConfiguration("fixed_frame")],
        condition=IfCondition(LaunchConfiguration("use_rviz")), output="screen")
    return LaunchDescription(args + [node, rviz])
