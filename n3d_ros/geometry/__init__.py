"""Geometry encoders: RGB image + intrinsics -> metric point map, validity mask, feature tokens.

Entry points: `make_encoder` (compact / MoGe-2 ONNX, backend auto|tensorrt|onnxruntime|torch),
`DepthGeometry` (a registered depth image as geometry), `export_onnx`, `EngineCache`.
"""
from .contract import GeometryEncoder, GeometryOutput
from .depth import DepthGeometry, depth_image_to_meters
from .engine_cache import EngineCache
from .export_onnx import export_onnx
from .factory import make_encoder

__all__ = ["DepthGeometry", "EngineCache", "GeometryEncoder", "GeometryOutput", "depth_image_to_meters",
           "export_onnx", "make_encoder"]
