"""QoS profiles of the node's topics (inputs configurable: a mismatch is the usual "node sees nothing")."""
from __future__ import annotations

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

_RELIABILITY = {
    "best_effort": ReliabilityPolicy.BEST_EFFORT,
    "reliable": ReliabilityPolicy.RELIABLE,
}


def sensor_qos(reliability: str = "best_effort", depth: int = 5) -> QoSProfile:
    """Image/camera_info/depth subscriptions: KEEP_LAST `depth`, volatile.

    BEST_EFFORT (the default, like rclpy's sensor-data profile) also receives from RELIABLE
    publishers; RELIABLE receives only from RELIABLE ones.
    """
    if reliability not in _RELIABILITY:
        raise ValueError(f"reliability must be one of {', '.join(_RELIABILITY)}, got {reliability!r}")
    if depth < 1:
        raise ValueError(f"QoS depth must be >= 1, got {depth}")
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                      reliability=_RELIABILITY[reliability], durability=DurabilityPolicy.VOLATILE)


def output_qos(depth: int = 10) -> QoSProfile:
    """objects / markers / debug_image: RELIABLE so RViz and loggers get every result."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                      reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)


def diagnostics_qos() -> QoSProfile:
    return output_qos(depth=10)
