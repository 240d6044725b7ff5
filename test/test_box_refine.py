"""core.box_refine.snap_to_depth: a box moves along its ray onto the measured surface, and only then."""
import numpy as np

from n3d_ros.core.box import Box3D
from n3d_ros.core.box_refine import snap_to_depth
from n3d_ros.core.camera import CameraModel
from n3d_ros.core.frames import Frame

CAM = CameraModel.from_intrinsics(200.0, 200.0, 79.5, 59.5, 160, 120)


def _wall_of(box: Box3D, front_z: float, occluder: tuple | None = None):
    """Measured points: background at 8 m, the box's front face at `front_z` inside its footprint."""
    depth = np.full((120, 160), 8.0)
    u0, v0, u1, v1 = box.project_2d(CAM)
    depth[int(v0) + 1:int(v1), int(u0) + 1:int(u1)] = front_z
    if occluder is not None:
        (r0, r1, c0, c1), z = occluder
        depth[r0:r1, c0:c1] = z
    return CAM.depth_to_points(depth)


def test_box_moves_along_its_ray_so_its_front_face_meets_the_surface():
    truth = Box3D([0.3, 0.1, 3.0], [0.6, 0.8, 0.4])
    guess = Box3D(truth.center * 1.08, truth.size)                     # 8 % too far, same ray
    pts, mask = _wall_of(truth, 3.0 - 0.2)
    snapped = snap_to_depth(guess, pts, mask, CAM)
    np.testing.assert_allclose(snapped.center, truth.center, atol=1e-6)
    np.testing.assert_allclose(snapped.size, guess.size)
    assert snapped.frame == Frame.OPTICAL


def test_far_occluders_and_sparse_or_distant_surfaces_leave_the_box_alone():
    truth = Box3D([0.0, 0.0, 3.0], [0.6, 0.6, 0.4])
    pts, mask = _wall_of(truth, 2.8, occluder=((50, 60, 70, 80), 0.5))   # a thing 0.5 m away hides part
    snapped = snap_to_depth(Box3D([0.0, 0.0, 3.1], truth.size), pts, mask, CAM)
    assert abs(snapped.center[2] - 3.0) < 0.05                             # the occluder is out of reach
    few = np.zeros_like(mask)
    few[60, 80] = True
    same = Box3D([0.0, 0.0, 3.1], truth.size)
    assert snap_to_depth(same, pts, few, CAM) is same                     # too few points
    pts_far, mask_far = _wall_of(truth, 5.0)                               # surface 2 m behind: not this box
    assert snap_to_depth(same, pts_far, mask_far, CAM) is same
    behind = Box3D([0.0, 0.0, -1.0], truth.size)
    assert snap_to_depth(behind, pts, mask, CAM) is behind
