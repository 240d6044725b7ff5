"""Drawing boxes on images (numpy raster, PNG) and writing Rerun recordings."""

import numpy as np
import pytest

from n3d_ros.core.box import Box3D
from n3d_ros.core.camera import CameraModel
from n3d_ros.core.export import PALETTE, draw_boxes, draw_boxes_png, export_rerun
from n3d_ros.core.frames import Frame, axis_rotation, rotation_from_euler_xyz, rotation_to_quaternion
from n3d_ros.core.objects import GroundedObject

CAM = CameraModel.from_intrinsics(500.0, 500.0, 319.5, 239.5, 640, 480)


def cube(center, size=0.5, i=0, label="cube", frame=Frame.OPTICAL):
    return GroundedObject(Box3D(center, (size, size, size), frame=frame), label, 0.8, f"bbox_{i}")


def blank():
    return np.zeros((480, 640, 3), np.uint8)


def test_draw_boxes_marks_projected_edges_only():
    box = cube((0, 0, 2.0))
    out = draw_boxes(blank(), CAM, [box])
    # front face at z = 1.75: corners at 319.5 +- 500 * 0.25 / 1.75 = +-71.4 px
    u_left = int(round(319.5 - 500 * 0.25 / 1.75))
    assert np.array_equal(out[239, u_left], PALETTE[0])            # on the front face's left edge
    assert not out[239, 319].any()                                   # box centre: no edge there
    assert not out[10, 10].any()                                     # far from the box
    drawn = np.argwhere(out.any(axis=2))
    assert drawn[:, 1].min() >= u_left - 2 and drawn[:, 1].max() <= 640 - u_left + 2


def test_draw_boxes_colours_per_object_and_input_untouched():
    img = blank()
    out = draw_boxes(img, CAM, [cube((-1, 0, 3), i=0), cube((1, 0, 3), i=1)])
    assert not img.any()                                             # copy, not in place
    colours = {tuple(c) for c in out.reshape(-1, 3) if c.any()}
    assert colours == {tuple(PALETTE[0]), tuple(PALETTE[1])}


def test_draw_boxes_clips_at_near_plane_and_handles_empty():
    # a corridor-like box from z = -0.5 to 2.5: its far face and the clipped long edges are in view
    straddling = GroundedObject(Box3D((0, 0, 1.0), (0.4, 0.4, 3.0)), "corridor")
    out = draw_boxes(blank(), CAM, [straddling])
    far_u = int(round(319.5 + 500 * 0.2 / 2.5))
    assert out[239, far_u].any()                                     # far face's right edge
    assert out[5, :].any() or out[:, 5].any()                        # clipped edges run off the image
    behind = cube((0, 0, -3))
    assert not draw_boxes(blank(), CAM, [behind]).any()
    assert not draw_boxes(blank(), CAM, []).any()


def test_draw_boxes_converts_frames():
    opt = cube((0.3, -0.2, 2.5))
    n3d = opt.to_frame(Frame.N3D)
    assert np.array_equal(draw_boxes(blank(), CAM, [opt]), draw_boxes(blank(), CAM, [n3d]))


def test_draw_boxes_with_distortion_follows_the_lens():
    cam = CameraModel.from_camera_info(width=640, height=480, k=[500, 0, 319.5, 0, 500, 239.5, 0, 0, 1],
                                       d=[-0.3, 0.1, 0, 0, 0])
    box = GroundedObject(Box3D((0, 0, 2.0), (2.0, 1.5, 0.1)), "board")
    out = draw_boxes(blank(), cam, [box])
    # a corner of the board, projected through the lens, must be drawn
    corner = cam.project(np.array([-1.0, -0.75, 1.95]))
    u, v = np.round(corner).astype(int)
    assert out[v - 1:v + 2, u - 1:u + 2].any()


def test_draw_boxes_rejects_bad_images():
    with pytest.raises(ValueError, match="640x480"):
        draw_boxes(np.zeros((100, 100, 3), np.uint8), CAM, [])
    with pytest.raises(ValueError, match="uint8"):
        draw_boxes(np.zeros((480, 640, 3), np.float32), CAM, [])


def test_draw_boxes_png_writes_file_with_labels(tmp_path):
    from PIL import Image
    path = tmp_path / "boxes.png"
    objs = [cube((0, 0, 2.0))]
    out = draw_boxes_png(path, blank(), CAM, objs, answer="The cube (bbox_0) is 2.00 m from the camera.")
    assert path.stat().st_size > 0
    back = np.asarray(Image.open(path).convert("RGB"))
    assert np.array_equal(back, out)
    plain = draw_boxes(blank(), CAM, objs)
    assert (out != plain).any(axis=2).sum() > 100                   # label and answer text were added
    assert out[470:, :].any()                                        # answer banner at the bottom
    assert draw_boxes_png(None, blank(), CAM, objs).shape == (480, 640, 3)


@pytest.mark.parametrize("angles", [(0, 0, 0), (0.3, -0.5, 2.0), (np.pi, 0, 0), (0, np.pi, 0),
                                    (0, 0, np.pi), (1.0, 2.0, -2.5)])
def test_rotation_to_quaternion_round_trip(angles):
    R = rotation_from_euler_xyz(*angles)
    x, y, z, w = rotation_to_quaternion(R)
    back = np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])
    assert np.allclose(back, R, atol=1e-12)
    assert w >= 0


def test_export_rerun_writes_readable_recording(tmp_path):
    path = tmp_path / "answer.rrd"
    img = np.full((480, 640, 3), 128, np.uint8)
    depth = np.full((240, 320), 2.0)                                 # half-resolution point map
    half = CameraModel.from_intrinsics(250.0, 250.0, 159.5, 119.5, 320, 240)
    points, mask = half.depth_to_points(depth)
    objs = [GroundedObject(Box3D((0.2, 0, 2), (0.4, 0.4, 0.4), axis_rotation(1, 0.5)), "mug", 0.9, "bbox_0"),
            cube((-0.5, 0, 3), i=1, label="chair").to_frame(Frame.N3D)]
    export_rerun(path, img, CAM, objs, points=points, mask=mask, answer="1.00 m", question="how far?",
                 max_points=5000)
    assert path.stat().st_size > 1000
    from rerun.chunk import RrdReader
    store = RrdReader(str(path)).store()
    entities = set(store.schema().entity_paths())
    assert {"/world", "/world/camera", "/world/points", "/world/boxes", "/answer"} <= entities
    centers = None
    n_points = 0
    for chunk in store.stream().to_chunks():
        batch = chunk.to_record_batch()
        if chunk.entity_path == "/world/boxes":
            centers = np.array(batch.column(batch.schema.get_field_index("Boxes3D:centers")).to_pylist()[0])
        if chunk.entity_path == "/world/points" and "Points3D:positions" in batch.schema.names:
            col = batch.column(batch.schema.get_field_index("Points3D:positions")).to_pylist()
            n_points += sum(len(row) for row in col)
    assert np.allclose(centers, [[0.2, 0, 2], [-0.5, 0, 3]], atol=1e-6)  # N3D box came back optical
    assert 0 < n_points <= 5000


def test_export_rerun_validates_inputs(tmp_path):
    with pytest.raises(ValueError, match="point map"):
        export_rerun(tmp_path / "x.rrd", blank(), CAM, [], points=np.zeros((10, 3)))
    with pytest.raises(ValueError, match="mask"):
        export_rerun(tmp_path / "x.rrd", blank(), CAM, [], points=np.zeros((4, 4, 3)),
                     mask=np.ones((2, 2), bool))
