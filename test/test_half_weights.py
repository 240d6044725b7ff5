"""tools.half_weights: float16 storage, fp32 arithmetic, the same rounded weights in both encoders."""
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from n3d_ros.geometry.checkpoint_io import load_safetensors, save_safetensors
from n3d_ros.geometry.compact_encoder import CompactEncoderConfig, CompactGeometryEncoder
from n3d_ros.geometry.export_onnx import export_onnx
from n3d_ros.tools.half_weights import SMALLEST, half_model_folder

CFG = CompactEncoderConfig(in_width=128, in_height=96, widths=(8, 8, 16, 16), depths=(1, 1, 1, 1),
                           decoder_dim=8, feature_dim=8, fine_features=True)
NAMES_IN, NAMES_OUT = ["image", "rays"], ["points", "mask_logits", "features"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    src, dst = tmp_path_factory.mktemp("fp32"), tmp_path_factory.mktemp("fp16")
    torch.manual_seed(0)
    enc = CompactGeometryEncoder(CFG).eval()
    with torch.no_grad():   # weights that fp16 cannot hold exactly, in every layer
        for p in enc.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    save_safetensors(enc, src / "encoder.safetensors")
    save_safetensors(torch.nn.Linear(7, 5), src / "decoder.safetensors")
    example = (torch.rand(1, 3, 96, 128), torch.randn(1, 2, 96, 128) * 0.4)
    export_onnx(enc, src / "encoder.onnx", example_inputs=example, input_names=NAMES_IN,
                output_names=NAMES_OUT, dynamic=True, opset=17)
    (src / "config.json").write_text(json.dumps({"format": "n3d_compact"}))
    half_model_folder(src, dst)
    return src, dst, enc


def test_files_hold_half_the_bytes_and_the_rest_is_copied(folders):
    src, dst, _ = folders
    assert (dst / "encoder.safetensors").stat().st_size < 0.6 * (src / "encoder.safetensors").stat().st_size

    def weight_bytes(path):
        return sum(len(i.raw_data) for i in onnx.load(str(path)).graph.initializer)
    assert weight_bytes(dst / "encoder.onnx") < 0.6 * weight_bytes(src / "encoder.onnx")
    assert (dst / "config.json").read_text() == (src / "config.json").read_text()
    model = onnx.load(str(dst / "encoder.onnx"))
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)
    assert model.graph.node[0].op_type == "Cast"


def test_both_encoders_run_the_same_rounded_weights(folders):
    src, dst, enc = folders
    rounded = CompactGeometryEncoder(CFG).eval()
    load_safetensors(rounded, dst / "encoder.safetensors")     # fp16 file into fp32 parameters
    assert all(p.dtype == torch.float32 for p in rounded.parameters())
    for (name, p), q in zip(enc.named_parameters(), rounded.parameters()):
        torch.testing.assert_close(q, p.half().float() if p.numel() >= SMALLEST else p, rtol=0, atol=0, msg=name)
    assert any(not torch.equal(p, q) for p, q in zip(enc.parameters(), rounded.parameters()))
    image, rays = torch.rand(1, 3, 80, 112), torch.randn(1, 2, 80, 112) * 0.4   # another size: dynamic
    with torch.no_grad():
        want = [t.numpy() for t in rounded(image, rays)]
        exact = [t.numpy() for t in enc(image, rays)]
    for folder, ref in ((dst, want), (src, exact)):
        sess = ort.InferenceSession(str(folder / "encoder.onnx"), providers=["CPUExecutionProvider"])
        got = sess.run(NAMES_OUT, {"image": image.numpy(), "rays": rays.numpy()})
        for g, w in zip(got, ref):
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


def test_a_folder_is_not_halved_onto_itself(folders):
    src, _, _ = folders
    with pytest.raises(ValueError, match="somewhere else"):
        half_model_folder(src, src)


def test_a_folder_without_onnx_gets_one_from_the_rounded_weights(folders, tmp_path):
    from dataclasses import asdict
    src, _, enc = folders
    bare = tmp_path / "bare"
    bare.mkdir()
    save_safetensors(enc, bare / "encoder.safetensors")
    (bare / "config.json").write_text(json.dumps({"format": "n3d_compact", "encoder": asdict(CFG)}))
    out = tmp_path / "out"
    half_model_folder(bare, out)
    model = onnx.load(str(out / "encoder.onnx"))
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)
    rounded = load_safetensors(CompactGeometryEncoder(CFG).eval(), out / "encoder.safetensors")
    image, rays = torch.rand(1, 3, 80, 112), torch.randn(1, 2, 80, 112) * 0.4
    with torch.no_grad():
        want = [t.numpy() for t in rounded(image, rays)]
    sess = ort.InferenceSession(str(out / "encoder.onnx"), providers=["CPUExecutionProvider"])
    for g, w in zip(sess.run(NAMES_OUT, {"image": image.numpy(), "rays": rays.numpy()}), want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)
