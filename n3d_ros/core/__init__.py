"""Spatial core: numpy only. Cameras, focal normalization, frames, boxes, codecs, reasoning, metrics."""
from .box import BOX_EDGES, Box3D
from .camera import CameraModel
from .focal import FocalNormalization, PixelTransform, letterbox, normalize_focal
from .frames import Frame, convert_points, gravity_rotation, rotation_between
from .objects import GroundedObject

__all__ = [
    "BOX_EDGES", "Box3D", "CameraModel", "FocalNormalization", "Frame", "GroundedObject",
    "PixelTransform", "convert_points", "gravity_rotation", "letterbox", "normalize_focal",
    "rotation_between",
]
