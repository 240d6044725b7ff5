"""core.box_refine.snap_to_depth: a box moves along its ray onto the measured surface, and only then."""
import numpy as np

from n3d_ros.core.box import Box3D
from n3d_ros.core.box_refine import ray_box_entry, snap_boxes_to_depth, snap_to_depth
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


def _render(box: Box3D, background: float = 8.0):
    """Reference depth image of `box` (optical frame) in front of a wall at `background` m:
    per pixel, where its ray first enters the box (slab method, written out independently)."""
    uv = CAM.pixel_grid().reshape(-1, 2)
    rays = np.concatenate([CAM.pixel_to_normalized(uv), np.ones((len(uv), 1))], axis=1)
    d = rays @ box.rotation                                # ray directions in the box's axes
    o = -(box.rotation.T @ box.center)                     # the camera in the box's axes
    half = box.size / 2
    with np.errstate(divide="ignore"):
        ta, tb = (-half - o) / d, (half - o) / d
    near = np.minimum(ta, tb).max(axis=1)
    far = np.maximum(ta, tb).min(axis=1)
    depth = np.where((near < far) & (near > 0), near, background).reshape(CAM.height, CAM.width)
    return CAM.depth_to_points(depth)


def test_box_seen_from_above_lands_on_its_top_and_front_not_behind():
    # A low, deep slab (a bed) 0.85 m below the camera: most of its footprint is its top face, whose
    # pixels lie behind its front edge. Each pixel is compared with where its own ray enters the box,
    # so the box lands where it is; the older rule (front face at the nearest depth of the
    # footprint's centre) left it 22 cm too far.
    truth = Box3D([0.0, 1.0, 3.0], [1.0, 0.3, 1.6])
    pts, mask = _render(truth)
    for scale in (0.93, 1.08):
        snapped = snap_to_depth(Box3D(truth.center * scale, truth.size), pts, mask, CAM)
        np.testing.assert_allclose(snapped.center, truth.center, atol=0.01)


def test_turned_box_lands_on_its_visible_faces():
    # A wide box (a sofa) turned 20 degrees: its nearest corner lies at the edge of its footprint,
    # the centre of the footprint 15-20 cm behind it (where the older rule put the nearest corner).
    truth = Box3D.from_yaw([0.3, 0.6, 2.5], [1.8, 0.8, 0.9], np.deg2rad(20))
    pts, mask = _render(truth)
    guess = Box3D.from_yaw(truth.center * 0.92, truth.size, np.deg2rad(20))
    snapped = snap_to_depth(guess, pts, mask, CAM)
    np.testing.assert_allclose(snapped.center, truth.center, atol=0.01)
    np.testing.assert_allclose(snapped.rotation, guess.rotation)


def test_a_few_stray_pixels_in_front_do_not_pull_the_box():
    truth = Box3D([0.0, 0.0, 3.0], [0.8, 0.8, 0.4])
    pts, mask = _render(truth)
    pts = pts.copy()
    pts[60, 78:80] *= 2.6 / pts[60, 78:80, 2:3]          # two pixels 0.2 m in front of the face
    snapped = snap_to_depth(Box3D([0.0, 0.0, 3.15], truth.size), pts, mask, CAM)
    assert abs(snapped.center[2] - 3.0) < 0.01


def test_a_large_footprint_read_on_a_stride_lands_in_the_same_place():
    truth = Box3D.from_yaw([0.0, 0.5, 1.6], [1.8, 0.8, 0.9], np.deg2rad(15))   # fills most of the image
    pts, mask = _render(truth)
    guess = Box3D.from_yaw(truth.center * 1.06, truth.size, np.deg2rad(15))
    for max_pixels in (10**9, 2048, 256):
        snapped = snap_to_depth(guess, pts, mask, CAM, max_pixels=max_pixels)
        np.testing.assert_allclose(snapped.center, truth.center, atol=0.01)


def test_boxes_snapped_together_land_as_one_at_a_time_and_unsnappable_ones_stay_the_same_objects():
    left = Box3D.from_yaw([-0.9, 0.3, 3.0], [0.6, 0.6, 0.5], np.deg2rad(25))
    right = Box3D([0.8, 0.2, 2.2], [0.4, 0.5, 0.4])
    (p1, m1), (p2, _) = _render(left), _render(right)
    pts = np.where((p2[..., 2] < p1[..., 2])[..., None], p2, p1)      # both boxes in one depth image
    guesses = [Box3D.from_yaw(left.center * 1.06, left.size, np.deg2rad(25)),
               Box3D(right.center * 0.95, right.size),
               Box3D([0.0, 0.0, -1.0], [0.5, 0.5, 0.5]),                # behind the camera
               Box3D([0.0, -0.5, 6.0], [0.3, 0.3, 0.3])]                # only the wall, 2 m behind it, in view
    together = snap_boxes_to_depth(guesses, pts, m1, CAM)
    np.testing.assert_allclose(together[0].center, left.center, atol=0.01)
    np.testing.assert_allclose(together[1].center, right.center, atol=0.01)
    assert together[2] is guesses[2] and together[3] is guesses[3]
    for one, box in zip(together, guesses):
        np.testing.assert_array_equal(one.center, snap_to_depth(box, pts, m1, CAM).center)
    assert snap_boxes_to_depth([], pts, m1, CAM) == []


def test_ray_box_entry_slabs():
    box = Box3D(np.array([0.0, 0.0, 2.5]), np.array([1.0, 1.0, 1.0]))   # z from 2 to 3
    rays = np.array([[0.0, 0.0, 1.0],      # straight through the front face
                     [0.2, 0.0, 1.0],      # through the front face, off axis
                     [1.0, 0.0, 1.0],      # passes beside it
                     [0.0, 0.0, -1.0]])    # points away from it
    t, hit = ray_box_entry(box, rays)
    np.testing.assert_allclose(t[:2], [2.0, 2.0])
    assert hit.tolist() == [True, True, False, False]
    turned = Box3D.from_yaw(np.array([0.0, 0.0, 2.5]), np.array([1.0, 1.0, 1.0]), np.pi / 4)
    t, hit = ray_box_entry(turned, rays[:1])
    np.testing.assert_allclose(t, [2.5 - np.sqrt(0.5)])                 # enters at the nearer edge
    inside = Box3D(np.zeros(3), np.array([1.0, 1.0, 1.0]))
    t, hit = ray_box_entry(inside, rays[:1])
    assert t[0] < 0 and hit[0]                                          # the camera sits inside it
