"""The node's health as a value, and its diagnostic_msgs form for /diagnostics."""
from __future__ import annotations

from dataclasses import dataclass

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from std_msgs.msg import Header

from .frame_buffer import BufferStats

# A frame older than this (or none at all) while active is worth a WARN.
NO_FRAME_WARN_SEC = 5.0


@dataclass(frozen=True)
class NodeHealth:
    state: str                      # lifecycle state label: unconfigured | inactive | active | ...
    buffer: BufferStats             # input counters
    rejected_depth: int = 0         # depth images refused (size mismatch, bad encoding, all NaN)
    queries: int = 0
    queries_failed: int = 0
    queries_timed_out: int = 0
    last_latency_sec: float = -1.0  # -1 before the first query
    last_error: str = ""
    backend: str = ""
    device: str = ""
    geometry_backend: str = ""
    seconds_since_frame: float = -1.0  # -1 when no frame has been received
    load_error: str = ""            # why the models failed to load, "" when fine


def level_and_message(h: NodeHealth) -> tuple[bytes, str]:
    """(DiagnosticStatus level constant (one byte), summary) for `h`."""
    if h.load_error:
        return DiagnosticStatus.ERROR, f"models failed to load: {h.load_error}"
    if h.state != "active":
        return DiagnosticStatus.WARN, f"node is {h.state}, not answering queries"
    if h.seconds_since_frame < 0:
        return DiagnosticStatus.WARN, "no camera frame received yet"
    if h.seconds_since_frame > NO_FRAME_WARN_SEC:
        return (DiagnosticStatus.WARN,
                f"no camera frame for {h.seconds_since_frame:.1f} s")
    return DiagnosticStatus.OK, "ok"


def health_to_status(h: NodeHealth, *, name: str, hardware_id: str = "") -> DiagnosticStatus:
    level, message = level_and_message(h)
    b = h.buffer
    values = {
        "state": h.state,
        "backend": h.backend,
        "device": h.device,
        "geometry_backend": h.geometry_backend,
        "frames_received": b.images,
        "camera_infos_received": b.infos,
        "depth_received": b.depths,
        "frames_paired": b.paired,
        "frames_dropped": b.dropped,
        "frames_unpaired": b.unpaired,
        "frames_stale": b.stale,
        "frames_rejected": b.rejected,
        "depth_rejected": h.rejected_depth,
        "time_jump_resets": b.resets,
        "queries": h.queries,
        "queries_failed": h.queries_failed,
        "queries_timed_out": h.queries_timed_out,
        "last_latency_sec": f"{h.last_latency_sec:.3f}",
        "seconds_since_frame": f"{h.seconds_since_frame:.2f}",
        "last_error": h.last_error,
    }
    return DiagnosticStatus(level=level, name=name, message=message, hardware_id=hardware_id,
                            values=[KeyValue(key=k, value=str(v)) for k, v in values.items()])


def health_to_array(h: NodeHealth, header: Header, *, name: str, hardware_id: str = "") -> DiagnosticArray:
    return DiagnosticArray(header=header, status=[health_to_status(h, name=name, hardware_id=hardware_id)])
