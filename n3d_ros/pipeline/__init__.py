"""One camera frame + one question -> a grounded, metric answer (no ROS)."""
from .spatial_pipeline import PipelineConfig, SpatialPipeline
from .types import CameraFrame, QueryResult

__all__ = ["CameraFrame", "PipelineConfig", "QueryResult", "SpatialPipeline"]
