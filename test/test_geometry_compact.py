"""Compact encoder module, safetensors I/O and the GeometryEncoder contract (torch backend)."""
import numpy as np
import pytest
import torch

from n3d_ros.core.camera import CameraModel
from n3d_ros.geometry.checkpoint_io import load_safetensors, save_safetensors
from n3d_ros.geometry.compact_encoder import CompactEncoderConfig, CompactGeometryEncoder, count_parameters
from n3d_ros.geometry.contract import GeometryEncoder
from n3d_ros.geometry.factory import make_encoder


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(0)
    return save_safetensors(CompactGeometryEncoder(), tmp_path_factory.mktemp("w") / "compact.safetensors")


def test_module_shapes_bounds_and_rays():
    cfg = CompactEncoderConfig()
    m = CompactGeometryEncoder(cfg).eval()
    assert 2_000_000 <= count_parameters(m) <= 5_000_000
    img = torch.rand(2, 3, 96, 128)
    rays = torch.randn(2, 2, 96, 128) * 0.5
    with torch.no_grad():
        pts, mask_logits, feats = m(img, rays)
    assert pts.shape == (2, 3, 96, 128) and mask_logits.shape == (2, 1, 96, 128)
    assert feats.shape == (2, cfg.feature_dim, 6, 8)
    z = pts[:, 2]
    assert z.min() >= cfg.min_depth * 0.999 and z.max() <= cfg.max_depth * 1.001
    torch.testing.assert_close(pts[:, :2], rays * z[:, None])  # points lie on the given rays


def test_fine_features_add_the_stride8_map_to_the_tokens():
    torch.manual_seed(0)
    coarse = CompactGeometryEncoder(CompactEncoderConfig()).eval()
    fine = CompactGeometryEncoder(CompactEncoderConfig(fine_features=True)).eval()
    assert coarse.fine is None and fine.fine.stride == (2, 2)
    fine.load_state_dict(coarse.state_dict(), strict=False)   # all but the fine conv
    img, rays = torch.rand(1, 3, 96, 128), torch.randn(1, 2, 96, 128) * 0.5
    with torch.no_grad():
        ref = coarse(img, rays)[2]
        out = fine(img, rays)[2]
        assert out.shape == ref.shape and not torch.allclose(out, ref)
        fine.fine.weight.zero_()
        fine.fine.bias.zero_()
        torch.testing.assert_close(fine(img, rays)[2], ref)   # the fine map is added, nothing else changes


def test_context_blocks_start_as_identity_and_then_mix_the_whole_image():
    torch.manual_seed(0)
    plain = CompactGeometryEncoder(CompactEncoderConfig()).eval()
    ctx = CompactGeometryEncoder(CompactEncoderConfig(context_layers=2)).eval()
    assert count_parameters(ctx) - count_parameters(plain) < 1_000_000
    ctx.load_state_dict(plain.state_dict(), strict=False)     # all but the context blocks
    img, rays = torch.rand(1, 3, 96, 128), torch.randn(1, 2, 96, 128) * 0.5
    with torch.no_grad():
        for a, b in zip(ctx(img, rays), plain(img, rays)):
            torch.testing.assert_close(a, b)                     # zeroed projections: identity at the start
    # A block mixes all tokens: changing the first token changes the last one's output.
    blk = ctx.context[0]
    with torch.no_grad():
        for p in blk.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        t = torch.randn(1, 12, 224)
        t2 = t.clone()
        t2[:, 0] += torch.randn(224)   # (a constant shift would vanish in the layer norm)
        assert (blk(t2) - blk(t))[:, -1].abs().max() > 1e-4
        assert blk(t).shape == t.shape


def test_config_rejects_bad_grid():
    with pytest.raises(ValueError, match="multiples of 16"):
        CompactEncoderConfig(in_width=100)
    with pytest.raises(ValueError, match="context_heads"):
        CompactEncoderConfig(context_layers=1, context_heads=5)


def test_safetensors_round_trip_and_mismatch(tmp_path):
    a, b = CompactGeometryEncoder(), CompactGeometryEncoder()
    path = save_safetensors(a, tmp_path / "a.safetensors")
    load_safetensors(b, path)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k
    small = CompactGeometryEncoder(CompactEncoderConfig(feature_dim=64))
    with pytest.raises(ValueError, match="shape mismatch"):
        load_safetensors(small, path)
    with pytest.raises(ValueError, match="not found"):
        load_safetensors(b, tmp_path / "missing.safetensors")


@pytest.mark.parametrize("batch", [1, 3])
def test_contract_shapes(weights, tmp_path, batch):
    enc = make_encoder("compact", weights=weights, backend="torch", device="cpu", cache_dir=tmp_path)
    assert isinstance(enc, GeometryEncoder)
    cams = [CameraModel.from_intrinsics(500, 500, 319.5, 239.5, 640, 480),
            CameraModel.from_intrinsics(300, 310, 160, 120, 320, 240),
            CameraModel.from_intrinsics(900, 900, 640, 360, 1280, 720)][:batch]
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 255, (c.height, c.width, 3), dtype=np.uint8) for c in cams]
    out = enc.encode(imgs, cams)
    assert out.points.shape == (batch, 240, 320, 3) and out.points.dtype == np.float32
    assert out.mask.shape == (batch, 240, 320) and out.mask.dtype == np.bool_
    assert out.features.shape == (batch, 192, 15, 20)
    assert len(out.transforms) == batch and out.backend == "torch(cpu, fp32)"
    assert np.isnan(out.points[~out.mask]).all() and (out.points[out.mask][:, 2] > 0).all()
    for i, c in enumerate(cams):
        pts, m = out.points_on_source(i)
        assert pts.shape == (c.height, c.width, 3) and m.shape == (c.height, c.width)
    with pytest.raises(ValueError, match="2 images but 1 cameras"):
        enc.encode(imgs[:1] * 2, cams[:1])
    enc.close()


def test_batch_equals_single(weights, tmp_path):
    enc = make_encoder("compact", weights=weights, backend="torch", device="cpu", cache_dir=tmp_path)
    cam = CameraModel.from_intrinsics(500, 500, 319.5, 239.5, 640, 480)
    rng = np.random.default_rng(1)
    imgs = [rng.integers(0, 255, (480, 640, 3), dtype=np.uint8) for _ in range(2)]
    both = enc.encode(imgs, [cam, cam])
    one = enc.encode(imgs[1:], [cam])
    np.testing.assert_allclose(both.points[1], one.points[0], rtol=1e-4, atol=1e-5)


def test_bf16_autocast_close_to_fp32(weights, tmp_path):
    cam = CameraModel.from_intrinsics(240, 240, 159.5, 119.5, 320, 240)
    img = np.random.default_rng(2).integers(0, 255, (240, 320, 3), dtype=np.uint8)
    ref = make_encoder("compact", weights=weights, backend="torch", device="cpu").encode([img], [cam])
    low = make_encoder("compact", weights=weights, backend="torch", device="cpu",
                       precision="bf16").encode([img], [cam])
    assert low.backend == "torch(cpu, bf16)"
    m = ref.mask & low.mask
    rel = np.linalg.norm(low.points[m] - ref.points[m]) / np.linalg.norm(ref.points[m])
    assert rel < 5e-2


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_the_tensor_encoding_is_the_host_encoding(weights, tmp_path, backend):
    # encode_tensors is what the compact backend uses (on the GPU its point maps stay there); encode
    # is the GeometryOutput contract on top of it: same validity, same points where valid, zeros elsewhere.
    enc = make_encoder("compact", weights=weights, backend=backend, device="cpu", cache_dir=tmp_path)
    cam = CameraModel.from_intrinsics(450, 450, 300.0, 200.0, 600, 400)
    img = np.random.default_rng(3).integers(0, 255, (400, 600, 3), dtype=np.uint8)
    host = enc.encode([img], [cam], mirrored=True)
    dev = enc.encode_tensors([img], [cam], mirrored=True)
    assert dev.points.shape == (2, 3, 240, 320) and dev.valid.shape == (2, 1, 240, 320)
    assert dev.points.device.type == "cpu" and dev.valid.dtype == torch.bool
    np.testing.assert_array_equal(dev.valid[:, 0].numpy(), host.mask)
    pts = dev.points.permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(pts[host.mask], host.points[host.mask])
    assert (pts[~host.mask] == 0).all()
    np.testing.assert_array_equal(dev.features.numpy(), host.features)
    enc.close()


def test_cuda_graphs_are_only_for_torch_on_cuda(weights):
    enc = make_encoder("compact", weights=weights, backend="torch", device="cpu", cuda_graphs=True)
    assert enc.backend == "torch(cpu, fp32)" and not enc.runner.cuda_graphs


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision,tol", [("fp32", 1e-5), ("bf16", 1e-2)])
def test_cuda_graph_replays_match_eager_and_do_not_overwrite_earlier_outputs(weights, precision, tol):
    graphs = make_encoder("compact", weights=weights, backend="torch", device="cuda", cuda_graphs=True,
                          precision=precision)
    eager = make_encoder("compact", weights=weights, backend="torch", device="cuda", cuda_graphs=False,
                         precision=precision)
    assert graphs.backend == f"torch_cuda_graphs(cuda, {precision})" and eager.backend == f"torch(cuda, {precision})"
    cam = CameraModel.from_intrinsics(450, 450, 300.0, 200.0, 600, 400)
    rng = np.random.default_rng(4)
    imgs = [rng.integers(0, 255, (400, 600, 3), dtype=np.uint8) for _ in range(3)]
    first = graphs.encode_tensors(imgs[:1], [cam], mirrored=True)
    kept = first.points.clone()
    for img in imgs:                                       # replays of the captured graphs (batch 2, then 1)
        for mirrored in (True, False):
            a = graphs.encode_tensors([img], [cam], mirrored=mirrored)
            b = eager.encode_tensors([img], [cam], mirrored=mirrored)
            torch.testing.assert_close(a.points, b.points, rtol=tol, atol=tol)
            torch.testing.assert_close(a.features, b.features, rtol=tol, atol=tol)
            if precision == "fp32":
                assert torch.equal(a.valid, b.valid)
            else:                                          # a logit at 0 may round either way in bf16
                assert (a.valid != b.valid).float().mean() < 1e-3
    assert len(graphs.runner._graphs) == 2
    assert torch.equal(first.points, kept)                 # outputs are copies, not the graph's buffers
    graphs.close()
    eager.close()


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA"))])
def test_device_preprocessing_gives_the_host_preprocessing_encoding(weights, tmp_path, device):
    # The torch runner on a GPU resamples there by default (auto); the host path is the reference.
    from n3d_ros.geometry.compact_runtime import CompactGeometry
    auto = make_encoder("compact", weights=weights, backend="torch", device=device)
    assert (auto._device_prep is not None) == (device == "cuda")      # auto: only for torch on CUDA
    enc = CompactGeometry(auto.runner, auto.config, device_preprocess=False)
    dev = CompactGeometry(auto.runner, auto.config, device_preprocess=True)
    cams = [CameraModel.from_intrinsics(450, 450, 300.0, 200.0, 600, 400),
            CameraModel.from_intrinsics(900, 900, 640, 360, 1280, 720)]
    rng = np.random.default_rng(7)
    imgs = [rng.integers(0, 255, (c.height, c.width, 3), dtype=np.uint8) for c in cams]
    a = enc.encode_tensors(imgs, cams, mirrored=True)
    b = dev.encode_tensors(imgs, cams, mirrored=True)
    assert a.transforms == b.transforms and len(b.transforms) == 4
    # Inputs agree to ~1e-7; cuDNN may round convolution inputs to TF32 on the GPU, which can magnify that.
    tol = 1e-4 if device == "cpu" else 3e-3
    torch.testing.assert_close(b.features, a.features, rtol=tol, atol=tol)
    both = a.valid & b.valid
    assert (a.valid != b.valid).float().mean() < 1e-3                 # a logit at 0 may round either way
    torch.testing.assert_close(b.points * both, a.points * both, rtol=tol, atol=tol)
    ort = make_encoder("compact", weights=weights, backend="onnxruntime", device="cpu", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="needs a torch runner"):
        CompactGeometry(ort.runner, ort.config, device_preprocess=True)
    auto.close()
    ort.close()
