"""N3D-VLM backend on a tiny random Qwen2.5-VL checkpoint (CPU): loading, 3D PE, prompts, decoding."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from n3d_ros.core.box import Box3D
from n3d_ros.core.camera import CameraModel
from n3d_ros.core.codec_n3d import CODE_TEMPLATE, encode_boxes, grounding_prompt
from n3d_ros.core.frames import Frame
from n3d_ros.core.objects import GroundedObject
from n3d_ros.vlm.contract import Grounding, ModelLoadError, SceneInput
from n3d_ros.vlm.hf_loading import load_qwen_vl, validate_checkpoint_dir, write_random_checkpoint
from n3d_ros.vlm.n3d_position_encoding import (N3DPositionEncoder, merger_input_order,
                                               point_cloud_pe)
from n3d_ros.vlm.n3d_vlm import (MissingGeometryError, N3DVLM, N3DVLMConfig, resize_long_side,
                                 split_think)


def tiny_checkpoint(factory: pytest.TempPathFactory, model_type: str) -> Path:
    """One tiny random checkpoint per model type per test session (shared by the test files)."""
    root = factory.getbasetemp() / f"tiny_{model_type}"
    if not (root / "model.safetensors").is_file():
        write_random_checkpoint(root, model_type, seed=0)
    return root


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return load_qwen_vl(tiny_checkpoint(tmp_path_factory, "qwen2_5_vl"), device="cpu", dtype="fp32")


def _scene(width: int = 320, height: int = 240, seed: int = 0) -> SceneInput:
    rng = np.random.default_rng(seed)
    cam = CameraModel.from_intrinsics(300.0, 300.0, width / 2 - 0.5, height / 2 - 0.5, width, height)
    depth = 2.0 + 0.5 * rng.random((height, width))
    depth[:10, :10] = np.nan  # a hole: invalid points
    points, mask = cam.depth_to_points(depth)
    image = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    return SceneInput(image=image, camera=cam, points=points.astype(np.float32), mask=mask)


# ------------------------------------------------------------------ independent PE (numpy, loops)
def reference_pe(points: np.ndarray, valid: np.ndarray, gh: int, gw: int, width: int):
    """Straight from the spec: returns (q (gh*gw, 3), pe (gh*gw, width)) in row-major order."""
    pts = np.asarray(points, dtype=np.float64).copy()
    pts[~valid] = pts[valid].mean(axis=0)
    H, W = valid.shape
    pooled = np.zeros((gh, gw, 3))
    for i in range(gh):
        y0, y1 = (i * H) // gh, -(-((i + 1) * H) // gh)
        for j in range(gw):
            x0, x1 = (j * W) // gw, -(-((j + 1) * W) // gw)
            pooled[i, j] = pts[y0:y1, x0:x1].reshape(-1, 3).mean(axis=0)
    c = np.mean([pooled[..., a].mean() for a in range(3)])
    q = np.round((pooled - c) / 0.001).reshape(-1, 3)
    F = width // 3
    pe = np.zeros((q.shape[0], width))
    for n in range(q.shape[0]):
        for a in range(3):
            for i in range(F):
                val = q[n, a] / 10000 ** (2 * (i // 2) / F)
                pe[n, a * F + i] = math.sin(val) if i % 2 == 0 else math.cos(val)
    return q, pe


@pytest.mark.parametrize("width", [64, 1280])
def test_pe_matches_independent_spec(width):
    rng = np.random.default_rng(1)
    H, W, gh, gw = 45, 64, 6, 8  # uneven pooling windows
    pts = rng.normal(size=(H, W, 3)).astype(np.float32)
    valid = rng.random((H, W)) > 0.2
    q_ref, pe_ref = reference_pe(pts, valid, gh, gw, width)
    pe = point_cloud_pe(torch.from_numpy(pts), torch.from_numpy(valid), gh, gw, width).numpy()
    assert pe.shape == (gh * gw, width)
    if width == 1280:
        assert np.all(pe[:, 1278:] == 0)  # 3 * 426 = 1278, then zero padding
    # float32 vs float64 pooling may flip a rounding at an exact .5: allow rare off-by-one rows.
    from n3d_ros.vlm.n3d_position_encoding import fill_invalid, pool_to_grid, quantize_grid
    q = quantize_grid(pool_to_grid(fill_invalid(torch.from_numpy(pts), torch.from_numpy(valid)),
                                   gh, gw)).reshape(-1, 3).numpy()
    assert np.abs(q - q_ref).max() <= 1
    same = np.all(q == q_ref, axis=1)
    assert same.mean() > 0.95
    np.testing.assert_allclose(pe[same], pe_ref[same], atol=2e-4)


def test_pe_odd_feature_count_interleaves_sin_cos():
    from n3d_ros.vlm.n3d_position_encoding import sinusoid_pe
    q = torch.tensor([[1000.0, -2000.0, 3.0]])
    out = sinusoid_pe(q, 64)[0].numpy()  # F = 21 (odd), 63 values + 1 zero
    assert out[0] == pytest.approx(math.sin(1000.0))
    assert out[1] == pytest.approx(math.cos(1000.0))
    assert out[21] == pytest.approx(math.sin(-2000.0), abs=1e-5)
    assert out[20] == pytest.approx(math.sin(1000.0 / 10000 ** (20 / 21)), abs=1e-6)
    assert out[63] == 0.0


def _hf_hidden_positions(visual, grid):
    """(seq, 2) (h, w) patch position of each hidden row at the merger input, from transformers."""
    from transformers.vision_utils import get_vision_position_ids, get_vision_window_index
    g = torch.tensor(grid)
    pos = get_vision_position_ids(g, visual.spatial_merge_size)
    widx, _ = get_vision_window_index(g, visual.spatial_merge_size, visual.window_size,
                                      visual.patch_size)
    return visual.permute_input_for_window_attn(pos, widx, pos.shape[0])


def test_merger_order_matches_transformers_window_index(ckpt):
    visual = ckpt.model.model.visual
    grids = [[1, 16, 22], [1, 12, 8]]
    order = merger_input_order(grids, merge_size=2, window_size=112, patch_size=14)
    hw = _hf_hidden_positions(visual, grids).numpy()
    offsets = np.repeat([0, 16 * 22], [16 * 22, 12 * 8])
    widths = np.repeat([22, 8], [16 * 22, 12 * 8])
    np.testing.assert_array_equal(order, hw[:, 0] * widths + hw[:, 1] + offsets)
    assert not np.array_equal(order, np.arange(order.size))  # the permutation is not trivial


@pytest.mark.parametrize("align", [False, True])
def test_pe_hook_adds_rows_in_reference_order(ckpt, align):
    model = ckpt.model
    visual = model.model.visual
    scene = _scene()
    captured = {}
    before = visual.merger.register_forward_pre_hook(lambda m, a: captured.__setitem__("in", a[0].clone()))
    enc = N3DPositionEncoder(model, align=align)
    after = visual.merger.register_forward_pre_hook(lambda m, a: captured.__setitem__("out", a[0].clone()))
    try:
        inputs = ckpt.encode("<image>hi", [scene.image])
        grid = inputs["image_grid_thw"][0].tolist()
        cloud = np.nan_to_num(scene.points)
        enc.set_point_maps([(cloud, scene.mask)])
        with torch.no_grad():
            model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"])
        delta = (captured["out"] - captured["in"]).numpy()
        pe_rows = point_cloud_pe(torch.from_numpy(cloud.astype(np.float32)),
                                 torch.from_numpy(scene.mask), grid[1], grid[2], 64).numpy()
        if align:
            hw = _hf_hidden_positions(visual, [grid]).numpy()
            expected = pe_rows[hw[:, 0] * grid[2] + hw[:, 1]]
        else:
            expected = pe_rows  # row k of the row-major PE on hidden row k (the checkpoint's quirk)
        np.testing.assert_allclose(delta, expected, atol=1e-5)
    finally:
        enc.remove()
        before.remove()
        after.remove()


def test_vision_forward_without_point_map_raises(ckpt):
    enc = N3DPositionEncoder(ckpt.model)
    try:
        inputs = ckpt.encode("<image>hi", [_scene().image])
        with pytest.raises(RuntimeError, match="no point map"):
            with torch.no_grad():
                ckpt.model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"])
    finally:
        enc.remove()


# ------------------------------------------------------------------ loading errors
def test_missing_folder(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        validate_checkpoint_dir(tmp_path / "nope")


def test_folder_without_weights(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2_5_vl"}))
    with pytest.raises(ModelLoadError, match="has no weights"):
        validate_checkpoint_dir(tmp_path)


def test_folder_with_only_pickle_weights(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2_5_vl"}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"not really a pickle")
    with pytest.raises(ModelLoadError, match=r"pickle weights \['pytorch_model.bin'\]"):
        load_qwen_vl(tmp_path)


def test_missing_shard_and_tokenizer_named(tmp_path, tmp_path_factory):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2_5_vl"}))
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"a": "model-00001-of-00002.safetensors",
                        "b": "model-00002-of-00002.safetensors"}}))
    (tmp_path / "model-00001-of-00002.safetensors").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="model-00002-of-00002.safetensors"):
        validate_checkpoint_dir(tmp_path)
    (tmp_path / "model-00002-of-00002.safetensors").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="no tokenizer"):
        validate_checkpoint_dir(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="preprocessor_config.json"):
        validate_checkpoint_dir(tmp_path)
    with pytest.raises(ModelLoadError, match="expected one of"):
        validate_checkpoint_dir(tiny_checkpoint(tmp_path_factory, "qwen2_5_vl"),
                                expect_model_type="qwen3_vl")


# ------------------------------------------------------------------ prompts
def test_prompt_text_is_exact(ckpt):
    q = "How far is the mug from the laptop?"
    expected_user = ("<image>How far is the mug from the laptop? First locate the bbox of the "
                     "aforementioned object(s). The reference code is as followed: @dataclass\n"
                     "class Bbox:\n    class: str\n    position_u: int\n    position_v: int\n"
                     "    position_z: int\n    angle_y: int\n    scale_x: int\n    scale_y: int\n"
                     "    scale_z: int")
    assert grounding_prompt(q) == expected_user
    assert CODE_TEMPLATE in expected_user
    assert ckpt.chat_text(expected_user) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        + expected_user + "<|im_end|>\n<|im_start|>assistant\n")
    inputs = ckpt.encode(expected_user, [_scene().image])
    ids = inputs["input_ids"][0].tolist()
    tok = ckpt.tokenizer
    n_img = int(inputs["image_grid_thw"][0].prod()) // 4
    start = ids.index(tok.convert_tokens_to_ids("<|vision_start|>"))
    assert ids[start + 1: start + 1 + n_img] == [ckpt.image_token_id] * n_img
    assert ids[start + 1 + n_img] == tok.convert_tokens_to_ids("<|vision_end|>")
    assert tok.decode(ids[start + 2 + n_img:]).startswith(q + " First locate")
    assert inputs["mm_token_type_ids"][0].sum().item() == n_img


def test_resize_long_side_and_think_split():
    assert resize_long_side(1024, 683, 640) == (640, 426)
    assert resize_long_side(683, 1024, 640) == (426, 640)
    assert split_think("<think>a to b is 1 m</think> 1 m") == ("1 m", "a to b is 1 m", [])
    ans, think, problems = split_think("just text")
    assert (ans, think) == ("just text", "") and problems


# ------------------------------------------------------------------ backend end to end
@pytest.fixture(scope="module")
def vlm(ckpt):
    backend = N3DVLM("unused", config=N3DVLMConfig(device="cpu", dtype="fp32", max_new_tokens_ground=12,
                                                   max_new_tokens_reason=12, max_seq_len=1024),
                     checkpoint=ckpt)
    yield backend
    backend.pe.remove()


def test_end_to_end_random_weights_do_not_crash(vlm):
    scene = _scene()
    g = vlm.ground(scene, "How far is the mug from the laptop?")
    assert isinstance(g, Grounding) and isinstance(g.raw_text, str)
    assert all(o.box.frame == Frame.OPTICAL for o in g.objects)
    assert g.objects or g.problems or not g.raw_text.strip()
    ans = vlm.reason(scene, "How far is the mug from the laptop?", g)
    assert isinstance(ans.answer, str)
    d = vlm.detect(scene)
    assert isinstance(d, Grounding) and d.spec is None


def test_scene_without_points_needs_geometry(vlm):
    s = _scene()
    with pytest.raises(MissingGeometryError, match="needs a point map"):
        vlm.ground(SceneInput(image=s.image, camera=s.camera), "Where is the mug?")


def _force_generate(monkeypatch, vlm, text: str) -> None:
    """Make the model 'answer' `text` (through the real tokenizer and decode path)."""
    tok = vlm.ckpt.tokenizer
    forced = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])

    def fake_generate(**inputs):
        return torch.cat([inputs["input_ids"], forced], dim=1)
    monkeypatch.setattr(vlm.ckpt.model, "generate", fake_generate)
    monkeypatch.setattr(vlm, "decoder", None)


def test_forced_bins_decode_to_source_optical_boxes(vlm, monkeypatch):
    scene = _scene(width=400, height=300)
    prep = vlm.prepare(scene)
    truth = [GroundedObject(Box3D.from_yaw([0.2, 0.1, 2.2], [0.3, 0.2, 0.25], 0.4), "mug", id="bbox_0"),
             GroundedObject(Box3D.from_yaw([-0.3, 0.05, 2.4], [0.4, 0.05, 0.3], -0.2), "laptop",
                            id="bbox_1")]
    text = encode_boxes(truth, prep.camera, prep.norm, bins=True)
    _force_generate(monkeypatch, vlm, text)
    g = vlm.ground(scene, "How far is the mug from the laptop?")
    assert [o.label for o in g.objects] == ["mug", "laptop"]
    assert g.spec is not None and g.spec.targets == ("mug", "laptop")
    for got, want in zip(g.objects, truth):
        assert got.box.frame == Frame.OPTICAL
        # bins quantize u, v to 1/1000 of the image and z, sizes to 2/1000 / 0.625/1000 of the
        # normalized cloud: a few millimetres at 2 m.
        np.testing.assert_allclose(got.box.center, want.box.center, atol=0.02)
        np.testing.assert_allclose(got.box.size, want.box.size, atol=0.02)
        np.testing.assert_allclose(got.box_2d, want.box.project_2d(scene.camera), atol=3.0)


def test_forced_reasoning_output_is_split(vlm, monkeypatch):
    scene = _scene()
    _force_generate(monkeypatch, vlm, "<think>vector [0.5, 0, 0]; norm 0.5</think> 0.5 metres")
    g = Grounding(objects=[GroundedObject(Box3D.from_yaw([0.2, 0.1, 2.2], [0.3, 0.2, 0.25], 0.0), "mug")])
    ans = vlm.reason(scene, "How far is the mug from the laptop? Answer in metres.", g)
    assert ans.answer == "0.5 metres"
    assert ans.reasoning == "vector [0.5, 0, 0]; norm 0.5"
    assert not ans.problems
