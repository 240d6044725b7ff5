"""TensorRT engine cache: one file per (ONNX sha256, TensorRT version, GPU, precision, shapes).

Engines are only valid for the exact TensorRT version and GPU they were built on, so all of
these go into the key. A cached engine that fails to deserialize (other TensorRT, truncated
file) is rebuilt. Files are written atomically and builds are serialized with a lock file, so two
processes booting together build once. No tensorrt import here: the builder is injected
(backend_trt.TensorRTBuilder in production, a test double in unit tests).
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence

LOG = logging.getLogger("n3d_ros.geometry")


@dataclass(frozen=True)
class ShapeProfile:
    """Optimization profile of one input: min/opt/max shapes (for int64 shape-tensor inputs, values)."""

    name: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def __post_init__(self) -> None:
        shapes = [tuple(int(v) for v in s) for s in (self.min, self.opt, self.max)]
        if len({len(s) for s in shapes}) != 1:
            raise ValueError(f"profile {self.name}: min/opt/max ranks differ: {shapes}")
        if not all(a <= b <= c for a, b, c in zip(*shapes)):
            raise ValueError(f"profile {self.name}: need min <= opt <= max per dim, got {shapes}")
        object.__setattr__(self, "min", shapes[0])
        object.__setattr__(self, "opt", shapes[1])
        object.__setattr__(self, "max", shapes[2])

    @classmethod
    def fixed(cls, name: str, shape: Sequence[int]) -> "ShapeProfile":
        s = tuple(int(v) for v in shape)
        return cls(name, s, s, s)

    @classmethod
    def parse(cls, text: str) -> "ShapeProfile":
        """"name:1x3x240x320" (fixed) or "name:MIN:OPT:MAX" with shapes written AxBxC."""
        parts = text.split(":")
        if len(parts) not in (2, 4) or not parts[0]:
            raise ValueError(f"expected 'name:SHAPE' or 'name:MIN:OPT:MAX' (shapes like 1x3x240x320), got {text!r}")
        try:
            shapes = [tuple(int(v) for v in p.split("x")) for p in parts[1:]]
        except ValueError:
            raise ValueError(f"shape dims must be integers separated by 'x', got {text!r}") from None
        if len(shapes) == 1:
            return cls.fixed(parts[0], shapes[0])
        return cls(parts[0], *shapes)


@dataclass(frozen=True)
class EngineCacheKey:
    onnx_sha256: str
    trt_version: str
    gpu_name: str
    compute_capability: str  # "9.0"
    precision: str           # fp32 | fp16 | bf16
    shapes: tuple[ShapeProfile, ...]

    def digest(self) -> str:
        payload = json.dumps(self.as_dict(), sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shapes"] = [asdict(s) for s in sorted(self.shapes, key=lambda s: s.name)]
        return d

    def filename(self) -> str:
        """Readable and unique: model hash, TensorRT version, GPU, precision, then a digest of all."""
        gpu = re.sub(r"[^A-Za-z0-9]+", "-", self.gpu_name).strip("-").lower() or "gpu"
        trt = re.sub(r"[^0-9.]+", "", self.trt_version) or "unknown"
        cc = self.compute_capability.replace(".", "")
        return f"{self.onnx_sha256[:16]}_trt{trt}_{gpu}_sm{cc}_{self.precision}_{self.digest()[:12]}.engine"


class EngineBuilder(Protocol):
    trt_version: str
    gpu_name: str
    compute_capability: str

    def build(self, onnx_path: Path, precision: str, profiles: Sequence[ShapeProfile]) -> bytes: ...

    def deserialize(self, data: bytes) -> Any:
        """Return the engine; raise (any Exception) or return None when `data` is not usable."""
        ...


@dataclass(frozen=True)
class CachedEngine:
    engine: Any
    path: Path
    key: EngineCacheKey
    built: bool  # True when this call built it (absent or unusable cache entry)


class EngineCache:
    def __init__(self, cache_dir: str | os.PathLike[str]) -> None:
        self.cache_dir = Path(cache_dir).expanduser()
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ValueError(f"engine cache dir {self.cache_dir} cannot be created: {exc}") from exc
        if not os.access(self.cache_dir, os.W_OK):
            raise ValueError(f"engine cache dir {self.cache_dir} is not writable; pass a writable cache_dir")

    def key_for(self, onnx_path: str | os.PathLike[str], precision: str, profiles: Sequence[ShapeProfile],
                builder: EngineBuilder, *, onnx_sha256: str | None = None) -> EngineCacheKey:
        from .export_onnx import onnx_sha256 as sha_of

        sha = onnx_sha256 or sha_of(onnx_path)
        return EngineCacheKey(sha, str(builder.trt_version), str(builder.gpu_name),
                              str(builder.compute_capability), precision,
                              tuple(sorted(profiles, key=lambda s: s.name)))

    def path_for(self, key: EngineCacheKey) -> Path:
        return self.cache_dir / key.filename()

    def get_or_build(self, onnx_path: str | os.PathLike[str], precision: str,
                     profiles: Sequence[ShapeProfile], builder: EngineBuilder, *,
                     onnx_sha256: str | None = None) -> CachedEngine:
        onnx_path = Path(onnx_path)
        if not onnx_path.is_file():
            raise ValueError(f"expected an ONNX file to build from, got {onnx_path} (not found)")
        key = self.key_for(onnx_path, precision, profiles, builder, onnx_sha256=onnx_sha256)
        path = self.path_for(key)
        engine = self._try_load(path, builder)
        if engine is not None:
            return CachedEngine(engine, path, key, built=False)
        with _file_lock(path.with_suffix(".lock")):
            engine = self._try_load(path, builder)  # another process may have built it meanwhile
            if engine is not None:
                return CachedEngine(engine, path, key, built=False)
            LOG.info("building TensorRT engine %s from %s (%s, %d profiles); this takes minutes on first boot",
                     path.name, onnx_path, precision, len(profiles))
            t0 = time.monotonic()
            data = builder.build(onnx_path, precision, list(profiles))
            if not data:
                raise RuntimeError(f"TensorRT build of {onnx_path} returned no engine")
            _atomic_write(path, bytes(data))
            _atomic_write(path.with_suffix(".json"), json.dumps(key.as_dict(), indent=1).encode())
            LOG.info("built %s in %.1f s (%.1f MB)", path.name, time.monotonic() - t0, len(data) / 1e6)
            engine = builder.deserialize(bytes(data))
            if engine is None:
                raise RuntimeError(f"freshly built engine {path} does not deserialize")
            return CachedEngine(engine, path, key, built=True)

    def _try_load(self, path: Path, builder: EngineBuilder) -> Any:
        if not path.is_file():
            return None
        try:
            engine = builder.deserialize(path.read_bytes())
        except Exception as exc:  # TensorRT raises various types for stale engines; rebuild is the fix
            LOG.warning("cached engine %s failed to deserialize (%s: %s); rebuilding", path.name,
                        type(exc).__name__, exc)
            engine = None
        else:
            if engine is None:
                LOG.warning("cached engine %s failed to deserialize; rebuilding", path.name)
        if engine is None:
            path.unlink(missing_ok=True)
            return None
        LOG.info("loaded cached TensorRT engine %s", path.name)
        return engine


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class _file_lock:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = -1

    def __enter__(self) -> "_file_lock":
        self._fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)


def profiles_from_onnx(onnx_path: str | os.PathLike[str], overrides: Sequence[ShapeProfile] = ()
                       ) -> list[ShapeProfile]:
    """One profile per graph input: `overrides` by name, else the graph's static shape.

    ValueError names every input that has symbolic dims and no override.
    """
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    init_names = {i.name for i in model.graph.initializer}
    given = {p.name: p for p in overrides}
    profiles: list[ShapeProfile] = []
    missing: list[str] = []
    for inp in model.graph.input:
        if inp.name in init_names:
            continue
        if inp.name in given:
            profiles.append(given.pop(inp.name))
            continue
        dims = [d.dim_value if d.HasField("dim_value") else None for d in inp.type.tensor_type.shape.dim]
        if any(d is None for d in dims):
            names = [d.dim_param or "?" for d in inp.type.tensor_type.shape.dim]
            missing.append(f"{inp.name} {names}")
        else:
            profiles.append(ShapeProfile.fixed(inp.name, dims))  # type: ignore[arg-type]
    if given:
        raise ValueError(f"profiles given for inputs the graph does not have: {sorted(given)}")
    if missing:
        raise ValueError(f"inputs with dynamic dims need a shape profile (--shape name:MIN:OPT:MAX): {missing}")
    return profiles
