"""Real TensorRT: build, cache and run the compact encoder. Runs only where tensorrt imports and CUDA exists."""
import importlib.util

import numpy as np
import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("tensorrt") is None, reason="tensorrt not importable")


def test_tensorrt_matches_torch_and_caches(tmp_path):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from n3d_ros.core.camera import CameraModel
    from n3d_ros.geometry.checkpoint_io import save_safetensors
    from n3d_ros.geometry.compact_encoder import CompactGeometryEncoder
    from n3d_ros.geometry.factory import make_encoder

    torch.manual_seed(0)
    w = save_safetensors(CompactGeometryEncoder(), tmp_path / "c.safetensors")
    cam = CameraModel.from_intrinsics(500, 500, 319.5, 239.5, 640, 480)
    img = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    ref = make_encoder("compact", weights=w, backend="torch", device="cuda").encode([img], [cam])
    enc = make_encoder("compact", weights=w, backend="tensorrt", device="cuda", cache_dir=tmp_path)
    out = enc.encode([img], [cam])
    assert out.backend.startswith("tensorrt")
    m = ref.mask & out.mask
    assert np.linalg.norm(out.points[m] - ref.points[m]) / np.linalg.norm(ref.points[m]) < 1e-3
    engines = list((tmp_path / "engines").glob("*.engine"))
    assert len(engines) == 1
    make_encoder("compact", weights=w, backend="tensorrt", device="cuda", cache_dir=tmp_path).encode([img], [cam])
    assert list((tmp_path / "engines").glob("*.engine")) == engines  # reused, not rebuilt
