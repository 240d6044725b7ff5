"""The benchmark scripts run end to end on CPU (quick settings) and print their tables."""
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest


def _load_bench(name: str = "bench_geometry"):
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_quick_bench_cpu(tmp_path, capsys):
    bench = _load_bench()
    out = tmp_path / "bench.json"
    assert bench.main(["--quick", "--iters", "2", "--warmup", "1", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| case | model |" in table and "onnxruntime CPUExecutionProvider" in table
    rows = json.loads(out.read_text())["rows"]
    assert {r["model"] for r in rows} >= {"compact", "ViT 64w x2"}
    for r in rows:
        assert np.isfinite(r["median_ms"]) and r["median_ms"] > 0, r
        assert r["rel_err"] < 1e-2, r


@pytest.mark.parametrize("device", ["", "cpu"])
def test_preprocess_bench_prints_one_row_per_camera(capsys, device):
    bench = _load_bench("bench_preprocess")
    bench.main(["--repeats", "1"] + (["--device", device] if device else []))
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "fx" in line]
    assert len(rows) == len(bench.CAMERAS)
    for row in rows:
        cells = row.strip("| ").split(" | ")[1:]
        assert len(cells) == (5 if device else 2), row     # + host path, device path, their ratio
        assert all(float(c.rstrip("x")) > 0 for c in cells), row


def test_snap_bench_times_the_boxes_the_backend_snaps(capsys):
    bench = _load_bench("bench_snap")
    bench.main(["--scenes", "2", "--repeats", "1"])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "ms a box" not in line]
    assert len(rows) == len(bench.SETTINGS)
    assert int(out.split()[0]) > 0              # boxes were recorded from the real backend
    assert all(float(r.split("|")[2]) > 0 for r in rows)


def test_detection_failures_classifies_every_visible_object(tmp_path, capsys):
    """benchmarks/detection_failures.py with the built-in model on two held-out scenes: one outcome per
    visible object and mode, and the tables printed."""
    from n3d_ros.tools.eval_spatial import FAILURE_CLASSES, sim_samples
    failures = _load_bench("detection_failures")
    out = tmp_path / "failures.json"
    assert failures.main(["--scenes", "2", "--first-seed", "1000000", "--max-width", "320", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| outcome | monocular | depth |" in table and "| kind | objects |" in table
    rows = json.loads(out.read_text())
    n_visible = sum(len(s.objects) for s in sim_samples([1000000, 1000001], questions_per_scene=0, max_width=320))
    for mode in ("monocular", "depth"):
        assert len(rows[mode]) == n_visible > 0
        assert {r["outcome"] for r in rows[mode]} <= set(FAILURE_CLASSES)
        assert all(0.0 <= r["iou"] <= 1.0 and 0.0 <= r["range_fixed_iou"] <= 1.0 for r in rows[mode])
    # With measured depth the built-in model finds some of them.
    assert any(r["outcome"] == "found" for r in rows["depth"])
