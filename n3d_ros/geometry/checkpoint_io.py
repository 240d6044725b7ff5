"""state_dict <-> safetensors (never pickle). Shared with the vlm layer."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def save_safetensors(module: torch.nn.Module, path: str | os.PathLike[str], *,
                     metadata: dict[str, str] | None = None) -> Path:
    """Write the module's state_dict (tensors made contiguous, on CPU) atomically to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        save_file(state, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_safetensors(module: torch.nn.Module, path: str | os.PathLike[str], *,
                     strict: bool = True) -> torch.nn.Module:
    """Load tensors from `path` into `module` (on the module's device). Returns the module.

    Shape mismatches and, with strict=True, missing or unexpected keys raise ValueError naming them.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"expected a .safetensors file, got {path} (not found)")
    state = load_file(str(path), device="cpu")
    own = module.state_dict()
    wrong = [f"{k}: file {tuple(v.shape)} vs module {tuple(own[k].shape)}"
             for k, v in state.items() if k in own and own[k].shape != v.shape]
    if wrong:
        raise ValueError(f"{path}: shape mismatch for {len(wrong)} tensors: {'; '.join(wrong[:5])}")
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if strict and (missing or unexpected):
        raise ValueError(f"{path}: missing keys {missing[:8]}, unexpected keys {unexpected[:8]}")
    module.load_state_dict(state, strict=False)
    return module
