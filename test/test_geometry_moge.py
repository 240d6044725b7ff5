"""MoGe-2 ONNX: metric recovery with known intrinsics on synthetic MoGe-shaped graphs."""
import logging

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from n3d_ros.core.camera import CameraModel
from n3d_ros.geometry.export_onnx import export_onnx
from n3d_ros.geometry.factory import make_encoder
from n3d_ros.geometry.moge import MoGeOnnxEncoder, fit_z_shift, weighted_median

CAM = CameraModel.from_intrinsics(70.0, 72.0, 31.0, 24.5, 64, 48)
SCALE, SHIFT = 2.5, 0.8  # what the synthetic network "predicts": true = SCALE * (x, y, z + SHIFT)


def _scene(cam):
    """Known metric scene: a tilted plane plus a box-shaped bump, depth 1.5-4 m."""
    v, u = np.mgrid[0:cam.height, 0:cam.width]
    depth = 2.0 + 1.5 * u / cam.width + 0.5 * v / cam.height
    depth[10:20, 20:35] -= 0.4
    return cam.ray_directions() * depth[..., None]  # (H, W, 3) metres


def _affine(metric):
    a = metric / SCALE
    a[..., 2] -= SHIFT
    return a.astype(np.float32)


def _moge_graph(path, affine, mask_prob, *, with_num_tokens=True, channels_first=False):
    """Graph with MoGe-2's I/O names whose outputs are constants broadcast to the batch."""
    H, W = affine.shape[:2]
    pts = affine.transpose(2, 0, 1)[None] if channels_first else affine[None]
    inits = [numpy_helper.from_array(pts, "pts_c"),
             numpy_helper.from_array(mask_prob[None].astype(np.float32), "mask_c"),
             numpy_helper.from_array(np.array([SCALE], np.float32), "scale_c"),
             numpy_helper.from_array(np.array(list(pts.shape[1:]), np.int64), "pts_tail"),
             numpy_helper.from_array(np.array([H, W], np.int64), "hw"),
             numpy_helper.from_array(np.array([0], np.int64), "zero"),
             numpy_helper.from_array(np.array([1], np.int64), "one")]
    nodes = [helper.make_node("Shape", ["image"], ["ishape"]),
             helper.make_node("Slice", ["ishape", "zero", "one"], ["b"]),
             helper.make_node("Concat", ["b", "pts_tail"], ["pshape"], axis=0),
             helper.make_node("Concat", ["b", "hw"], ["mshape"], axis=0),
             helper.make_node("Expand", ["pts_c", "pshape"], ["points"]),
             helper.make_node("Identity", ["points"], ["normal"]),
             helper.make_node("Expand", ["mask_c", "mshape"], ["mask"])]
    inputs = [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["B", 3, "H", "W"])]
    if with_num_tokens:
        # metric_scale * (num_tokens > 0): the graph really consumes num_tokens
        inits.append(numpy_helper.from_array(np.array(0, np.int64), "zero_s"))
        nodes += [helper.make_node("Greater", ["num_tokens", "zero_s"], ["nt_pos"]),
                  helper.make_node("Cast", ["nt_pos"], ["nt_f"], to=TensorProto.FLOAT),
                  helper.make_node("Mul", ["scale_c", "nt_f"], ["scale_nt"]),
                  helper.make_node("Expand", ["scale_nt", "b"], ["metric_scale"])]
        inputs.append(helper.make_tensor_value_info("num_tokens", TensorProto.INT64, []))
    else:
        nodes.append(helper.make_node("Expand", ["scale_c", "b"], ["metric_scale"]))
    pshape = ["B", 3, "H", "W"] if channels_first else ["B", "H", "W", 3]
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n, shape in
               (("points", pshape), ("normal", pshape), ("mask", ["B", "H", "W"]), ("metric_scale", ["B"]))]
    graph = helper.make_graph(nodes, "moge_like", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def test_weighted_median_is_l1_minimizer():
    rng = np.random.default_rng(0)
    v, w = rng.normal(size=51), rng.uniform(0.1, 1, 51)
    m = weighted_median(v, w)
    cost = lambda c: np.sum(w * np.abs(v - c))
    assert all(cost(m) <= cost(c) + 1e-12 for c in np.linspace(-3, 3, 601))
    assert np.isnan(weighted_median(np.array([]), np.array([])))


def test_fit_shift_robust_to_outliers():
    metric = _scene(CAM)
    aff = _affine(metric)
    bad = aff.copy()
    rng = np.random.default_rng(1)
    idx = rng.choice(bad.shape[0] * bad.shape[1], size=bad.shape[0] * bad.shape[1] // 5, replace=False)
    bad.reshape(-1, 3)[idx] += rng.normal(scale=2.0, size=(idx.size, 3))  # 20 % garbage
    rays = CAM.ray_directions()[..., :2]
    mask = np.ones(aff.shape[:2], bool)
    assert fit_z_shift(aff, rays, mask) == pytest.approx(SHIFT, abs=1e-4)
    assert fit_z_shift(bad, rays, mask) == pytest.approx(SHIFT, abs=0.05)
    assert np.isnan(fit_z_shift(aff, rays, np.zeros_like(mask)))


@pytest.mark.parametrize("with_num_tokens,channels_first", [(True, False), (False, True)])
def test_recovers_known_metric_points(tmp_path, caplog, with_num_tokens, channels_first):
    metric = _scene(CAM)
    mask_prob = np.full(CAM.height * CAM.width, 0.9, np.float32).reshape(CAM.height, CAM.width)
    mask_prob[:3] = 0.1  # a masked-out band (sky)
    path = _moge_graph(tmp_path / "moge.onnx", _affine(metric), mask_prob, with_num_tokens=with_num_tokens,
                       channels_first=channels_first)
    with caplog.at_level(logging.INFO, logger="n3d_ros.geometry"):
        enc = make_encoder("moge", weights=path, device="cpu", cache_dir=tmp_path)
    assert "MoGe geometry backend: onnxruntime" in caplog.text
    img = np.zeros((CAM.height, CAM.width, 3), np.uint8)
    out = enc.encode([img, img], [CAM, CAM])
    assert out.points.shape == (2, 48, 64, 3) and out.features is None
    np.testing.assert_allclose(out.extras["shift"], SHIFT, atol=1e-4)
    assert not out.mask[:, :3].any() and out.mask[:, 3:].all()
    for i in range(2):
        np.testing.assert_allclose(out.points[i][3:], metric[3:], rtol=1e-4, atol=1e-4)


def test_long_side_resize_uses_resized_intrinsics(tmp_path):
    # The graph outputs the scene as seen by the resized (32x24) camera; recovery must use that camera.
    cam = CameraModel.from_intrinsics(70.0, 70.0, 31.5, 23.5, 64, 48)
    small = cam.with_intrinsics(np.diag([0.5, 0.5, 1.0]) @ cam.K + np.array([[0, 0, -0.25], [0, 0, -0.25], [0, 0, 0]]),
                                32, 24)
    metric = _scene(small)
    path = _moge_graph(tmp_path / "moge.onnx", _affine(metric), np.ones((24, 32), np.float32))
    enc = MoGeOnnxEncoder(path, long_side=32, backend="onnxruntime", device="cpu", cache_dir=tmp_path)
    out = enc.encode([np.zeros((48, 64, 3), np.uint8)], [cam])
    assert out.points.shape == (1, 24, 32, 3)
    np.testing.assert_allclose(out.points[0], metric, rtol=1e-4, atol=1e-4)
    src, m = out.points_on_source(0)
    assert src.shape == (48, 64, 3) and m.all()


def test_rejects_non_moge_graph_and_torch_backend(tmp_path):
    path = _moge_graph(tmp_path / "moge.onnx", _affine(_scene(CAM)), np.ones((48, 64), np.float32))
    with pytest.raises(ValueError, match=r"'torch' is not available.*ONNX only"):
        make_encoder("moge", weights=path, backend="torch", device="cpu")
    model = onnx.load(str(path))
    model.graph.output.pop()  # drop metric_scale
    onnx.save(model, str(tmp_path / "nometric.onnx"))
    with pytest.raises(ValueError, match="metric_scale"):
        MoGeOnnxEncoder(tmp_path / "nometric.onnx", device="cpu")


class _TinyMoGe(torch.nn.Module):
    """A learned MoGe-shaped network (conv trunk, channels-last points, sigmoid mask, pooled scale)."""

    def __init__(self):
        super().__init__()
        self.trunk = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.GELU(),
                                         torch.nn.Conv2d(8, 8, 3, padding=1))
        self.points = torch.nn.Conv2d(8, 3, 1)
        self.mask = torch.nn.Conv2d(8, 1, 1)
        self.scale = torch.nn.Linear(8, 1)

    def forward(self, image):
        f = self.trunk(image)
        p = self.points(f)
        z = torch.exp(p[:, 2:3]) + 1.0  # positive affine depth
        points = torch.cat([p[:, :2] * z, z], dim=1).permute(0, 2, 3, 1)
        mask = torch.sigmoid(self.mask(f))[:, 0]
        scale = torch.exp(self.scale(f.mean(dim=(2, 3))))[:, 0]
        return points, torch.nn.functional.normalize(p, dim=1), mask, scale


def test_onnxruntime_matches_torch_on_moge_shaped_graph(tmp_path):
    torch.manual_seed(0)
    net = _TinyMoGe().eval()
    ex = (torch.rand(2, 3, 24, 32),)
    rep = export_onnx(net, tmp_path / "tiny_moge.onnx", example_inputs=ex, input_names=["image"],
                      output_names=["points", "normal", "mask", "metric_scale"], dynamic=True)
    assert rep.rel_err < 1e-5
    # the encoder's ORT path on the exported graph equals the same recovery applied to torch outputs
    from n3d_ros.geometry.moge import recover_metric_points
    cam = CameraModel.from_intrinsics(30.0, 30.0, 15.5, 11.5, 32, 24)
    img = np.random.default_rng(0).integers(0, 255, (24, 32, 3), dtype=np.uint8)
    out = MoGeOnnxEncoder(rep.path, backend="onnxruntime", device="cpu", cache_dir=tmp_path).encode([img], [cam])
    with torch.no_grad():
        p, _, m, s = net(torch.from_numpy(img.transpose(2, 0, 1)[None] / 255.0).float())
    ref, ref_mask, _ = recover_metric_points(p[0].numpy(), m[0].numpy(), float(s[0]),
                                             cam.ray_directions()[..., :2])
    assert (out.mask[0] == ref_mask).mean() > 0.99
    both = out.mask[0] & ref_mask
    np.testing.assert_allclose(out.points[0][both], ref[both], rtol=1e-3, atol=1e-4)
