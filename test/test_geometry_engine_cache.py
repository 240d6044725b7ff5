"""Engine cache: key stability, rebuild on corrupt/absent, atomic files, profiles, n3d-build-engine."""
import logging

import onnx
import pytest
from onnx import TensorProto, helper

from n3d_ros.geometry.build_engine import main as build_engine_main
from n3d_ros.geometry.engine_cache import EngineCache, EngineCacheKey, ShapeProfile, profiles_from_onnx


class FakeBuilder:
    """Test double for backend_trt.TensorRTBuilder: 'engines' are bytes with a magic header."""

    trt_version = "10.9.0.34"
    gpu_name = "NVIDIA H100 80GB HBM3"
    compute_capability = "9.0"

    def __init__(self):
        self.builds = 0

    def build(self, onnx_path, precision, profiles):
        self.builds += 1
        return b"ENGINE" + precision.encode() + onnx_path.read_bytes()[:16]

    def deserialize(self, data):
        if not data.startswith(b"ENGINE"):
            raise RuntimeError("serialization assertion failed: magic tag mismatch")
        return {"engine": data}


def _onnx(path, dims=("batch", 3, 48, 64)):
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, list(dims))
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, list(dims))
    g = helper.make_graph([helper.make_node("Relu", ["image"], ["out"])], "g", [x], [y])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return path


PROFILES = [ShapeProfile("image", (1, 3, 48, 64), (2, 3, 48, 64), (4, 3, 48, 64))]


def test_key_is_stable_and_sensitive():
    base = dict(onnx_sha256="ab" * 32, trt_version="10.9.0.34", gpu_name="NVIDIA H100 80GB HBM3",
                compute_capability="9.0", precision="fp16", shapes=tuple(PROFILES))
    k = EngineCacheKey(**base)
    assert k.filename() == EngineCacheKey(**base).filename()
    assert k.filename().startswith("abababababababab_trt10.9.0.34_nvidia-h100-80gb-hbm3_sm90_fp16_")
    assert k.filename().endswith(".engine") and "/" not in k.filename()
    names = {k.filename()}
    for field, value in [("onnx_sha256", "cd" * 32), ("trt_version", "10.10.0"), ("gpu_name", "NVIDIA A100"),
                         ("compute_capability", "8.0"), ("precision", "bf16"),
                         ("shapes", (ShapeProfile.fixed("image", (1, 3, 48, 64)),))]:
        names.add(EngineCacheKey(**{**base, field: value}).filename())
    assert len(names) == 7


def test_build_once_then_load(tmp_path, caplog):
    model = _onnx(tmp_path / "m.onnx")
    cache, fb = EngineCache(tmp_path / "engines"), FakeBuilder()
    with caplog.at_level(logging.INFO, logger="n3d_ros.geometry"):
        first = cache.get_or_build(model, "fp16", PROFILES, fb)
        second = cache.get_or_build(model, "fp16", PROFILES, fb)
    assert first.built and not second.built and fb.builds == 1
    assert first.path == second.path and first.path.is_file() and first.path.with_suffix(".json").is_file()
    assert "building TensorRT engine" in caplog.text and "loaded cached TensorRT engine" in caplog.text
    assert not list((tmp_path / "engines").glob("*.tmp"))
    cache.get_or_build(model, "fp32", PROFILES, fb)  # other precision: other engine
    assert fb.builds == 2


def test_rebuild_when_cached_engine_is_corrupt(tmp_path, caplog):
    model = _onnx(tmp_path / "m.onnx")
    cache, fb = EngineCache(tmp_path), FakeBuilder()
    path = cache.get_or_build(model, "fp16", PROFILES, fb).path
    path.write_bytes(b"truncated garbage")
    with caplog.at_level(logging.WARNING, logger="n3d_ros.geometry"):
        again = cache.get_or_build(model, "fp16", PROFILES, fb)
    assert again.built and fb.builds == 2 and "failed to deserialize" in caplog.text
    assert again.path.read_bytes().startswith(b"ENGINE")


def test_rebuild_when_onnx_changes(tmp_path):
    cache, fb = EngineCache(tmp_path), FakeBuilder()
    a = cache.get_or_build(_onnx(tmp_path / "m.onnx"), "fp16", PROFILES, fb)
    b = cache.get_or_build(_onnx(tmp_path / "m.onnx", dims=("batch", 3, 48, 65)), "fp16", PROFILES, fb)
    assert a.path != b.path and fb.builds == 2


def test_unwritable_cache_dir_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="cannot be created"):
        EngineCache(blocker / "engines")


def test_shape_profiles():
    assert ShapeProfile.parse("image:1x3x48x64") == ShapeProfile.fixed("image", (1, 3, 48, 64))
    p = ShapeProfile.parse("image:1x3x48x64:2x3x48x64:4x3x48x64")
    assert p.min == (1, 3, 48, 64) and p.max == (4, 3, 48, 64)
    for bad in ("image", "image:1xax3", "image:4x3:2x3:1x3", ":1x2"):
        with pytest.raises(ValueError):
            ShapeProfile.parse(bad)


def test_profiles_from_onnx(tmp_path):
    static = _onnx(tmp_path / "s.onnx", dims=(1, 3, 48, 64))
    assert profiles_from_onnx(static) == [ShapeProfile.fixed("image", (1, 3, 48, 64))]
    dynamic = _onnx(tmp_path / "d.onnx")
    with pytest.raises(ValueError, match=r"need a shape profile.*image \['batch'"):
        profiles_from_onnx(dynamic)
    assert profiles_from_onnx(dynamic, PROFILES) == PROFILES
    with pytest.raises(ValueError, match="does not have"):
        profiles_from_onnx(dynamic, PROFILES + [ShapeProfile.fixed("rays", (1,))])


def test_build_engine_cli_dry_run_and_errors(tmp_path, capsys):
    model = _onnx(tmp_path / "d.onnx")
    assert build_engine_main(["--onnx", str(model), "--cache-dir", str(tmp_path), "--dry-run",
                              "--shape", "image:1x3x48x64:2x3x48x64:4x3x48x64"]) == 0
    assert "profile image: min (1, 3, 48, 64)" in capsys.readouterr().out
    assert build_engine_main(["--onnx", str(model), "--dry-run"]) == 2  # dynamic input without --shape
    assert "need a shape profile" in capsys.readouterr().err
    assert build_engine_main(["--onnx", str(tmp_path / "none.onnx")]) == 2
