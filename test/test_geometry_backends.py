"""Backend selection: auto order, reasons in the log line, explicit-choice errors; ORT vs torch parity."""
import importlib.util
import logging

import numpy as np
import pytest
import torch

from n3d_ros.core.camera import CameraModel
from n3d_ros.geometry import backends
from n3d_ros.geometry.backends import select_backend
from n3d_ros.geometry.checkpoint_io import save_safetensors
from n3d_ros.geometry.compact_encoder import CompactGeometryEncoder
from n3d_ros.geometry.factory import export_compact_onnx, make_encoder
from n3d_ros.geometry.compact_encoder import CompactEncoderConfig

HAS_TRT = importlib.util.find_spec("tensorrt") is not None


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    d = tmp_path_factory.mktemp("be")
    torch.manual_seed(0)
    w = save_safetensors(CompactGeometryEncoder(), d / "compact.safetensors")
    return w, export_compact_onnx(w, CompactEncoderConfig(), d), d


@pytest.mark.skipif(HAS_TRT, reason="checks the order where tensorrt is absent")
def test_auto_order_without_tensorrt():
    c = select_backend("auto", device="cpu", has_onnx=True)
    assert c.name == "onnxruntime" and "tensorrt not importable" in c.reason
    c = select_backend("auto", device="cpu", has_onnx=False)
    assert c.name == "torch" and "no ONNX file" in c.reason


def test_auto_prefers_tensorrt_when_importable_and_cuda(monkeypatch):
    monkeypatch.setattr(backends, "module_available", lambda name: True)
    assert select_backend("auto", device="cuda", has_onnx=True).name == "tensorrt"
    c = select_backend("auto", device="cpu", has_onnx=True)
    assert c.name == "onnxruntime" and "no CUDA device" in c.reason
    assert select_backend("auto", device="cuda", has_onnx=False).name == "torch"


def test_auto_on_cuda_skips_onnxruntime_without_gpu_provider(monkeypatch):
    monkeypatch.setattr(backends, "module_available", lambda name: name != "tensorrt")
    monkeypatch.setattr(backends, "ort_has_gpu", lambda: False)
    c = select_backend("auto", device="cuda", has_onnx=True)
    assert c.name == "torch" and "no CUDA/TensorRT provider" in c.reason
    monkeypatch.setattr(backends, "ort_has_gpu", lambda: True)
    assert select_backend("auto", device="cuda", has_onnx=True).name == "onnxruntime"
    # an ONNX-only encoder (MoGe) still runs on ORT's CPU provider rather than not at all
    monkeypatch.setattr(backends, "ort_has_gpu", lambda: False)
    assert select_backend("auto", device="cuda", has_onnx=True, has_torch_module=False).name == "onnxruntime"


def test_explicit_choice_errors_name_what_is_available():
    with pytest.raises(ValueError, match=r"unknown backend 'openvino'.*'tensorrt'"):
        select_backend("openvino", device="cpu", has_onnx=True)
    with pytest.raises(ValueError, match=r"'tensorrt' is not available.*available: \['onnxruntime', 'torch'"):
        select_backend("tensorrt", device="cpu", has_onnx=True)
    with pytest.raises(ValueError, match=r"'torch' is not available.*ONNX only.*available: \['onnxruntime'\]"):
        select_backend("torch", device="cpu", has_onnx=True, has_torch_module=False)
    with pytest.raises(ValueError, match="'onnxruntime' is not available: no ONNX file"):
        select_backend("onnxruntime", device="cpu", has_onnx=False)
    assert select_backend("onnxruntime", device="cpu", has_onnx=False, can_export_onnx=True).name == "onnxruntime"
    with pytest.raises(ValueError, match="device 'cuda' requested but CUDA"):
        if torch.cuda.is_available():
            raise ValueError("device 'cuda' requested but CUDA (skip: present)")
        backends.resolve_device("cuda")


def test_make_encoder_logs_choice_and_reason(assets, caplog):
    w, onnx, d = assets
    with caplog.at_level(logging.INFO, logger="n3d_ros.geometry"):
        enc = make_encoder("compact", weights=w, onnx_path=onnx, device="cpu", cache_dir=d)
    line = [r.getMessage() for r in caplog.records if "geometry backend" in r.getMessage()][-1]
    if not HAS_TRT:
        assert enc.backend == "onnxruntime(CPUExecutionProvider)"
        assert "tensorrt skipped (tensorrt not importable) -> onnxruntime" in line
    with pytest.raises(ValueError, match="needs weights"):
        make_encoder("compact")
    with pytest.raises(ValueError, match="kind must be one of"):
        make_encoder("dpt", weights=w)
    with pytest.raises(ValueError, match="precision must be one of"):
        make_encoder("compact", weights=w, precision="int8")


def test_onnxruntime_matches_torch_on_compact_encoder(assets):
    w, onnx, d = assets
    cams = [CameraModel.from_intrinsics(500, 500, 319.5, 239.5, 640, 480),
            CameraModel.from_intrinsics(250, 260, 150, 110, 300, 220)]
    rng = np.random.default_rng(3)
    imgs = [rng.integers(0, 255, (c.height, c.width, 3), dtype=np.uint8) for c in cams]
    ref = make_encoder("compact", weights=w, backend="torch", device="cpu").encode(imgs, cams)
    ort = make_encoder("compact", onnx_path=onnx, backend="onnxruntime", device="cpu").encode(imgs, cams)
    assert ort.backend.startswith("onnxruntime")
    both = ref.mask & ort.mask
    assert both.sum() >= 0.999 * ref.mask.sum()
    rel = np.linalg.norm(ort.points[both] - ref.points[both]) / np.linalg.norm(ref.points[both])
    assert rel < 1e-5
    np.testing.assert_allclose(ort.features, ref.features, rtol=1e-4, atol=1e-4)


def test_onnxruntime_workers_do_not_spin_between_runs():
    """Spinning ORT workers would hold the cores the PyTorch decoder needs right after encoding."""
    from n3d_ros.geometry.backends import OrtRunner
    from n3d_ros.vlm.compact_backend import default_model_dir
    runner = OrtRunner(default_model_dir() / "encoder.onnx", device="cpu")
    opts = runner.session.get_session_options()
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
