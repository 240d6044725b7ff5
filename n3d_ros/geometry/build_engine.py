"""n3d-build-engine: build the TensorRT engine for an ONNX encoder ahead of time (first boot).

    n3d-build-engine --onnx models/moge2_vitl.onnx --precision fp16 --cache-dir ~/.cache/n3d_ros/engines \
        --shape image:1x3x448x640 --shape num_tokens:1800

Static inputs need no --shape. For dynamic inputs give the shapes the robot will run with (a fixed
shape, or MIN:OPT:MAX); the runtime builds with exactly the shapes it sees, so a fixed --shape equal
to the runtime shape makes the runtime find this engine instead of building its own.
--dry-run prints the cache file that would be used (needs no GPU, no TensorRT).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

from .contract import PRECISIONS


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="n3d-build-engine", description=__doc__.split("\n")[0])
    p.add_argument("--onnx", required=True, type=Path, help="ONNX model to build from")
    p.add_argument("--precision", default="fp16", choices=PRECISIONS)
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="writable engine cache (default: $N3D_ROS_CACHE_DIR or ~/.cache/n3d_ros, /engines)")
    p.add_argument("--shape", action="append", default=[], metavar="NAME:SHAPE[:OPT:MAX]",
                   help="profile of a dynamic input, e.g. image:1x3x240x320 or image:1x3x240x320:2x3x240x320:4x3x240x320")
    p.add_argument("--device-index", type=int, default=0)
    p.add_argument("--dry-run", action="store_true", help="print the profiles and cache path, build nothing")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    from .backends import default_cache_dir
    from .engine_cache import EngineCache, ShapeProfile, profiles_from_onnx

    if not args.onnx.is_file():
        print(f"error: ONNX file {args.onnx} not found", file=sys.stderr)
        return 2
    cache_dir = args.cache_dir or default_cache_dir() / "engines"
    try:
        shapes = [ShapeProfile.parse(s) for s in args.shape]
        profiles = profiles_from_onnx(args.onnx, shapes)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for prof in profiles:
        print(f"profile {prof.name}: min {prof.min} opt {prof.opt} max {prof.max}")
    if args.dry_run:
        import importlib.util

        if importlib.util.find_spec("tensorrt") is None:
            print(f"tensorrt not importable: would build into {cache_dir}")
            return 0
        from .backend_trt import TensorRTBuilder

        key_builder = TensorRTBuilder(device_index=args.device_index)
        key = EngineCache(cache_dir).key_for(args.onnx, args.precision, profiles, key_builder)
        print(f"engine file: {EngineCache(cache_dir).path_for(key)}")
        return 0
    try:
        from .backend_trt import build_engine_file

        path = build_engine_file(args.onnx, cache_dir=cache_dir, precision=args.precision, shapes=shapes,
                                 device_index=args.device_index)
    except (ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"engine: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
