"""Spatial core: numpy only. Cameras, focal normalization, frames, boxes, codecs, reasoning, metrics.

Import what you need from here; the submodules hold the details:
camera, focal, frames, box, objects, box_overlap, box_distance, questions, question_parser,
reasoning, pointcloud_norm, codec_n3d, codec_qwen3, metrics, export.
"""
from .box import BOX_EDGES, Box3D
from .box_distance import closest_points, closest_surface_distance, point_box_distance
from .box_overlap import intersection_volume, iou_3d, iou_matrix
from .camera import CameraModel
from .codec_n3d import decode_boxes, encode_boxes
from .codec_qwen3 import decode_qwen3_json, encode_qwen3_json
from .export import draw_boxes, draw_boxes_png, export_rerun
from .focal import FocalNormalization, PixelTransform, letterbox, normalize_focal
from .frames import Frame, convert_points, gravity_rotation, rotation_between
from .metrics import ap3d, ap3d_at, median_centre_error, qa_accuracy, relative_distance_error
from .objects import GroundedObject
from .pointcloud_norm import PointCloudNorm, n3d_pcd_to_optical, optical_to_n3d_pcd
from .question_parser import parse_question
from .questions import QuerySpec, QuestionKind
from .reasoning import Answer, ReasoningError, answer_query

__all__ = [
    "Answer", "BOX_EDGES", "Box3D", "CameraModel", "FocalNormalization", "Frame", "GroundedObject",
    "PixelTransform", "PointCloudNorm", "QuerySpec", "QuestionKind", "ReasoningError", "answer_query",
    "ap3d", "ap3d_at", "closest_points", "closest_surface_distance", "convert_points", "decode_boxes",
    "decode_qwen3_json", "draw_boxes", "draw_boxes_png", "encode_boxes", "encode_qwen3_json", "export_rerun",
    "gravity_rotation", "intersection_volume", "iou_3d", "iou_matrix", "letterbox", "median_centre_error",
    "n3d_pcd_to_optical", "normalize_focal", "optical_to_n3d_pcd", "parse_question", "point_box_distance",
    "qa_accuracy", "relative_distance_error", "rotation_between",
]
