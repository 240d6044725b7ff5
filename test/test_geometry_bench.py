"""The benchmark script runs end to end on CPU with --quick and writes a table and JSON."""
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np


def _load_bench():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_geometry.py"
    spec = importlib.util.spec_from_file_location("bench_geometry", path)
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
