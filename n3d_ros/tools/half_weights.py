"""Store a compact model folder's weights in float16: half the bytes, the same fp32 arithmetic.

    python -m n3d_ros.tools.half_weights SRC DST

The issue caps the shipped model at 50 MB, and an ensemble of two fp32 models (41 MB each) would not fit.
What changes is only how the weights are stored:
- every floating-point tensor of `encoder.safetensors` and `decoder.safetensors` is written as float16;
  loading copies it into the fp32 modules (`load_state_dict` casts);
- every float initializer of `encoder.onnx` is stored as float16 and cast back to float by a `Cast` node in
  front of its users, so the graph computes in fp32 with the rounded weights (ONNX Runtime folds the casts
  when it loads the graph; TensorRT builds through them);
- tensors of fewer than SMALLEST elements (a 2-channel head's bias, shape constants) stay fp32 in both;
- a folder without `encoder.onnx` (a training run with `--export-onnx false`) gets one exported from the
  rounded weights, then stored the same way.
So the PyTorch and ONNX encoders still hold the same weights, rounded once. The other files (config,
tokenizer, training record) are copied unchanged; a folder nested in SRC (an ensemble member) is not.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np

COPIED = ("config.json", "tokenizer.json", "training_state.json", "MODEL_CARD.md")
SMALLEST = 16   # initializers with fewer elements (shapes, scalars) stay as they are


def half_safetensors(src: Path, dst: Path) -> None:
    from safetensors.torch import load_file, save_file
    tensors = {k: (v.half() if v.is_floating_point() and v.numel() >= SMALLEST else v).contiguous()
               for k, v in load_file(str(src)).items()}
    save_file(tensors, str(dst))


def half_onnx(src: Path, dst: Path) -> int:
    """Float initializers of >= SMALLEST elements stored as float16 behind a Cast; returns how many."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    model = onnx.load(str(src))
    graph = model.graph
    kept, casts, n = [], [], 0
    for init in graph.initializer:
        if init.data_type != TensorProto.FLOAT or int(np.prod(init.dims)) < SMALLEST:
            kept.append(init)
            continue
        half = numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), f"{init.name}__fp16")
        kept.append(half)
        casts.append(helper.make_node("Cast", [half.name], [init.name], to=TensorProto.FLOAT,
                                      name=f"{init.name}__to_fp32"))
        n += 1
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = casts + list(graph.node)   # the casts first: a graph's nodes are in topological order
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return n


def half_model_folder(src: str | Path, dst: str | Path) -> None:
    src, dst = Path(src), Path(dst)
    if src.resolve() == dst.resolve():
        raise ValueError("write the float16 folder somewhere else than its source")
    dst.mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        if (src / name).is_file():
            shutil.copy(src / name, dst / name)
    for name in ("encoder.safetensors", "decoder.safetensors"):
        if (src / name).is_file():
            half_safetensors(src / name, dst / name)
    if (src / "encoder.onnx").is_file():
        half_onnx(src / "encoder.onnx", dst / "encoder.onnx")
    elif (dst / "encoder.safetensors").is_file() and (dst / "config.json").is_file():
        import json
        import tempfile
        from ..geometry.factory import export_compact_onnx
        from ..vlm.compact_backend import encoder_config
        cfg = encoder_config(json.loads((dst / "config.json").read_text())["encoder"])
        with tempfile.TemporaryDirectory() as tmp:
            # The rounded weights, exported and checked against PyTorch as the backend does for a folder
            # without ONNX, then stored like a trained folder's export.
            half_onnx(export_compact_onnx(dst / "encoder.safetensors", cfg, tmp), dst / "encoder.onnx")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("src", help="compact model folder (fp32)")
    p.add_argument("dst", help="folder to write (created)")
    a = p.parse_args(argv)
    half_model_folder(a.src, a.dst)
    total = sum(f.stat().st_size for f in Path(a.dst).iterdir() if f.is_file())
    print(f"wrote {a.dst}: {total / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
