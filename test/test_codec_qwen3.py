"""Qwen3-VL bbox_3d JSON: angle convention, defensive parsing, encode/decode round trip."""
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from n3d_ros.core.box import Box3D
from n3d_ros.core.box_overlap import iou_3d
from n3d_ros.core.codec_qwen3 import (decode_qwen3_json, encode_qwen3_json,
                                      qwen3_angles_to_rotation, qwen3_grounding_prompt,
                                      rotation_to_qwen3_angles, virtual_camera)
from n3d_ros.core.frames import Frame, axis_rotation
from n3d_ros.core.objects import GroundedObject

MUG = {"bbox_3d": [0.1, 0.2, 2.0, 0.1, 0.12, 0.1, 0.0, 0.25, 0.0], "label": "mug"}
LAPTOP = {"bbox_3d": [-0.4, 0.3, 2.5, 0.35, 0.02, 0.25, 0.0, -0.1, 0.0], "label": "laptop"}


def _corners_cookbook(bbox):
    """Independent re-implementation of the cookbook's drawing code (rotate_xyz on corners)."""
    x, y, z, xs, ys, zs, pitch, yaw, roll = bbox
    pitch, yaw, roll = (math.radians(a * 180) for a in (pitch, yaw, roll))
    out = []
    for sx in (-1, 1):
        for sy in (-1, 1):
            for sz in (-1, 1):
                x0, y0, z0 = sx * xs / 2, sy * ys / 2, sz * zs / 2
                cp, sp, cw, sw = math.cos(pitch), math.sin(pitch), math.cos(yaw), math.sin(yaw)
                x1, y1, z1 = x0, y0 * cp - z0 * sp, y0 * sp + z0 * cp
                x2, y2, z2 = x1 * cw + z1 * sw, y1, -x1 * sw + z1 * cw
                x3, y3 = x2 * math.cos(roll) - y2 * math.sin(roll), x2 * math.sin(roll) + y2 * math.cos(roll)
                out.append([x3 + x, y3 + y, z2 + z])
    return np.array(out)


def test_angle_convention_matches_reference_drawing_code():
    bbox = [0.3, -0.1, 2.0, 0.5, 0.3, 0.8, 0.1, -0.3, 0.2]
    box = decode_qwen3_json(json.dumps([{"bbox_3d": bbox, "label": "x"}])).objects[0].box
    ours = box.corners()
    ref = _corners_cookbook(bbox)
    # same corner set (order differs)
    d = np.linalg.norm(ours[:, None] - ref[None], axis=-1)
    assert np.all(d.min(axis=1) < 1e-9)
    # slot 7 alone is a heading about optical y
    np.testing.assert_allclose(qwen3_angles_to_rotation(0, 0.25, 0), axis_rotation(1, math.pi / 4))


def test_fenced_bare_single_and_chatter():
    arr = json.dumps([MUG, LAPTOP])
    for text in (f"```json\n{arr}\n```", arr, f"Here:\n```\n{arr}\n```\nDone.", f"{arr} hope it helps"):
        res = decode_qwen3_json(text)
        assert [o.label for o in res.objects] == ["mug", "laptop"], text
    res = decode_qwen3_json(json.dumps(MUG))
    assert [o.label for o in res.objects] == ["mug"]
    assert res.objects[0].box.frame == Frame.OPTICAL
    np.testing.assert_allclose(res.objects[0].box.center, [0.1, 0.2, 2.0])


def test_truncated_duplicates_and_bad_values():
    items = [MUG, MUG, {"bbox_3d": [0, "a", 1, 1, 1, 1, 0, 0, 0], "label": "bad"},
             {"bbox_3d": [0, 0, 1, 1, 1], "label": "short"}, {"label": "nobox"}, 5,
             {"bbox_3d": [0, 0, 1e300 * 10, 1, 1, 1, 0, 0, 0]}, LAPTOP]
    text = "```json\n" + json.dumps(items)[:-30]  # cut inside the last object
    res = decode_qwen3_json(text)
    assert [o.label for o in res.objects] == ["mug"]
    joined = " | ".join(res.problems)
    for word in ("truncated", "duplicate", "non-numeric", "got 5", "missing bbox_3d", "out of range"):
        assert word in joined, word
    # complete version keeps the laptop
    full = decode_qwen3_json(json.dumps(items))
    assert [o.label for o in full.objects] == ["mug", "laptop"]
    # six numbers: axis aligned, accepted
    six = decode_qwen3_json('[{"bbox_3d":[0,0,2,1,1,1],"label":"box"}]').objects[0]
    np.testing.assert_allclose(six.box.rotation, np.eye(3))
    assert decode_qwen3_json("no json here").problems == ["no JSON array or object in the output"]


def test_box_2d_with_camera_and_virtual_camera():
    cam = virtual_camera(640, 480)
    assert cam.fx == pytest.approx(640 / (2 * math.tan(math.radians(30))))
    assert cam.fy == pytest.approx(480 / (2 * math.tan(math.radians(30))))
    assert (cam.cx, cam.cy) == (320.0, 240.0)
    obj = decode_qwen3_json(json.dumps([MUG]), cam).objects[0]
    u0, v0, u1, v1 = obj.box_2d
    u, v = cam.project(np.array([0.1, 0.2, 2.0]))
    assert u0 < u < u1 and v0 < v < v1
    assert decode_qwen3_json(json.dumps([MUG])).objects[0].box_2d is None
    with pytest.raises(ValueError):
        virtual_camera(640, 480, fov_deg=0)


def test_prompt():
    p = qwen3_grounding_prompt(["mug", "laptop", "red chair"])
    assert p.startswith("Locate the mug, laptop and red chair in the provided image")
    assert '"bbox_3d":[x_center, y_center, z_center, x_size, y_size, z_size, roll, pitch, yaw]' in p
    q = qwen3_grounding_prompt("How far is the mug from the laptop?")
    assert q.startswith("How far is the mug from the laptop? Locate the objects")
    with pytest.raises(ValueError):
        qwen3_grounding_prompt([])


angle = st.floats(-0.49, 0.49)


@settings(max_examples=100, deadline=None)
@given(st.tuples(*[st.floats(-2, 2)] * 2), st.floats(0.5, 6), st.tuples(*[st.floats(0.05, 2)] * 3),
       angle, angle, angle, st.sampled_from(list(Frame)))
def test_encode_decode_round_trip(xy, z, size, a6, a7, a8, frame):
    box = Box3D([xy[0], xy[1], z], size, qwen3_angles_to_rotation(a6, a7, a8)).to_frame(frame)
    text = encode_qwen3_json([GroundedObject(box, "thing")], decimals=8)
    got = decode_qwen3_json(text).objects[0]
    assert got.label == "thing"
    np.testing.assert_allclose(got.box.corners(), box.to_frame(Frame.OPTICAL).corners(), atol=1e-6)
    np.testing.assert_allclose(rotation_to_qwen3_angles(qwen3_angles_to_rotation(a6, a7, a8)),
                               [a6, a7, a8], atol=1e-9)
    assert iou_3d(got.box, box) == pytest.approx(1.0, abs=1e-6)
