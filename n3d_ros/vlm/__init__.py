"""Spatial VLM backends behind one contract (`vlm.contract.SpatialVLM`).

`compact_backend.CompactSpatialVLM` (built-in), `n3d_vlm.N3DVLM` (N3D-VLM / Qwen2.5-VL checkpoints),
`qwen3_vl.Qwen3VL` (Qwen3-VL checkpoints), `fast_decode.FastDecoder`. Import them from their modules:
the large-checkpoint backends pull in transformers, which the built-in path does not need.
"""
from .contract import Grounding, ModelLoadError, SceneInput, SpatialAnswer, SpatialVLM

__all__ = ["Grounding", "ModelLoadError", "SceneInput", "SpatialAnswer", "SpatialVLM"]
