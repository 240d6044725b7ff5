"""The compact decoder: box parameterization round trip, cached decoding == teacher forcing."""
import numpy as np
import pytest
import torch

from n3d_ros.core.box import Box3D
from n3d_ros.core.camera import CameraModel
from n3d_ros.core.frames import axis_rotation
from n3d_ros.core.questions import QuerySpec, QuestionKind
from n3d_ros.vlm.compact_model import CompactSpatialDecoder, CompactVLMConfig, depth_detail
from n3d_ros.vlm.compact_targets import box_to_target, output_tokens, target_to_box
from n3d_ros.vlm.compact_tokenizer import CompactTokenizer

CAM = CameraModel.from_intrinsics(240.0, 240.0, 159.5, 119.5, 320, 240)


def _tilted_up(pitch: float, roll: float) -> np.ndarray:
    R = axis_rotation(0, pitch) @ axis_rotation(2, roll)
    return R @ np.array([0.0, -1.0, 0.0])


@pytest.mark.parametrize("yaw", [0.0, 0.4, -1.2])
@pytest.mark.parametrize("pitch", [0.0, -0.35])
def test_box_target_round_trip(yaw, pitch):
    up = _tilted_up(pitch, 0.05)
    from n3d_ros.core.frames import gravity_rotation
    R = gravity_rotation(up).T @ axis_rotation(1, yaw)
    box = Box3D([0.3, 0.2, 2.5], [0.5, 0.9, 0.4], R)
    t = box_to_target(box, CAM, up, grid_w=20, grid_h=15, patch=16)
    assert t is not None
    patch_z = 2.1
    params = t.params.copy()
    params[2] -= np.log(patch_z)  # the head predicts depth relative to the patch
    back = target_to_box(t.patch, params, patch_z, CAM, up, grid_w=20, patch=16)
    np.testing.assert_allclose(back.center, box.center, atol=1e-9)
    np.testing.assert_allclose(back.size, box.size, atol=1e-9)
    from n3d_ros.core.box_overlap import iou_3d
    assert iou_3d(back, box) > 0.999


def test_box_behind_camera_has_no_target():
    assert box_to_target(Box3D([0, 0, -1.0], [1, 1, 1]), CAM, np.array([0, -1.0, 0]), 20, 15, 16) is None


def _tok():
    return CompactTokenizer.build(["where is the red mug", "how far is the blue chair from the red mug",
                                   "how many chairs are there", "chair", "red mug", "blue chair"])


def test_output_tokens_grammar():
    tok = _tok()
    ids = output_tokens(tok, QuerySpec(QuestionKind.DISTANCE, ("red mug", "blue chair")), ["red mug", "blue chair"])
    assert tok.decode_words(ids) == "<k:distance> red mug <obj> blue chair <obj> <eos>"
    ids = output_tokens(tok, QuerySpec(QuestionKind.COUNT, ("chair",)), ["blue chair"])
    assert tok.decode_words(ids) == "<k:count> chair <set> blue chair <obj> <eos>"


def test_tokenizer_save_load_and_unknown_words(tmp_path):
    tok = _tok()
    tok.save(tmp_path / "tokenizer.json")
    tok2 = CompactTokenizer.load(tmp_path / "tokenizer.json")
    assert tok2.encode_words("Where is the RED mug?") == tok.encode_words("where is the red mug ?")
    assert tok2.unknown_fraction("where is the zebra") == 0.25


def test_named_words_are_the_questions_own_and_their_singulars():
    tok = _tok()
    named = {tok.token(i) for i in tok.named_word_ids("How many CHAIRS are there?")}
    assert named == {"how", "many", "chairs", "chair", "are", "there"}
    assert tok.named_word_ids("where is the zebra") == {tok.encode_words(w)[0] for w in ("where", "is", "the")}


def test_cached_decoding_matches_teacher_forcing():
    torch.manual_seed(0)
    cfg = CompactVLMConfig(vocab_size=40, d_model=32, n_layers=2, n_heads=4, feature_dim=8, grid_h=3, grid_w=4)
    dec = CompactSpatialDecoder(cfg).eval()
    feats = torch.randn(1, 8, 3, 4)
    pts = torch.rand(1, 3, 48, 64) + torch.tensor([0.0, 0.0, 1.0]).view(1, 3, 1, 1)
    valid = torch.rand(1, 1, 48, 64) > 0.1
    q = torch.tensor([[5, 6, 7, 8]])
    out_in = torch.tensor([[2, 9, 10, 11, 12]])
    region_patch = torch.tensor([[-1, -1, 3, -1, -1]])
    with torch.no_grad():
        ref = dec.forward_train(feats, pts, valid, torch.tensor([0]), q, torch.zeros_like(q, dtype=torch.bool),
                                out_in, region_patch)
        state, _ = dec.prefill(feats, pts, valid, q)
        hs = []
        for p in range(out_in.shape[1]):
            n = int(region_patch[0, p])
            region = state.image_in[:, n:n + 1] if n >= 0 else None
            hs.append(dec.step(state, out_in[:, p:p + 1], p, region))
    torch.testing.assert_close(torch.stack(hs, 1), ref["hidden"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(state.image_out, ref["image_out"], atol=1e-5, rtol=1e-5)


def test_padding_in_question_does_not_change_outputs():
    torch.manual_seed(1)
    cfg = CompactVLMConfig(vocab_size=40, d_model=32, n_layers=2, n_heads=4, feature_dim=8, grid_h=3, grid_w=4)
    dec = CompactSpatialDecoder(cfg).eval()
    feats = torch.randn(1, 8, 3, 4)
    pts = torch.rand(1, 3, 48, 64) + 1.0
    valid = torch.ones(1, 1, 48, 64, dtype=torch.bool)
    out_in = torch.tensor([[2, 9, 10]])
    none = torch.full_like(out_in, -1)
    with torch.no_grad():
        a = dec.forward_train(feats, pts, valid, torch.tensor([0]), torch.tensor([[5, 6]]),
                              torch.tensor([[False, False]]), out_in, none)["hidden"]
        b = dec.forward_train(feats, pts, valid, torch.tensor([0]), torch.tensor([[5, 6, 0, 0]]),
                              torch.tensor([[False, False, True, True]]), out_in, none)["hidden"]
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------ dense grounding head
KINDS = ("table", "chair", "mug", "shelf", "box")
COLOURS = ("red", "blue", "white")


@pytest.mark.parametrize("phrase, expected", [
    ("red mug", (2, 0)), ("the Blue chairs", (1, 1)), ("shelves", (3, None)), ("boxes", (4, None)),
    ("white", (None, 2)), ("zebra", (None, None)), ("red mug.", (2, 0)),
])
def test_phrase_class_reads_kind_and_colour(phrase, expected):
    from n3d_ros.vlm.compact_targets import phrase_class
    assert phrase_class(phrase, KINDS, COLOURS) == expected


@pytest.mark.parametrize("question, phrases, expected", [
    # a colour copied from the other object while reordering: contradicts the question
    ("At what o'clock is the blue chair from the red mug?", ["blue mug", "blue chair"], "blue mug"),
    ("At what o'clock is the blue chair from the red mug?", ["red mug", "white chair"], "white chair"),
    ("At what o'clock is the blue chair from the red mug?", ["red mug", "blue chair"], None),
    ("Where is the mug?", ["white mug"], None),                    # a colour the model reads off the image
    ("How far is the red mug from the mug?", ["blue mug", "red mug"], None),   # one mug is named bare
    ("How far is the red mug from the blue mug?", ["blue mug", "red mug"], None),
    ("How far is the red mug from the blue mug?", ["white mug", "red mug"], "white mug"),
    ("Is the red chairs' shelf taller?", ["blue chair"], "blue chair"),         # plurals are read singular
    ("Is the table taller than the box?", ["red table", "mug"], None),
])
def test_colour_contradiction_finds_a_phrase_whose_colour_the_question_denies(question, phrases, expected):
    from n3d_ros.vlm.compact_targets import colour_contradiction
    assert colour_contradiction(question, phrases, KINDS, COLOURS) == expected


def test_heat_target_peaks_at_centre_patch_and_decays():
    from n3d_ros.vlm.compact_targets import dense_target, heat_target
    up = np.array([0.0, -1.0, 0.0])
    box = Box3D([0.0, 0.0, 3.0], [0.3, 0.3, 0.3])             # projects to the image centre
    t = dense_target(box, 2, 0, CAM, up, grid_w=20, grid_h=15, patch=16)
    heat = heat_target([t], 15, 20, len(KINDS))
    assert heat.shape == (300, len(KINDS))
    assert heat[t.target.patch, 2] == 1.0 and heat[:, 2].argmax() == t.target.patch
    assert np.all(heat[:, [0, 1, 3, 4]] == 0)                  # other kinds' maps stay empty
    row, col = divmod(t.target.patch, 20)
    assert 0 < heat[row * 20 + col + 2, 2] < heat[row * 20 + col + 1, 2] < 1.0


def test_set_kind_without_listed_objects_stops_at_set():
    tok = _tok()
    ids = output_tokens(tok, QuerySpec(QuestionKind.COUNT, ("chair",)), [])
    assert tok.decode_words(ids) == "<k:count> chair <set> <eos>"


def test_dense_head_shapes_and_old_configs_have_none():
    cfg = CompactVLMConfig(vocab_size=40, d_model=32, n_layers=1, n_heads=4, feature_dim=8, grid_h=3, grid_w=4,
                           kinds=KINDS, colours=COLOURS)
    dec = CompactSpatialDecoder(cfg).eval()
    geo = torch.randn(2, 12, 6 * cfg.geo_freqs + 1)
    heat, colour, box = dec.dense(torch.randn(2, 12, 32), geo)
    assert heat.shape == (2, 12, 5) and colour.shape == (2, 12, 5, 3) and box.shape == (2, 12, 5, 8)
    assert torch.all(box[..., :2].abs() <= 1)
    torch.testing.assert_close(box[..., 6:8].norm(dim=-1), torch.ones(2, 12, 5))
    assert torch.sigmoid(heat).mean() < 0.05                   # starts at the rare-centre prior
    assert CompactVLMConfig.from_dict(cfg.to_dict() | {"kinds": list(KINDS)}) == cfg   # JSON lists
    assert not hasattr(CompactSpatialDecoder(CompactVLMConfig(vocab_size=40)), "dense_head")


def _grounder_with_heat(heat_np, colour_idx, threshold=0.3, overlap_nms=1.0):
    """A _Grounder over a tiny decoder whose dense head returns `heat_np` (N, K) probabilities and
    colour `colour_idx` (N, K) (a test double for the trained network's output)."""
    from types import SimpleNamespace
    from n3d_ros.vlm.compact_backend import _Encoded, _Grounder
    from n3d_ros.vlm.contract import SceneInput
    cfg = CompactVLMConfig(vocab_size=40, d_model=32, n_layers=1, n_heads=4, feature_dim=8, grid_h=3, grid_w=4,
                           kinds=KINDS, colours=COLOURS)
    dec = CompactSpatialDecoder(cfg).eval()
    N, K, C = 12, len(KINDS), len(COLOURS)
    heat = torch.logit(torch.as_tensor(heat_np, dtype=torch.float32).clamp(1e-4, 1 - 1e-4))[None]
    colour = torch.full((1, N, K, C), -5.0)
    colour.scatter_(-1, torch.as_tensor(colour_idx)[None, ..., None], 5.0)
    box = torch.zeros(1, N, K, 8)
    box[..., 3:6] = np.log(0.3)
    box[..., 7] = 1.0
    dec.dense = lambda image_out, geo: (heat, colour, box)
    cam = CameraModel.from_intrinsics(16.0, 16.0, 31.5, 23.5, 64, 48)
    pts = torch.ones(1, 3, 48, 64) * torch.tensor([0.0, 0.0, 2.0]).view(1, 3, 1, 1)
    valid = torch.ones(1, 1, 48, 64, dtype=torch.bool)
    state, patch_pts = dec.prefill(torch.randn(1, 8, 3, 4), pts, valid, torch.tensor([[5, 6]]))
    enc = _Encoded(features=None, points=pts, valid=valid, camera=cam, source="test")
    vlm = SimpleNamespace(dec_cfg=cfg, decoder=dec, detection_threshold=threshold, phrase_grounding="dense", snap_to_depth=False,
                          overlap_nms=overlap_nms)
    scene = SceneInput(np.zeros((48, 64, 3), np.uint8), cam)
    return _Grounder(vlm, state, patch_pts, enc, scene)


def test_dense_detections_are_thresholded_peaks_filtered_by_phrase():
    heat = np.zeros((12, len(KINDS)))
    colour = np.zeros((12, len(KINDS)), np.int64)
    heat[5, 1], colour[5, 1] = 0.9, 1        # blue chair at row 1, col 1
    heat[6, 1] = 0.5                         # its neighbour: not a peak
    heat[11, 1], colour[11, 1] = 0.6, 0      # red chair, bottom right
    heat[0, 2], colour[0, 2] = 0.8, 2        # white mug, top left
    heat[3, 4] = 0.2                         # below the threshold
    g = _grounder_with_heat(heat, colour)
    labels = [o.label for o in g.detections()]
    assert labels == ["white mug", "blue chair", "red chair"]           # left to right
    assert [o.label for o in g.detections("chairs")] == ["blue chair", "red chair"]
    assert [o.label for o in g.detections("red chair")] == ["red chair"]
    assert g.detections("table") == []
    assert [o.id for o in g.detections()] == ["bbox_0", "bbox_1", "bbox_2"]


def test_overlapping_detections_of_other_kinds_are_one_object():
    heat = np.zeros((12, len(KINDS)))
    colour = np.zeros((12, len(KINDS)), np.int64)
    heat[5, 1] = 0.9                         # a chair ...
    heat[5, 2] = 0.6                         # ... that the mug map also fires on (same box here)
    heat[11, 2] = 0.7                        # a real mug elsewhere
    assert len(_grounder_with_heat(heat, colour).detections()) == 3                  # off: all peaks
    g = _grounder_with_heat(heat, colour, overlap_nms=0.5)
    assert [o.label for o in g.detections()] == ["red chair", "red mug"]
    assert len(g.detections("mugs")) == 1     # counted after the merge: the chair is no mug


def test_dense_grounding_picks_the_phrase_peak_not_the_strongest_object():
    heat = np.zeros((12, len(KINDS)))
    colour = np.zeros((12, len(KINDS)), np.int64)
    heat[5, 1], colour[5, 1] = 0.9, 1        # blue chair
    heat[10, 1], colour[10, 1] = 0.7, 0      # red chair
    g = _grounder_with_heat(heat, colour)
    obj, region = g.ground(torch.zeros(1, 32), "red chair", 0)
    assert obj.label == "red chair" and region.shape == (1, 1, 32)
    row, col = divmod(10, 4)
    u, v = g.enc.camera.project(obj.box.center[None])[0]
    assert (int(u // 16), int(v // 16)) == (col, row)
    np.testing.assert_allclose(obj.box.size, 0.3, rtol=1e-6)
    obj, _ = g.ground(torch.zeros(1, 32), "chair", 1)
    u, v = g.enc.camera.project(obj.box.center[None])[0]
    assert (int(u // 16), int(v // 16)) == (1, 1)                        # the strongest chair


def test_depth_detail_reads_the_surfaces_inside_a_patch():
    # One 4x4-pixel patch (2x2 cells of 2x2 px): left half at 1 m, right half at 2 m, one pixel invalid.
    z = torch.tensor([[1.0, 1.0, 2.0, 2.0]] * 4)
    points = torch.stack([torch.zeros(4, 4), torch.zeros(4, 4), z])[None]
    valid = torch.ones(1, 1, 4, 4, dtype=torch.bool)
    valid[0, 0, 3, 3] = False
    d = depth_detail(points, valid, patch=4, cells=2)[0, 0]
    assert d.shape == (2 * 4 + 2,)
    patch_z = (8 * 1.0 + 7 * 2.0) / 15                         # mean over the 15 valid pixels
    rel, frac, near, far = d[:4], d[4:8], d[8], d[9]
    expect = torch.log(torch.tensor([1.0, 2.0, 1.0, 2.0]) / patch_z)
    torch.testing.assert_close(rel, expect)                    # cells row-major: top-left, top-right, ...
    torch.testing.assert_close(frac, torch.tensor([1.0, 1.0, 1.0, 0.75]))
    torch.testing.assert_close(near, torch.log(torch.tensor(1.0 / patch_z)))
    torch.testing.assert_close(far, torch.log(torch.tensor(2.0 / patch_z)))
    # Nothing valid: all zeros, nothing infinite.
    empty = depth_detail(points, torch.zeros_like(valid), patch=4, cells=2)
    assert torch.all(empty == 0)


def test_depth_detail_widens_the_geometry_and_keeps_old_configs():
    base = dict(vocab_size=40, d_model=32, n_layers=1, n_heads=4, feature_dim=8, grid_h=3, grid_w=4,
                kinds=KINDS, colours=COLOURS)
    old, new = CompactVLMConfig(**base), CompactVLMConfig(**base, depth_cells=4)
    assert new.geo_dim == old.geo_dim + 2 * 16 + 2
    assert CompactVLMConfig.from_dict({k: v for k, v in old.to_dict().items() if k != "depth_cells"}) == old
    with pytest.raises(ValueError, match="depth_cells"):
        CompactVLMConfig(**base, depth_cells=5)
    dec = CompactSpatialDecoder(new).eval()
    pts = torch.rand(1, 3, 48, 64) + torch.tensor([0.0, 0.0, 1.0]).view(1, 3, 1, 1)
    valid = torch.ones(1, 1, 48, 64, dtype=torch.bool)
    tok, geo, _ = dec.embed_image(torch.randn(1, 8, 3, 4), pts, valid)
    assert tok.shape == (1, 12, 32) and geo.shape == (1, 12, new.geo_dim)
    heat, _, _ = dec.dense(torch.randn(1, 12, 32), geo)
    assert heat.shape == (1, 12, len(KINDS))
    # Two point maps with the same patch means but different surfaces (a wall at 2 m; columns at 1 and 3 m):
    # only the detail tells them apart.
    flat = torch.ones(1, 3, 48, 64) * torch.tensor([0.0, 0.0, 2.0]).view(1, 3, 1, 1)
    split = flat.clone()
    split[:, 2, :, 0::8], split[:, 2, :, 4::8] = 1.0, 3.0
    for cfg, differ in ((old, False), (new, True)):
        d = CompactSpatialDecoder(cfg).eval()
        t_flat, _, _ = d.embed_image(torch.zeros(1, 8, 3, 4), flat, valid)
        t_split, _, _ = d.embed_image(torch.zeros(1, 8, 3, 4), split, valid)
        assert torch.allclose(t_flat, t_split, atol=1e-5) != differ


def test_source_embedding_tells_measured_from_estimated_geometry():
    base = dict(vocab_size=40, d_model=32, n_layers=1, n_heads=4, feature_dim=8, grid_h=3, grid_w=4,
                kinds=KINDS, colours=COLOURS)
    old = CompactVLMConfig(**base)
    assert CompactVLMConfig.from_dict({k: v for k, v in old.to_dict().items() if k != "source_embedding"}) == old
    torch.manual_seed(0)
    dec = CompactSpatialDecoder(CompactVLMConfig(**base, source_embedding=True)).eval()
    feats = torch.randn(2, 8, 3, 4)
    pts = torch.rand(2, 3, 48, 64) + torch.tensor([0.0, 0.0, 1.0]).view(1, 3, 1, 1)
    valid = torch.ones(2, 1, 48, 64, dtype=torch.bool)
    with pytest.raises(ValueError, match="measured"):
        dec.embed_image(feats, pts, valid)          # silently treating it as one or the other would be wrong
    est, _, _ = dec.embed_image(feats, pts, valid, torch.tensor([False, False]))
    mixed, _, _ = dec.embed_image(feats, pts, valid, torch.tensor([False, True]))
    torch.testing.assert_close(mixed[0], est[0])
    torch.testing.assert_close(mixed[1] - est[1], (dec.source[1] - dec.source[0]).expand(12, -1))
    q = torch.tensor([[5, 6]])
    s_est, _ = dec.prefill(feats[:1], pts[:1], valid[:1], q, measured=False)
    s_meas, _ = dec.prefill(feats[:1], pts[:1], valid[:1], q, measured=True)
    assert not torch.allclose(s_est.image_out, s_meas.image_out)
    # The old decoder ignores the flag.
    plain = CompactSpatialDecoder(old).eval()
    a, _, _ = plain.embed_image(feats, pts, valid, torch.tensor([False, True]))
    b, _, _ = plain.embed_image(feats, pts, valid)
    torch.testing.assert_close(a, b)


def _mirrored(box: Box3D, cam: CameraModel, up: np.ndarray):
    """The same view reflected in the camera's y-z plane: image column u -> W-1-u."""
    M = np.diag([-1.0, 1.0, 1.0])
    # Reflected axes, the first one turned back so the rotation stays proper (same box).
    box_m = Box3D(M @ box.center, box.size, M @ box.rotation @ M)
    K = cam.K
    cam_m = CameraModel.from_intrinsics(K[0, 0], K[1, 1], cam.width - 1 - K[0, 2], K[1, 2], cam.width, cam.height)
    return box_m, cam_m, M @ up


@pytest.mark.parametrize("yaw", [0.0, 0.4, -1.2, 2.0])
@pytest.mark.parametrize("centre", [(0.3, 0.2, 2.5), (-1.1, 0.4, 3.0), (0.05, -0.3, 1.2)])
def test_mirrored_view_targets_are_the_mirrored_targets(yaw, centre):
    """Training mirrors images on the GPU and turns each target with MIRROR_SIGNS and the patch column
    flip: that must equal the target of the mirrored scene, for tilted and rolled cameras and any yaw."""
    from n3d_ros.core.frames import gravity_rotation
    from n3d_ros.vlm.compact_targets import MIRROR_SIGNS, dense_target, heat_target
    cam = CameraModel.from_intrinsics(240.0, 240.0, 151.3, 122.0, 320, 240)    # off-centre principal point
    up = _tilted_up(-0.3, 0.12)
    box = Box3D(centre, [0.5, 0.9, 0.3], gravity_rotation(up).T @ axis_rotation(1, yaw))
    box_m, cam_m, up_m = _mirrored(box, cam, up)
    t, t_m = box_to_target(box, cam, up, 20, 15, 16), box_to_target(box_m, cam_m, up_m, 20, 15, 16)
    row, col = divmod(t.patch, 20)
    assert t_m.patch == row * 20 + (19 - col)
    np.testing.assert_allclose(t_m.params, t.params * np.array(MIRROR_SIGNS), atol=1e-9)
    # The heat map of the mirrored scene is the heat map with its columns reversed.
    d, d_m = dense_target(box, 3, 1, cam, up, 20, 15, 16), dense_target(box_m, 3, 1, cam_m, up_m, 20, 15, 16)
    heat, heat_m = heat_target([d], 15, 20, 5), heat_target([d_m], 15, 20, 5)
    np.testing.assert_allclose(heat_m.reshape(15, 20, 5), heat.reshape(15, 20, 5)[:, ::-1], atol=1e-9)
