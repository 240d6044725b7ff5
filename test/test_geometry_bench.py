"""The benchmark scripts run end to end on CPU (quick settings) and print their tables."""
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np


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


def test_preprocess_bench_prints_one_row_per_camera(capsys):
    bench = _load_bench("bench_preprocess")
    bench.main(["--repeats", "1"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "fx" in line]
    assert len(rows) == len(bench.CAMERAS)
    for row in rows:
        assert all(float(c) > 0 for c in row.strip("| ").split(" | ")[1:]), row


def test_snap_bench_times_the_boxes_the_backend_snaps(capsys):
    bench = _load_bench("bench_snap")
    bench.main(["--scenes", "2", "--repeats", "1"])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "ms a box" not in line]
    assert len(rows) == len(bench.SETTINGS)
    assert int(out.split()[0]) > 0              # boxes were recorded from the real backend
    assert all(float(r.split("|")[2]) > 0 for r in rows)
