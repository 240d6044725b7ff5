"""N3D-VLM box grammar: bins and metric round trips, tolerant parsing, prompts, reasoning context."""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from n3d_ros.core.box import Box3D
from n3d_ros.core.box_overlap import iou_3d
from n3d_ros.core.camera import CameraModel
from n3d_ros.core.codec_n3d import (CODE_TEMPLATE, decode_boxes, detection_prompt,
                                    encode_boxes, grounding_prompt, reasoning_prompt,
                                    reasoning_suffix)
from n3d_ros.core.frames import Frame, rotation_from_euler_xyz
from n3d_ros.core.objects import GroundedObject
from n3d_ros.core.pointcloud_norm import PointCloudNorm

# demo2 of the public N3D-VLM repo: normalized intrinsics and the model's decoded answer.
DEMO_INTR = np.array([[1.2240319, 0, 0.5], [0, 1.8346145, 0.5], [0, 0, 1]])
DEMO_CAM = CameraModel.from_normalized_intrinsics(DEMO_INTR, 640, 427)
DEMO_ANSWER = (
    "bbox_0=Bbox(person,0.519,0.587,2.75349760055542,0.0,0.3737176954746247,0.34145429730415344,"
    "0.26751734316349035)\nbbox_1=Bbox(orange/tangerine,0.72,0.858,1.372624158859253,0.0,"
    "0.21643362939357758,0.07124833762645721,0.11292189359664918)\n")


def _angle_diff(a, b):
    return abs((a - b + math.pi) % (2 * math.pi) - math.pi)


def test_decode_reference_answer():
    res = decode_boxes(DEMO_ANSWER, DEMO_CAM)
    assert res.problems == []
    person, orange = res.objects
    assert (person.id, person.label, orange.label) == ("bbox_0", "person", "orange/tangerine")
    assert person.box.frame == Frame.OPTICAL and person.score == -1
    # the reference's own reasoning text states these N3D centres (2 decimals)
    np.testing.assert_allclose(person.to_frame(Frame.N3D).box.center, [-0.04, -0.13, 2.75], atol=0.006)
    np.testing.assert_allclose(orange.to_frame(Frame.N3D).box.center, [-0.25, -0.27, 1.37], atol=0.006)
    np.testing.assert_allclose(person.box.size, [0.3737, 0.3415, 0.2675], atol=1e-4)
    u0, v0, u1, v1 = person.box_2d
    assert u0 < 0.519 * 640 < u1 and v0 < 0.587 * 427 < v1


def test_reasoning_suffix_matches_reference_wording():
    objs = decode_boxes(DEMO_ANSWER, DEMO_CAM).objects
    s1 = reasoning_suffix(objs[:1], DEMO_CAM)
    assert s1 == (" The 3D bbox of person is [-0.04, -0.13, 2.75, 0.37, 0.34, 0.27]. "
                  "The 2D bbox of person is [0.52, 0.59, 0.17, 0.24]. ")
    s2 = reasoning_suffix(objs, DEMO_CAM)
    assert s2.startswith(" The 3D bbox of person is [-0.04, -0.13, 2.75, 0.37, 0.34, 0.27]. "
                         "The 3D bbox of orange/tangerine is [-0.25, -0.27, 1.37, 0.22, 0.07, 0.11]. "
                         "The 2D bbox of person is")
    many = reasoning_suffix(objs * 2, DEMO_CAM)
    assert "['0_person', '1_orange/tangerine', '0_person', '1_orange/tangerine']" in many
    assert "and" in reasoning_suffix(objs + objs[:1], DEMO_CAM)
    assert reasoning_suffix([], DEMO_CAM) == ""
    p = reasoning_prompt("<image>Is the person behind the orange? Answer briefly.", objs[:1], DEMO_CAM)
    assert p == "<image>Is the person behind the orange?" + s1


def test_prompts():
    assert grounding_prompt("How far is the mug from the laptop?") == (
        "<image>How far is the mug from the laptop? First locate the bbox of the aforementioned "
        "object(s). The reference code is as followed: " + CODE_TEMPLATE)
    assert grounding_prompt("<image>Q?").count("<image>") == 1
    assert detection_prompt() == "<image>Detect boxes. The reference code is as followed: " + CODE_TEMPLATE
    assert CODE_TEMPLATE.splitlines()[2:] == [
        "    class: str", "    position_u: int", "    position_v: int", "    position_z: int",
        "    angle_y: int", "    scale_x: int", "    scale_y: int", "    scale_z: int"]


def test_forms_and_tolerance():
    norm = PointCloudNorm(np.array([-1.0, -1.0, 0.5]), 0.5)
    line = "bbox_3 = Bbox(  red  mug, with handle (left) ,519, 587, 300, 500, 100, 120, 90)"
    res = decode_boxes(line, DEMO_CAM, norm)
    assert res.problems == [] and len(res.objects) == 1
    obj = res.objects[0]
    assert obj.id == "bbox_3" and obj.label == "red  mug, with handle (left)".strip()
    z = 300 / 1000 * 2.0 / 0.5 + 0.5
    assert obj.box.center[2] == pytest.approx(z)
    np.testing.assert_allclose(obj.box.size, np.array([100, 120, 90]) / 1000 * 0.625 / 0.5)
    assert obj.to_frame(Frame.N3D).box.yaw == pytest.approx(0.0, abs=1e-9)
    # integer bins without a norm: reported, skipped
    res = decode_boxes(line, DEMO_CAM, None)
    assert res.objects == [] and "PointCloudNorm" in res.problems[0]
    # forced forms
    res = decode_boxes("bbox_0=Bbox(a,0.5,0.5,2,0.1,0.2,0.2,0.2)", DEMO_CAM, norm, form="auto")
    assert res.objects[0].box.center[2] == pytest.approx(2.0)
    res = decode_boxes("bbox_0=Bbox(a,500,500,400,500,100,100,100)", DEMO_CAM, norm, form="metric")
    assert res.objects[0].box.center[2] == pytest.approx(400.0)


def test_garbage_is_reported_not_raised():
    text = ("Here you go\nbbox_0=Bbox(cup,0.5,0.5,nan,0,1,1,1)\nbbox_1=Bbox(cup,0.5,0.5,-2,0,1,1,1)\n"
            "bbox_2=Bbox(cup,0.5,0.5,2,0,1,1)\nbbox_3=Bbox(cup,0.5,0.5,2,0,1,1,1\n"
            "bbox_4=Bbox(plate,0.4,0.6,1.5,0.3,0.2,0.05,0.2) trailing\n")
    res = decode_boxes(text, DEMO_CAM)
    assert [o.id for o in res.objects] == ["bbox_4"]
    assert len(res.problems) == 6  # lead text, nan, negative depth, 6 numbers, no ')', trailing
    assert decode_boxes("", DEMO_CAM).problems == []
    assert decode_boxes(12, DEMO_CAM).problems  # type: ignore[arg-type]
    assert decode_boxes("x", DEMO_CAM, form="weird").problems  # type: ignore[arg-type]


def _camera(fx_n, fy_n, w, h):
    return CameraModel.from_normalized_intrinsics(
        np.array([[fx_n, 0, 0.5], [0, fy_n, 0.5], [0, 0, 1]]), w, h)


box_case = st.fixed_dictionaries(dict(
    fx=st.floats(0.6, 1.6), fy=st.floats(0.6, 2.0), u=st.floats(0.05, 0.95), v=st.floats(0.05, 0.95),
    z_norm=st.floats(0.05, 1.9), sizes=st.tuples(*[st.floats(0.05, 0.6)] * 3),
    yaw=st.floats(-3.1, 3.1), scale=st.floats(0.2, 1.5), shift=st.tuples(*[st.floats(-1, 1)] * 3),
    frame=st.sampled_from(list(Frame))))


def _make(case):
    cam = _camera(case["fx"], case["fy"], 640, 480)
    norm = PointCloudNorm(np.array(case["shift"]), case["scale"])
    z = case["shift"][2] + case["z_norm"] / case["scale"]
    if z < 0.1:
        return None
    xn = (case["u"] - 0.5) / case["fx"]
    yn = (case["v"] - 0.5) / case["fy"]
    center_n3d = np.array([-xn * z, -yn * z, z])
    size = np.array(case["sizes"]) / case["scale"]
    box = Box3D.from_yaw(center_n3d, size, case["yaw"], frame=Frame.N3D).to_frame(case["frame"])
    return cam, norm, GroundedObject(box, "thing", id="bbox_7")


@settings(max_examples=150, deadline=None)
@given(box_case)
def test_bins_round_trip(case):
    made = _make(case)
    if made is None:
        return
    cam, norm, obj = made
    text = encode_boxes([obj], cam, norm, bins=True)
    assert text.startswith("bbox_7=Bbox(thing,") and text.endswith(")\n")
    res = decode_boxes(text, cam, norm)
    assert res.problems == [] and len(res.objects) == 1
    got = res.objects[0].to_frame(Frame.N3D).box
    want = obj.box.to_frame(Frame.N3D)
    s = norm.scale
    dz = 2.0 / 1000 / s
    z = want.center[2]
    # u, v are rounded (half a bin) and x = x_n * z inherits the depth error too
    xn = max(abs(case["u"] - 0.5) / case["fx"], abs(case["v"] - 0.5) / case["fy"])
    xy_tol = 0.0005 / min(case["fx"], case["fy"]) * (z + dz) + xn * dz + 1e-9
    assert abs(got.center[2] - z) <= dz + 1e-9
    assert np.all(np.abs(got.center[:2] - want.center[:2]) <= xy_tol)
    assert np.all(np.abs(got.size - want.size) <= 0.625 / 1000 / s + 1e-9)
    # yaw, modulo the 180 deg symmetry of a box
    d = _angle_diff(got.yaw, want.yaw)
    assert min(d, abs(d - math.pi)) <= 4 * math.pi / 1000 + 1e-9


@settings(max_examples=100, deadline=None)
@given(box_case)
def test_metric_round_trip(case):
    made = _make(case)
    if made is None:
        return
    cam, _, obj = made
    res = decode_boxes(encode_boxes([obj], cam, bins=False), cam)
    assert res.problems == []
    got = res.objects[0]
    assert got.box.frame == Frame.OPTICAL
    np.testing.assert_allclose(got.to_frame(Frame.N3D).box.center, obj.to_frame(Frame.N3D).box.center,
                               atol=2e-5 * max(1.0, obj.box.center[2]))
    assert iou_3d(got.box, obj.box) > 0.999


def test_tilted_box_and_errors():
    cam = _camera(1.0, 1.0, 640, 480)
    leaning = Box3D([0, 0.1, 2.0], [0.3, 1.0, 0.4], rotation_from_euler_xyz(0.1, 0.3, 0.05))
    got = decode_boxes(encode_boxes([GroundedObject(leaning, "pole")], cam, bins=False), cam).objects[0]
    assert got.to_frame(Frame.N3D).box.is_yaw_only
    assert got.to_frame(Frame.N3D).box.size[1] == pytest.approx(1.0)  # height stays on y
    assert iou_3d(got.box, leaning) > 0.7
    # lying on its side (box y turned onto the optical z axis): the 0.4 side becomes the height
    lying = Box3D([0, 0.1, 2.0], [0.3, 1.0, 0.4], rotation_from_euler_xyz(np.pi / 2, 0, 0))
    got = decode_boxes(encode_boxes([GroundedObject(lying, "pole")], cam, bins=False), cam).objects[0]
    assert got.to_frame(Frame.N3D).box.size[1] == pytest.approx(0.4)
    assert iou_3d(got.box, lying) == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="in front of the camera"):
        encode_boxes([GroundedObject(Box3D([0, 0, -1], [1, 1, 1]), "x")], cam, bins=False)
    with pytest.raises(ValueError, match="PointCloudNorm"):
        encode_boxes([GroundedObject(Box3D([0, 0, 1], [1, 1, 1]), "x")], cam, None, bins=True)
    # label newlines cannot break the line structure
    txt = encode_boxes([GroundedObject(Box3D([0, 0, 1], [1, 1, 1]), "a\nb")], cam, bins=False)
    assert txt.count("\n") == 1 and decode_boxes(txt, cam).objects[0].label == "a b"
