"""The generated ROS interfaces (msg/Object3D, msg/Object3DArray, srv/SpatialQuery) match the published contract,
serialize round-trip, and the packaging around them (namespace merge, console scripts, ROS test env) holds."""
from __future__ import annotations

import ast
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

REPO_ROOT = Path(__file__).resolve().parents[1]

# The contract outside clients rely on: field name -> rosidl type, in declaration order.
OBJECT3D_FIELDS = {
    "id": "string",
    "label": "string",
    "score": "float",
    "pose": "geometry_msgs/Pose",
    "size": "geometry_msgs/Vector3",
    "box_2d": "float[4]",
}
OBJECT3D_ARRAY_FIELDS = {"header": "std_msgs/Header", "objects": "sequence<n3d_ros/Object3D>"}
SPATIAL_QUERY_REQUEST_FIELDS = {
    "question": "string",
    "targets": "sequence<string>",
    "stamp": "builtin_interfaces/Time",
    "target_frame": "string",
    "timeout_sec": "float",
}
SPATIAL_QUERY_RESPONSE_FIELDS = {
    "success": "boolean",
    "message": "string",
    "answer": "string",
    "reasoning": "string",
    "objects": "sequence<n3d_ros/Object3D>",
    "header": "std_msgs/Header",
    "latency_sec": "float",
}


def _object(i: int = 0) -> object:
    from n3d_ros.msg import Object3D

    obj = Object3D(id=f"bbox_{i}", label="red mug", score=0.75)
    obj.pose.position.x, obj.pose.position.y, obj.pose.position.z = 0.1 * i, -0.25, 1.5
    obj.pose.orientation.z, obj.pose.orientation.w = 0.6, 0.8
    obj.size.x, obj.size.y, obj.size.z = 0.08, 0.12, 0.1
    obj.box_2d = [10.0, 20.5, 110.0, 220.25]
    return obj


@pytest.mark.requires_interfaces
class TestContract:
    def test_object3d_fields(self) -> None:
        from n3d_ros.msg import Object3D

        assert list(Object3D.get_fields_and_field_types().items()) == list(OBJECT3D_FIELDS.items())

    def test_object3d_array_fields(self) -> None:
        from n3d_ros.msg import Object3DArray

        assert list(Object3DArray.get_fields_and_field_types().items()) == list(OBJECT3D_ARRAY_FIELDS.items())

    def test_spatial_query_fields(self) -> None:
        from n3d_ros.srv import SpatialQuery

        assert (list(SpatialQuery.Request.get_fields_and_field_types().items())
                == list(SPATIAL_QUERY_REQUEST_FIELDS.items()))
        assert (list(SpatialQuery.Response.get_fields_and_field_types().items())
                == list(SPATIAL_QUERY_RESPONSE_FIELDS.items()))

    def test_box_2d_is_fixed_array_of_four_float32(self) -> None:
        from n3d_ros.msg import Object3D
        from rosidl_parser.definition import Array, BasicType

        slot = dict(zip(Object3D.get_fields_and_field_types(), Object3D.SLOT_TYPES))["box_2d"]
        assert isinstance(slot, Array) and slot.size == 4
        assert isinstance(slot.value_type, BasicType) and slot.value_type.typename == "float"
        default = Object3D().box_2d
        assert isinstance(default, np.ndarray) and default.shape == (4,) and default.dtype == np.float32
        # Kilted checks field values only when asked (check_fields=True or ROS_PYTHON_CHECK_FIELDS=1).
        msg = Object3D(check_fields=True)
        with pytest.raises(AssertionError):
            msg.box_2d = [1.0, 2.0, 3.0]

    def test_defaults(self) -> None:
        from n3d_ros.srv import SpatialQuery

        request = SpatialQuery.Request()
        assert request.question == "" and list(request.targets) == [] and request.timeout_sec == 0.0
        assert (request.stamp.sec, request.stamp.nanosec) == (0, 0)  # zero stamp = newest frame
        response = SpatialQuery.Response()
        assert response.success is False and list(response.objects) == []


@pytest.mark.requires_interfaces
class TestSerialization:
    def test_object3d_array_round_trip(self) -> None:
        from n3d_ros.msg import Object3DArray
        from rclpy.serialization import deserialize_message, serialize_message

        msg = Object3DArray(objects=[_object(0), _object(1)])
        msg.header.frame_id = "camera_color_optical_frame"
        msg.header.stamp.sec, msg.header.stamp.nanosec = 1_700_000_000, 123_456_789
        data = serialize_message(msg)
        assert isinstance(data, bytes) and len(data) > 0
        back = deserialize_message(data, Object3DArray)
        assert back == msg
        assert back.objects[1].id == "bbox_1"
        np.testing.assert_array_equal(back.objects[0].box_2d, np.float32([10.0, 20.5, 110.0, 220.25]))

    def test_spatial_query_round_trip(self) -> None:
        from n3d_ros.srv import SpatialQuery
        from rclpy.serialization import deserialize_message, serialize_message

        request = SpatialQuery.Request(question="how far is the mug from the laptop?", targets=["mug", "laptop"],
                                       target_frame="base_link", timeout_sec=2.5)
        request.stamp.sec = 42
        assert deserialize_message(serialize_message(request), SpatialQuery.Request) == request

        response = SpatialQuery.Response(success=True, message="", answer="0.42 m", reasoning="centres 0.42 m apart",
                                         objects=[_object(0)], latency_sec=0.125)
        response.header.frame_id = "base_link"
        assert deserialize_message(serialize_message(response), SpatialQuery.Response) == response

    @settings(max_examples=60, deadline=None)
    @given(
        text=st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40),
        score=st.floats(-1.0, 1.0, width=32),
        box=st.lists(st.floats(-1e4, 1e4, width=32), min_size=4, max_size=4),
    )
    def test_object3d_round_trip_property(self, text: str, score: float, box: list[float]) -> None:
        from n3d_ros.msg import Object3D
        from rclpy.serialization import deserialize_message, serialize_message

        msg = Object3D(id=text, label=text[::-1], score=score, box_2d=box)
        back = deserialize_message(serialize_message(msg), Object3D)
        assert back.id == text and back.label == text[::-1]
        assert back.score == score  # float32-representable by construction: exact
        np.testing.assert_array_equal(back.box_2d, np.float32(box))


def test_interface_files_document_every_field() -> None:
    """Each field line in msg/ and srv/ has a comment line right above it (the contract lives in the files)."""
    files = sorted([*REPO_ROOT.glob("msg/*.msg"), *REPO_ROOT.glob("srv/*.srv")])
    assert [f.name for f in files] == ["Object3D.msg", "Object3DArray.msg", "SpatialQuery.srv"]
    for path in files:
        lines = path.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines):
            if line.strip() and not line.startswith("#") and line.strip() != "---":
                assert i > 0 and lines[i - 1].startswith("#"), f"{path.name}:{i + 1} field '{line}' has no comment"


@pytest.mark.requires_interfaces
def test_generated_portion_merges_into_source_package() -> None:
    import n3d_ros
    import n3d_ros.msg

    # The source __init__.py (not the generated, empty one) ran: it defines __version__ and extends __path__.
    assert isinstance(getattr(n3d_ros, "__version__", None), str)
    source = Path(n3d_ros.__file__).resolve().parent
    generated = Path(n3d_ros.msg.__file__).resolve().parents[1]
    # pip route: the generated half lives in site-packages and must stay a namespace portion (an __init__.py there
    # could shadow the source tree). colcon route: both halves share one install directory.
    assert generated == source or not (generated / "__init__.py").exists()


def _console_scripts() -> list[str]:
    tree = ast.parse((REPO_ROOT / "setup.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "CONSOLE_SCRIPTS" for t in node.targets):
            return list(ast.literal_eval(node.value))
    raise AssertionError("setup.py has no CONSOLE_SCRIPTS list")


def test_console_scripts_resolve_and_match_cmake_pattern() -> None:
    scripts = _console_scripts()
    names = {s.split(" = ")[0] for s in scripts}
    assert names == {"spatial_query_node", "sim_camera_node", "n3d-query", "n3d-build-engine", "n3d-bench",
                     "n3d-demo", "n3d-train-compact", "n3d-record-bag", "n3d-bag-player"}
    setup_lines = (REPO_ROOT / "setup.py").read_text(encoding="utf-8").splitlines()
    # CMakeLists.txt reads these lines with this pattern to make lib/n3d_ros/<name>: keep them in step.
    cmake_line = re.compile(r'^[ \t]*"[A-Za-z0-9_-]+ = n3d_ros[A-Za-z0-9_.]*:[A-Za-z0-9_]+",?[ \t]*$')
    assert sum(bool(cmake_line.match(line)) for line in setup_lines) == len(scripts)
    for entry in scripts:
        module, func = entry.split(" = ")[1].split(":")
        source = REPO_ROOT / (module.replace(".", "/") + ".py")
        assert source.is_file(), f"{entry}: {source} missing"
        assert re.search(rf"^def {func}\(", source.read_text(encoding="utf-8"), re.M), f"{entry}: no {func}()"


def test_ros_env_is_isolated(ros_env: dict[str, str]) -> None:
    assert ros_env["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"
    assert os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"
    assert 20 <= int(ros_env["ROS_DOMAIN_ID"]) <= 99
    assert sys.prefix in ros_env["AMENT_PREFIX_PATH"].split(os.pathsep)


def test_domain_ids_are_disjoint_across_xdist_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import _domain_id_sequence

    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "3")
    shares = []
    for worker in range(3):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", f"gw{worker}")
        ids = _domain_id_sequence()
        shares.append([next(ids) for _ in range(27)])
    assert [len(set(share)) for share in shares] == [27, 27, 26]  # each worker cycles through its own share
    assert not (set(shares[0]) & set(shares[1]) or set(shares[0]) & set(shares[2]) or set(shares[1]) & set(shares[2]))
    assert set().union(*shares) == set(range(20, 100))
