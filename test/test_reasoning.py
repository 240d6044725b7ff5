"""Hand-computed fixtures for every QuestionKind, frame/gravity handling, and error cases."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from n3d_ros.core.box import Box3D
from n3d_ros.core.frames import Frame, axis_rotation
from n3d_ros.core.objects import GroundedObject
from n3d_ros.core.questions import PAIRWISE_KINDS, SINGLE_KINDS, QuerySpec, QuestionKind as K
from n3d_ros.core.reasoning import Answer, ReasoningError, answer_query, format_metres


def obj(center, size=(0.2, 0.2, 0.2), label="obj", i=0, yaw=0.0, frame=Frame.OPTICAL):
    return GroundedObject(Box3D.from_yaw(center, size, yaw, frame), label, 0.9, f"bbox_{i}")


MUG = obj((0, 0, 2), (0.2, 0.3, 0.2), "red mug", 0)
CHAIR = obj((1, 0, 2), (0.4, 1.0, 0.6), "blue chair", 1)


def ask(kind, objects, targets=None, **kw) -> Answer:
    if targets is None:
        targets = ("a", "b") if kind in PAIRWISE_KINDS else ("a",) if kind in SINGLE_KINDS else ()
    return answer_query(QuerySpec(kind, targets), objects, **kw)


# ---------------------------------------------------------------- metric kinds
def test_distance_centre_to_centre_with_surface_in_trace():
    a = ask(K.DISTANCE, [MUG, CHAIR])
    assert a.value == pytest.approx(1.0) and a.unit == "m"
    assert a.text == "The red mug (bbox_0) is 1.00 m from the blue chair (bbox_1)."
    assert a.used_ids == ("bbox_0", "bbox_1") and a.kind == K.DISTANCE
    assert "1.000 m" in a.reasoning and "0.700 m apart" in a.reasoning  # 1 - 0.1 - 0.2


def test_gap_closest_surfaces_and_touching():
    a = ask(K.GAP, [MUG, CHAIR])
    assert a.value == pytest.approx(0.7)
    assert "0.70 m" in a.text
    touching = ask(K.GAP, [MUG, obj((0.2, 0, 2), (0.2, 0.2, 0.2), "box", 2)])
    assert touching.value == 0.0 and "touches or overlaps" in touching.text
    # MUG spans x in [-0.1, 0.1] (see the 0.7 m gap above): 5 mm away touches, 2 cm away does not.
    near = ask(K.GAP, [MUG, obj((0.205, 0, 2), (0.2, 0.2, 0.2), "box", 2)])
    assert near.value == 0.0 and "touches" in near.text and "under 1 cm" in near.reasoning
    apart = ask(K.GAP, [MUG, obj((0.22, 0, 2), (0.2, 0.2, 0.2), "box", 2)])
    assert apart.value == pytest.approx(0.02)


def test_distance_to_camera():
    a = ask(K.DISTANCE_TO_CAMERA, [obj((0.3, 0.4, 1.2), (0.2, 0.2, 0.4), "lamp", 3)])
    assert a.value == pytest.approx(1.3)                       # 3-4-12-13 triangle
    assert a.text == "The lamp (bbox_3) is 1.30 m from the camera."
    assert "z = 1.200 m" in a.reasoning
    near = math.sqrt(0.2 ** 2 + 0.3 ** 2 + 1.0 ** 2)          # nearest corner (0.2, 0.3, 1.0)
    assert f"{near:.3f} m" in a.reasoning


def test_locate():
    a = ask(K.LOCATE, [obj((-0.5, -0.2, 3.0), label="door", i=4)])
    assert a.value == pytest.approx(math.sqrt(0.25 + 0.04 + 9.0))
    assert "0.50 m to the left" in a.text and "0.20 m above" in a.text and "3.00 m ahead" in a.text


def test_height_width_length_level_and_turned():
    table = obj((0, 0.5, 3), (1.2, 0.75, 0.6), "table", 0)
    assert ask(K.HEIGHT, [table]).value == pytest.approx(0.75)
    assert ask(K.WIDTH, [table]).value == pytest.approx(1.2)
    assert ask(K.LENGTH, [table]).value == pytest.approx(0.6)
    assert ask(K.HEIGHT, [table]).text == "The table (bbox_0) is 0.75 m tall."
    turned = obj((0, 0.5, 3), (1.2, 0.75, 0.6), "table", 0, yaw=np.pi / 2)  # long side now along z
    assert ask(K.WIDTH, [turned]).value == pytest.approx(0.6)
    assert ask(K.LENGTH, [turned]).value == pytest.approx(1.2)
    assert ask(K.WIDTH, [turned]).text.endswith("0.60 m wide.")


def test_height_with_tilted_up():
    # Camera pitched 30 deg: a 1.0 m tall, 0.2 m deep slab seen by that camera.
    R = axis_rotation(0, math.radians(30))
    level = Box3D((0, 0, 2), (0.8, 1.0, 0.2))
    tilted = GroundedObject(level.transformed(R), "slab", id="bbox_0")
    up = R @ np.array([0.0, -1.0, 0.0])
    assert ask(K.HEIGHT, [tilted], up=up).value == pytest.approx(1.0)
    assert "gravity-aligned" in ask(K.HEIGHT, [tilted], up=up).reasoning
    # Lying 70 deg away from the camera's up: the default (level) up reads the wrong axis.
    R70 = axis_rotation(0, math.radians(70))
    lying = GroundedObject(level.transformed(R70), "slab", id="bbox_0")
    assert ask(K.HEIGHT, [lying], up=R70 @ np.array([0.0, -1.0, 0.0])).value == pytest.approx(1.0)
    assert ask(K.HEIGHT, [lying]).value == pytest.approx(0.2)


# ---------------------------------------------------------------- directions
def test_left_right_above_below_front_behind():
    assert ask(K.LEFT_RIGHT, [MUG, CHAIR]).value == "left"
    assert ask(K.LEFT_RIGHT, [CHAIR, MUG]).value == "right"
    assert ask(K.LEFT_RIGHT, [MUG, CHAIR]).text == "The red mug (bbox_0) is to the left of the blue chair (bbox_1)."
    high, low = obj((0, -0.5, 2), i=0, label="shelf"), obj((0, 0.4, 2), i=1, label="floor box")
    assert ask(K.ABOVE_BELOW, [high, low]).value == "above"
    assert ask(K.ABOVE_BELOW, [low, high]).value == "below"
    near, far = obj((0, 0, 1), i=0), obj((0, 0, 3), i=1)
    assert ask(K.FRONT_BEHIND, [near, far]).value == "in front of"
    assert ask(K.FRONT_BEHIND, [far, near]).value == "behind"
    assert "A - B = -2.000 m" in ask(K.FRONT_BEHIND, [near, far]).reasoning


@pytest.mark.parametrize("b_centre, hour", [
    ((1, 0, 2), 3), ((0, 0, 3), 12), ((-1, 0, 2), 9), ((0, 0, 1), 6),
    ((1, 0, 3), 2),                          # 45 deg: 1.5 rounds half up (clockwise) to 2
    ((math.sin(math.radians(60)), 0, 2 + math.cos(math.radians(60))), 2),
    ((-math.sin(math.radians(100)), 0, 2 + math.cos(math.radians(100))), 9),  # -100 deg -> -3.33
    ((0.1, -1.0, 2.5), 12),                  # height difference does not matter
])
def test_clock(b_centre, hour):
    a = ask(K.CLOCK, [MUG, obj(b_centre, i=1)])
    assert a.value == hour and a.unit == "o'clock"
    assert f"{hour} o'clock" in a.text and "atan2(dx, dz)" in a.reasoning


def test_clock_trace_numbers():
    a = ask(K.CLOCK, [MUG, CHAIR])
    assert "dx = d . r = +1.000 m, dz = d . f = +0.000 m" in a.reasoning
    assert "+90.0 deg" in a.reasoning


def test_above_below_uses_up_not_image_y():
    # Camera pitched 30 deg down; in the world A is 0.1 m above B but much nearer, so A appears
    # lower in the image (larger optical y). Only the measured up gives the world answer.
    R = axis_rotation(0, math.radians(30))         # p_cam = R p_level; level ahead -> up in the image
    up = R @ np.array([0.0, -1.0, 0.0])
    A = GroundedObject(Box3D(R @ np.array([0.0, -0.1, 1.0]), (0.2, 0.2, 0.2), R), "A", id="a")
    B = GroundedObject(Box3D(R @ np.array([0.0, 0.0, 4.0]), (0.2, 0.2, 0.2), R), "B", id="b")
    assert A.box.center[1] > B.box.center[1]       # lower in the image
    assert ask(K.ABOVE_BELOW, [A, B], up=up).value == "above"
    assert ask(K.ABOVE_BELOW, [A, B]).value == "below"


# ---------------------------------------------------------------- predicates
@pytest.mark.parametrize("kind, expected", [
    (K.IS_LEFT_OF, True), (K.IS_RIGHT_OF, False), (K.IS_ABOVE, False), (K.IS_BELOW, True),
    (K.IS_IN_FRONT_OF, True), (K.IS_BEHIND, False),
])
def test_predicates(kind, expected):
    A = obj((-0.5, 0.2, 1.5), label="cup", i=0)   # left, lower (y down), nearer than B
    B = obj((0.5, -0.3, 2.5), label="vase", i=1)
    a = ask(kind, [A, B])
    assert a.value is expected and a.unit == ""
    assert a.text.startswith("Yes," if expected else "No,")
    margin = {K.IS_LEFT_OF: 1.0, K.IS_RIGHT_OF: -1.0, K.IS_ABOVE: -0.5, K.IS_BELOW: 0.5,
              K.IS_IN_FRONT_OF: 1.0, K.IS_BEHIND: -1.0}[kind]
    assert f"margin {margin:+.3f} m" in a.reasoning
    if expected:
        assert f"(by {abs(margin):.2f} m)" in a.text


def test_taller_shorter():
    tall, short = obj((0, 0, 2), (0.3, 1.8, 0.3), "lamp", 0), obj((1, 0, 2), (0.5, 0.9, 0.5), "chair", 1)
    a = ask(K.IS_TALLER, [tall, short])
    assert a.value is True and "by 0.90 m" in a.text and "A 1.800 m, B 0.900 m" in a.reasoning
    assert ask(K.IS_TALLER, [short, tall]).value is False
    assert ask(K.IS_SHORTER, [short, tall]).value is True


# ---------------------------------------------------------------- sets
def test_count_and_detect():
    chairs = [obj((i, 0, 2), label="chair", i=i) for i in range(3)]
    a = ask(K.COUNT, chairs, ("chair",))
    assert a.value == 3 and a.text == "There are 3 chairs." and a.used_ids == ("bbox_0", "bbox_1", "bbox_2")
    assert ask(K.COUNT, chairs[:1], ("box",)).text == "There is 1 box."
    none = ask(K.COUNT, [], ("person",))
    assert none.value == 0 and none.text == "There are no people."
    assert ask(K.COUNT, chairs).text == "There are 3 objects."
    d = ask(K.DETECT, chairs[:2], ("chair",))
    assert d.value == 2 and d.text == "Found 2 chairs: the chair (bbox_0), the chair (bbox_1)."
    assert ask(K.DETECT, []).text == "No objects were found."


def test_extremes():
    objs = [obj((0, 0, 3), (1, 1, 1), "sofa", 0), obj((0.6, 0, 0.8), (0.1, 0.1, 0.1), "cup", 1),
            obj((-2, 0, 5), (0.5, 0.5, 0.5), "plant", 2)]
    assert ask(K.CLOSEST, objs).value == "cup" and ask(K.CLOSEST, objs).used_ids == ("bbox_1",)
    assert ask(K.CLOSEST, objs).text == "The cup (bbox_1) is the closest to the camera (1.00 m)."
    assert ask(K.FARTHEST, objs).value == "plant"
    assert ask(K.LARGEST, objs).value == "sofa"
    assert ask(K.SMALLEST, objs).value == "cup"
    assert "1.000 m" in ask(K.CLOSEST, objs).reasoning and "5.385 m" in ask(K.CLOSEST, objs).reasoning
    twins = [obj((0, 0, 2), label="x", i=0), obj((0, 0, 2), label="y", i=1)]
    assert ask(K.CLOSEST, twins).value == "x" and "tie" in ask(K.CLOSEST, twins).reasoning


# ---------------------------------------------------------------- frames, errors, format
def test_boxes_in_other_frames_are_converted():
    mug_n3d = MUG.to_frame(Frame.N3D)
    chair_body = CHAIR.to_frame(Frame.BODY)
    assert mug_n3d.box.frame == Frame.N3D
    for kind, value in ((K.DISTANCE, 1.0), (K.LEFT_RIGHT, "left"), (K.CLOCK, 3)):
        got = ask(kind, [mug_n3d, chair_body]).value
        assert got == (pytest.approx(value) if isinstance(value, float) else value)
    assert ask(K.HEIGHT, [mug_n3d]).value == pytest.approx(0.3)


def test_extra_objects_are_ignored_for_pairs():
    extra = obj((9, 9, 9), label="far", i=7)
    assert ask(K.DISTANCE, [MUG, CHAIR, extra]).used_ids == ("bbox_0", "bbox_1")


def test_missing_objects_raise_reasoning_error():
    with pytest.raises(ReasoningError, match="'chair'"):
        answer_query(QuerySpec(K.DISTANCE, ("mug", "chair")), [MUG])
    with pytest.raises(ReasoningError, match="'mug'"):
        answer_query(QuerySpec(K.HEIGHT, ("mug",)), [])
    with pytest.raises(ReasoningError):
        answer_query(QuerySpec(K.CLOSEST, ()), [])
    assert issubclass(ReasoningError, ValueError)
    with pytest.raises(TypeError):
        answer_query(QuerySpec(K.HEIGHT, ("mug",)), [MUG.box])
    with pytest.raises(ValueError, match="up"):
        ask(K.HEIGHT, [MUG], up=np.zeros(3))


def test_format_and_determinism():
    assert format_metres(1.234) == "1.23 m" and format_metres(12.34) == "12.3 m" and format_metres(0.05) == "0.05 m"
    assert ask(K.GAP, [MUG, CHAIR]) == ask(K.GAP, [MUG, CHAIR])
    unnamed = GroundedObject(Box3D((0, 0, 1), (0.1, 0.1, 0.1)), "")
    assert ask(K.DISTANCE_TO_CAMERA, [unnamed]).text == "The object (object 0) is 1.00 m from the camera."


def test_every_kind_answers():
    for kind in K:
        a = ask(kind, [MUG, CHAIR])
        assert isinstance(a, Answer) and a.kind == kind
        assert a.text.endswith(".") and "\n" in a.reasoning


@settings(max_examples=60, deadline=None)
@given(pitch=st.floats(-0.6, 0.6), roll=st.floats(-0.6, 0.6),
       ca=st.tuples(*[st.floats(-2, 2)] * 2, st.floats(1, 4)),
       cb=st.tuples(*[st.floats(-2, 2)] * 2, st.floats(1, 4)), yaw=st.floats(-3, 3))
def test_property_rotating_the_camera_with_its_up_changes_nothing(pitch, roll, ca, cb, yaw):
    """Scene fixed in a level frame; the camera pitches/rolls (p_cam = R p_level) and reports its up.
    Gravity-based answers must equal the level camera's answers."""
    R = axis_rotation(2, roll) @ axis_rotation(0, pitch)
    up = R @ np.array([0.0, -1.0, 0.0])
    level = [GroundedObject(Box3D.from_yaw(ca, (0.3, 0.8, 0.5), yaw), "a", id="a"),
             GroundedObject(Box3D.from_yaw(cb, (0.6, 0.4, 0.2), -yaw), "b", id="b")]
    cam = [GroundedObject(o.box.transformed(R), o.label, id=o.id) for o in level]
    for kind in (K.DISTANCE, K.GAP, K.HEIGHT, K.WIDTH, K.LENGTH, K.IS_TALLER):
        v0, v1 = ask(kind, level).value, ask(kind, cam, up=up).value
        assert v1 == (pytest.approx(v0, abs=1e-9) if isinstance(v0, float) else v0)
    d = np.subtract(cb, ca)
    angle = math.degrees(math.atan2(d[0], d[2])) / 30
    if abs(angle - math.floor(angle) - 0.5) > 1e-6 and math.hypot(d[0], d[2]) > 1e-6:  # not on a boundary
        assert ask(K.CLOCK, level).value == ask(K.CLOCK, cam, up=up).value
    if abs(d[1]) > 1e-6:
        assert ask(K.ABOVE_BELOW, level).value == ask(K.ABOVE_BELOW, cam, up=up).value
