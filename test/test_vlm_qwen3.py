"""Qwen3-VL backend on a tiny random checkpoint (CPU): prompts, JSON decoding, re-raying, reasoning."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from n3d_ros.core.box import Box3D
from n3d_ros.core.camera import CameraModel
from n3d_ros.core.codec_qwen3 import qwen3_grounding_prompt, virtual_camera
from n3d_ros.core.frames import Frame
from n3d_ros.core.objects import GroundedObject
from n3d_ros.vlm.contract import Grounding, ModelLoadError, SceneInput
from n3d_ros.vlm.hf_loading import load_qwen_vl
from n3d_ros.vlm.qwen3_vl import Qwen3VL, Qwen3VLConfig, order_by_targets, reray_box
from test_vlm_n3d import tiny_checkpoint


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    ckpt = load_qwen_vl(tiny_checkpoint(tmp_path_factory, "qwen3_vl"), device="cpu", dtype="fp32",
                        system_prompt=None)
    return Qwen3VL("unused", config=Qwen3VLConfig(device="cpu", dtype="fp32", max_long_side=256,
                                                  max_new_tokens_ground=10, max_new_tokens_reason=10,
                                                  max_seq_len=1024), checkpoint=ckpt)


def _scene(fx: float = 500.0, width: int = 320, height: int = 240) -> SceneInput:
    cam = CameraModel.from_intrinsics(fx, fx, width / 2, height / 2, width, height)
    image = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
    return SceneInput(image=image, camera=cam)


def _force(monkeypatch, backend, text: str) -> list:
    tok = backend.ckpt.tokenizer
    forced = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    prompts = []

    def fake_generate(**inputs):
        prompts.append(tok.decode(inputs["input_ids"][0]))
        return torch.cat([inputs["input_ids"], forced], dim=1)
    monkeypatch.setattr(backend.ckpt.model, "generate", fake_generate)
    monkeypatch.setattr(backend, "decoder", None)
    return prompts


def test_wrong_checkpoint_kind_is_refused(tmp_path_factory):
    with pytest.raises(ModelLoadError, match="model_type='qwen2_5_vl'"):
        Qwen3VL(tiny_checkpoint(tmp_path_factory, "qwen2_5_vl"), config=Qwen3VLConfig(device="cpu"))


def test_end_to_end_random_weights_do_not_crash(backend):
    g = backend.ground(_scene(), "How far is the mug from the laptop?")
    assert isinstance(g, Grounding) and isinstance(g.raw_text, str)
    assert g.objects or g.problems or not g.raw_text.strip()


def test_prompt_is_exact_and_image_is_shrunk(backend, monkeypatch):
    prompts = _force(monkeypatch, backend, "[]")
    scene = _scene(width=640, height=480)
    backend.ground(scene, "How far is the mug from the laptop?")
    text = prompts[0]
    assert text.startswith("<|im_start|>user\n<|vision_start|><|image_pad|>")
    assert text.endswith("<|vision_end|>" + qwen3_grounding_prompt(["mug", "laptop"])
                         + "<|im_end|>\n<|im_start|>assistant\n")
    assert "Locate the mug and laptop in the provided image" in text
    # 640x480 shrunk to 256x192 -> (192/16) x (256/16) patches / 4 per token
    assert text.count("<|image_pad|>") == (192 // 16) * (256 // 16) // 4


def test_targets_override_and_detect_all(backend, monkeypatch):
    prompts = _force(monkeypatch, backend, "[]")
    backend.ground(_scene(), "what is this", targets=["red chair"])
    backend.detect(_scene())
    assert "Locate the red chair in" in prompts[0]
    assert "Locate the all objects in" in prompts[1]


def test_reray_keeps_image_position_and_depth():
    true = CameraModel.from_intrinsics(800.0, 800.0, 330.0, 250.0, 640, 480)
    virtual = virtual_camera(640, 480, 60.0)
    box = Box3D.from_yaw([0.4, -0.2, 3.0], [0.5, 0.4, 0.3], 0.3)
    moved = reray_box(box, virtual, true)
    np.testing.assert_allclose(true.project(moved.center), virtual.project(box.center), atol=1e-6)
    assert moved.center[2] == pytest.approx(3.0)
    np.testing.assert_allclose(moved.size, box.size)
    same = reray_box(box, virtual, virtual)
    np.testing.assert_allclose(same.center, box.center, atol=1e-9)
    np.testing.assert_allclose(same.rotation, box.rotation, atol=1e-9)


def test_forced_json_decodes_into_source_camera(backend, monkeypatch):
    scene = _scene(fx=400.0)
    out = json.dumps([{"bbox_3d": [0.3, 0.1, 2.0, 0.2, 0.3, 0.2, 0, 0, 0], "label": "mug"},
                      {"bbox_3d": [-0.5, 0.2, 2.5, 0.4, 0.1, 0.3, 0, 0.1, 0], "label": "laptop"}])
    _force(monkeypatch, backend, "```json\n" + out + "\n```")
    g = backend.ground(scene, "How far is the mug from the laptop?")
    assert [o.label for o in g.objects] == ["mug", "laptop"]
    virtual = virtual_camera(scene.camera.width, scene.camera.height, 60.0)
    np.testing.assert_allclose(scene.camera.project(g.objects[0].box.center),
                               virtual.project(np.array([0.3, 0.1, 2.0])), atol=1e-6)
    assert g.objects[0].box_2d is not None and g.objects[0].box.frame == Frame.OPTICAL


def test_reason_uses_box_arithmetic_when_question_parses(backend, monkeypatch):
    _force(monkeypatch, backend, "should not be used")
    a = GroundedObject(Box3D.from_yaw([1.0, 0.0, 2.0], [0.2, 0.2, 0.2], 0.0), "laptop")
    b = GroundedObject(Box3D.from_yaw([0.0, 0.0, 2.0], [0.2, 0.2, 0.2], 0.0), "mug")
    g = Grounding(objects=[a, b])  # model order differs from the question's order
    ans = backend.reason(_scene(), "How far is the mug from the laptop?", g)
    assert ans.value == pytest.approx(1.0)
    assert "1" in ans.answer and ans.reasoning


def test_reason_falls_back_to_the_model(backend, monkeypatch):
    prompts = _force(monkeypatch, backend, "<think>look</think> It is a kitchen.")
    g = Grounding(objects=[GroundedObject(Box3D.from_yaw([0, 0, 2.0], [0.2] * 3, 0.0), "mug")])
    ans = backend.reason(_scene(), "Describe the scene", g)
    assert ans.answer == "It is a kitchen." and ans.reasoning == "look"
    assert '"label": "mug"' in prompts[0]


def test_order_by_targets():
    mk = lambda lab: GroundedObject(Box3D.from_yaw([0, 0, 1.0], [0.1] * 3, 0.0), lab)  # noqa: E731
    objs = [mk("white laptop"), mk("cup"), mk("mug")]
    assert [o.label for o in order_by_targets(objs, ("mug", "laptop"))] == ["mug", "white laptop", "cup"]
