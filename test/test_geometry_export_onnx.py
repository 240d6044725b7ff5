"""export_onnx: fixed and dynamic shapes, both exporters, numerical check against torch."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from n3d_ros.geometry.compact_encoder import CompactEncoderConfig, CompactGeometryEncoder
from n3d_ros.geometry.export_onnx import export_onnx, file_sha256, onnx_sha256, relative_error

NAMES_IN, NAMES_OUT = ("image", "rays"), ("points", "mask_logits", "features")
# a narrow, shallow encoder: export cost is per op, and the ops are the same as the full one's
# (stride-8 fine features included, as in the shipped model)
CFG = CompactEncoderConfig(in_width=128, in_height=96, widths=(8, 8, 16, 16), depths=(1, 1, 1, 1),
                           decoder_dim=8, feature_dim=8, fine_features=True)


def _example(b=1, h=96, w=128):
    g = torch.Generator().manual_seed(b * 1000 + h)
    return torch.rand(b, 3, h, w, generator=g), torch.randn(b, 2, h, w, generator=g) * 0.4


@pytest.fixture(scope="module")
def module():
    torch.manual_seed(0)
    return CompactGeometryEncoder(CFG).eval()


@pytest.fixture(scope="module")
def context_module():
    """With global self-attention blocks (their projections made non-zero, or they would be identity)."""
    torch.manual_seed(1)
    m = CompactGeometryEncoder(CompactEncoderConfig(**{**CFG.__dict__, "context_layers": 1, "context_heads": 2}))
    with torch.no_grad():
        for p in list(m.context.parameters()) + list(m.context_pos.parameters()):
            p.add_(torch.randn_like(p) * 0.1)
    return m.eval()


def _dims(path):
    m = onnx.load(str(path))
    return m, [[d.dim_value or d.dim_param for d in i.type.tensor_type.shape.dim] for i in m.graph.input]


def test_fixed_shapes(module, tmp_path):
    rep = export_onnx(module, tmp_path / "fixed.onnx", example_inputs=_example(), input_names=NAMES_IN,
                      output_names=NAMES_OUT, dynamic=False)
    assert rep.exporter == "torchscript" and rep.opset == 17 and rep.rel_err < 1e-5
    model, dims = _dims(rep.path)
    assert dims[0] == [1, 3, 96, 128] and model.opset_import[0].version >= 17
    assert rep.sha256 == file_sha256(rep.path) == onnx_sha256(rep.path)
    sess = ort.InferenceSession(str(rep.path), providers=["CPUExecutionProvider"])
    with pytest.raises(Exception):  # fixed means fixed: batch 2 is refused
        sess.run(None, {n: t.numpy() for n, t in zip(NAMES_IN, _example(b=2))})


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_dynamic_shapes_run_at_other_sizes(module, tmp_path, exporter):
    _check_dynamic(module, tmp_path, exporter)


def test_context_blocks_export_with_dynamic_shapes(context_module, tmp_path):
    _check_dynamic(context_module, tmp_path, "torchscript")


def _check_dynamic(module, tmp_path, exporter):
    rep = export_onnx(module, tmp_path / f"dyn_{exporter}.onnx", example_inputs=_example(),
                      input_names=NAMES_IN, output_names=NAMES_OUT, dynamic=True, exporter=exporter)
    assert rep.exporter == exporter and rep.rel_err < 1e-5
    assert not (tmp_path / f"dyn_{exporter}.onnx.data").exists()  # self-contained
    _, dims = _dims(rep.path)
    assert all(isinstance(d, str) for d in (dims[0][0], dims[0][2], dims[0][3]))
    sess = ort.InferenceSession(str(rep.path), providers=["CPUExecutionProvider"])
    inputs = _example(b=2, h=64, w=160)
    outs = sess.run(None, {n: t.numpy() for n, t in zip(NAMES_IN, inputs)})
    with torch.no_grad():
        ref = module(*inputs)
    for o, r in zip(outs, ref):
        assert o.shape == tuple(r.shape)
        assert relative_error(o, r.numpy()) < 1e-5


def test_rejects_low_opset_and_bad_names(module, tmp_path):
    with pytest.raises(ValueError, match="opset must be >= 17"):
        export_onnx(module, tmp_path / "x.onnx", example_inputs=_example(), input_names=NAMES_IN,
                    output_names=NAMES_OUT, opset=13)
    with pytest.raises(ValueError, match="2 example inputs but 1 input names"):
        export_onnx(module, tmp_path / "x.onnx", example_inputs=_example(), input_names=["image"],
                    output_names=NAMES_OUT)


def test_relative_error_detects_difference():
    ref = np.ones((4, 4))
    assert relative_error(ref, ref) == 0.0
    assert relative_error(ref * 1.01, ref) == pytest.approx(0.01)
