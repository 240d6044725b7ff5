"""n3d-query formatting and arguments (no service needed)."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("n3d_ros.srv", reason="n3d_ros interfaces not built (scripts/setup_env.sh)")

from n3d_ros.core.box import Box3D  # noqa: E402
from n3d_ros.core.objects import GroundedObject  # noqa: E402
from n3d_ros.ros.conversions import ns_to_stamp, object_to_msg  # noqa: E402
from n3d_ros.ros.query_client import (build_request, format_table, parse_args, response_to_dict,  # noqa: E402
                                      service_path)
from n3d_ros.srv import SpatialQuery  # noqa: E402


def _response(success=True):
    res = SpatialQuery.Response(success=success, message="" if success else "no camera frame received yet",
                                answer="0.42 m", reasoning="centre to centre", latency_sec=0.5)
    res.header.frame_id = "cam"
    res.header.stamp = ns_to_stamp(1_500_000_000)
    box = Box3D.from_yaw([0.5, 0.1, 2.0], [0.3, 0.2, 0.4], 0.5)
    res.objects = [object_to_msg(GroundedObject(box, "red box", 0.9, "bbox_0"))]
    return res


def test_response_to_dict_and_json():
    d = response_to_dict(_response())
    assert d["success"] and d["answer"] == "0.42 m" and d["frame_id"] == "cam" and d["stamp_ns"] == 1_500_000_000
    assert d["objects"][0]["center"] == pytest.approx([0.5, 0.1, 2.0])
    assert d["objects"][0]["box_2d"] == [-1.0] * 4
    json.dumps(d)


def test_table_has_answer_and_object_row():
    text = format_table(response_to_dict(_response()))
    assert "Answer: 0.42 m" in text and "red box" in text and "bbox_0" in text
    row = next(line for line in text.splitlines() if line.startswith("bbox_0"))
    assert row.split()[-1] == "29"  # yaw 0.5 rad in degrees
    assert "FAILED: no camera frame" in format_table(response_to_dict(_response(False)))


def test_args_and_request():
    a = parse_args(["How far?", "--targets", "mug", "laptop", "--timeout", "7", "--target-frame", "map",
                    "--namespace", "/front", "--json"])
    assert a.targets == ["mug", "laptop"] and a.timeout == 7.0 and a.json
    assert service_path(a.namespace, a.service) == "/front/spatial_query"
    assert service_path("", "spatial_query") == "/spatial_query"
    assert service_path("/x", "/abs") == "/abs"
    req = build_request("How far?", a.targets, target_frame="map", timeout_sec=7)
    assert list(req.targets) == ["mug", "laptop"] and req.timeout_sec == 7.0
