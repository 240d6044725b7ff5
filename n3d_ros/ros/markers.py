"""RViz markers for grounded objects: a DELETEALL, then per object its 12 box edges and a label."""
from __future__ import annotations

import colorsys
from typing import Sequence

from builtin_interfaces.msg import Duration
from geometry_msgs.msg import Point, Pose, Quaternion, Vector3
from std_msgs.msg import ColorRGBA, Header
from visualization_msgs.msg import Marker, MarkerArray

from ..core.box import BOX_EDGES
from ..core.objects import GroundedObject

LINE_WIDTH_M = 0.01
TEXT_HEIGHT_M = 0.08
TEXT_GAP_M = 0.05          # label sits this far above the box's top face


def object_color(index: int, alpha: float = 1.0) -> ColorRGBA:
    """Well-separated hues (golden-ratio steps) so neighbouring objects differ."""
    r, g, b = colorsys.hsv_to_rgb((index * 0.618033988749895) % 1.0, 0.85, 0.95)
    return ColorRGBA(r=float(r), g=float(g), b=float(b), a=float(alpha))


def _box_marker(obj: GroundedObject, header: Header, ns: str, marker_id: int, color: ColorRGBA) -> Marker:
    corners = obj.box.corners()  # (8, 3) metres, header frame
    m = Marker(header=header, ns=ns, id=marker_id, type=Marker.LINE_LIST, action=Marker.ADD)
    m.pose = Pose(orientation=Quaternion(w=1.0))
    m.scale = Vector3(x=LINE_WIDTH_M)
    m.color = color
    m.lifetime = Duration()
    m.points = [Point(x=float(corners[i][0]), y=float(corners[i][1]), z=float(corners[i][2]))
                for edge in BOX_EDGES for i in edge]
    return m


def _text_marker(obj: GroundedObject, header: Header, ns: str, marker_id: int, color: ColorRGBA) -> Marker:
    box = obj.box
    # The box's own -y axis is "up" for the optical-frame convention (y down); it was rotated
    # along with the box, so this holds in any target frame.
    up = -box.rotation[:, 1]
    pos = box.center + up * (box.size[1] / 2.0 + TEXT_GAP_M)
    m = Marker(header=header, ns=ns, id=marker_id, type=Marker.TEXT_VIEW_FACING, action=Marker.ADD)
    m.pose = Pose(position=Point(x=float(pos[0]), y=float(pos[1]), z=float(pos[2])),
                  orientation=Quaternion(w=1.0))
    m.scale = Vector3(z=TEXT_HEIGHT_M)
    m.color = color
    score = f" {obj.score:.2f}" if obj.score >= 0 else ""
    m.text = f"{obj.id + ': ' if obj.id else ''}{obj.label}{score}"
    return m


def objects_to_markers(objects: Sequence[GroundedObject], header: Header, *, namespace: str = "n3d") -> MarkerArray:
    """DELETEALL first (so boxes of the previous answer vanish), then 2 markers per object.

    Boxes must be in `header.frame_id`. An empty `objects` still yields the DELETEALL.
    """
    clear = Marker(header=header, ns=namespace, id=0, action=Marker.DELETEALL)
    markers = [clear]
    for i, obj in enumerate(objects):
        color = object_color(i)
        markers.append(_box_marker(obj, header, namespace, 2 * i, color))
        markers.append(_text_marker(obj, header, namespace, 2 * i + 1, color))
    return MarkerArray(markers=markers)
