"""launch/bringup.launch.py and launch/n3d_ros.rviz are well-formed (launch itself is absent on the pip route)."""
from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest
import yaml

LAUNCH = Path(__file__).resolve().parents[1] / "launch"


def test_launch_file_parses_and_declares_arguments():
    tree = ast.parse((LAUNCH / "bringup.launch.py").read_text())
    funcs = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert "generate_launch_description" in funcs
    declared = {n.args[0].value for n in ast.walk(tree)
                if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "DeclareLaunchArgument"}
    assert {"namespace", "params_file", "image_topic", "camera_info_topic", "depth_topic", "use_rviz"} <= declared


def test_launch_description_loads_where_launch_exists():
    pytest.importorskip("launch_ros", reason="launch/launch_ros not installed (pip-wheel route)")
    spec = importlib.util.spec_from_file_location("bringup", LAUNCH / "bringup.launch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert len(module.generate_launch_description().entities) >= 8


def test_rviz_config_shows_markers_debug_image_and_tf():
    cfg = yaml.safe_load((LAUNCH / "n3d_ros.rviz").read_text())
    displays = {d["Class"]: d for d in cfg["Visualization Manager"]["Displays"]}
    assert displays["rviz_default_plugins/MarkerArray"]["Topic"]["Value"] == "markers"
    assert "rviz_default_plugins/TF" in displays
    images = [d for d in cfg["Visualization Manager"]["Displays"] if d["Class"] == "rviz_default_plugins/Image"]
    assert any(d["Topic"]["Value"] == "debug_image" for d in images)
