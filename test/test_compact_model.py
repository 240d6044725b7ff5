"""The compact decoder: box parameterization round trip, cached decoding == teacher forcing."""
import numpy as np
import pytest
import torch

from n3d_ros.core.box import Box3D
from n3d_ros.core.camera import CameraModel
from n3d_ros.core.frames import axis_rotation
from n3d_ros.core.questions import QuerySpec, QuestionKind
from n3d_ros.vlm.compact_model import CompactSpatialDecoder, CompactVLMConfig
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
