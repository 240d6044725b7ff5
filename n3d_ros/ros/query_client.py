"""`n3d-query`: ask the spatial_query service a question from the shell (no ros2cli needed).

    n3d-query "How far is the red box from the chair?" --targets "red box" chair --json

Needs the usual ROS environment (ROS_DOMAIN_ID, ROS_AUTOMATIC_DISCOVERY_RANGE) of the node.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any, Sequence

import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node

from n3d_ros.srv import SpatialQuery

from ..core.frames import quaternion_to_rotation
from .conversions import stamp_to_ns

EXIT_OK, EXIT_FAILED, EXIT_NO_SERVICE = 0, 1, 2
SERVICE_WAIT_SEC = 5.0


def build_request(question: str, targets: Sequence[str] = (), *, target_frame: str = "",
                  timeout_sec: float = 0.0) -> SpatialQuery.Request:
    req = SpatialQuery.Request()
    req.question = question
    req.targets = list(targets)
    req.target_frame = target_frame
    req.timeout_sec = float(timeout_sec)
    return req


def response_to_dict(res: SpatialQuery.Response) -> dict[str, Any]:
    """JSON-ready form: objects with centre/size (metres), yaw-free quaternion, 2D box."""
    objects = []
    for o in res.objects:
        p, q, s = o.pose.position, o.pose.orientation, o.size
        objects.append({
            "id": o.id, "label": o.label, "score": round(float(o.score), 4),
            "center": [p.x, p.y, p.z], "orientation_xyzw": [q.x, q.y, q.z, q.w],
            "size": [s.x, s.y, s.z], "box_2d": [float(v) for v in o.box_2d],
        })
    return {
        "success": bool(res.success), "message": res.message, "answer": res.answer,
        "reasoning": res.reasoning, "frame_id": res.header.frame_id,
        "stamp_ns": stamp_to_ns(res.header.stamp), "latency_sec": round(float(res.latency_sec), 4),
        "objects": objects,
    }


def format_table(result: dict[str, Any]) -> str:
    """Human-readable answer + one row per object (centre and size in metres, header frame)."""
    lines = []
    if result["success"]:
        lines.append(f"Answer: {result['answer']}")
        if result["reasoning"]:
            lines.append(f"Reasoning: {result['reasoning']}")
    else:
        lines.append(f"FAILED: {result['message']}")
    lines.append(f"(frame '{result['frame_id']}', stamp {result['stamp_ns'] / 1e9:.3f}, "
                 f"{result['latency_sec']:.2f} s)")
    if result["objects"]:
        head = f"{'id':<10} {'label':<20} {'score':>5}  {'x':>7} {'y':>7} {'z':>7}  {'w':>6} {'h':>6} {'l':>6} {'yaw':>6}"
        lines += [head, "-" * len(head)]
        for o in result["objects"]:
            R = quaternion_to_rotation(*o["orientation_xyzw"])
            # Heading of the box x axis about the frame's y axis (the optical frame's vertical).
            yaw = math.degrees(math.atan2(-R[2, 0], R[0, 0]))
            c, s = o["center"], o["size"]
            lines.append(f"{o['id'][:10]:<10} {o['label'][:20]:<20} {o['score']:>5.2f}  "
                         f"{c[0]:>7.2f} {c[1]:>7.2f} {c[2]:>7.2f}  {s[0]:>6.2f} {s[1]:>6.2f} {s[2]:>6.2f} {yaw:>6.0f}")
    return "\n".join(lines)


class SpatialQueryClient:
    """Blocking client around the spatial_query service, usable from scripts and tests."""

    def __init__(self, node: Node, service: str = "spatial_query") -> None:
        self.node = node
        self.client = node.create_client(SpatialQuery, service)

    def wait(self, timeout_sec: float = SERVICE_WAIT_SEC) -> bool:
        return self.client.wait_for_service(timeout_sec=timeout_sec)

    def call(self, request: SpatialQuery.Request, *, timeout_sec: float) -> SpatialQuery.Response | None:
        """Response, or None when no response arrived within timeout_sec."""
        future = self.client.call_async(request)
        executor = SingleThreadedExecutor(context=self.node.context)
        executor.add_node(self.node)
        try:
            executor.spin_until_future_complete(future, timeout_sec=timeout_sec)
        finally:
            executor.remove_node(self.node)
            executor.shutdown()
        if not future.done():
            self.client.remove_pending_request(future)
            return None
        return future.result()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="n3d-query", description="Ask n3d_ros spatial_query_node a spatial question.")
    ap.add_argument("question", help='e.g. "How far is the red box from the chair?"')
    ap.add_argument("--targets", nargs="*", default=[], help="phrases to ground, e.g. --targets mug laptop")
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds the node may take (default 30)")
    ap.add_argument("--target-frame", default="", help="frame for the returned poses ('' = image frame)")
    ap.add_argument("--namespace", default="", help="namespace of the node, e.g. /front_camera")
    ap.add_argument("--service", default="spatial_query", help="service name, relative to --namespace")
    ap.add_argument("--json", action="store_true", help="print the response as JSON")
    return ap.parse_args(argv)


def service_path(namespace: str, service: str) -> str:
    if service.startswith("/"):
        return service
    ns = namespace.strip("/")
    return f"/{ns}/{service}" if ns else f"/{service}"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    rclpy.init(args=None)
    node = rclpy.create_node("n3d_query_client")
    try:
        name = service_path(args.namespace, args.service)
        client = SpatialQueryClient(node, name)
        if not client.wait(SERVICE_WAIT_SEC):
            print(f"service {name} not available after {SERVICE_WAIT_SEC:.0f} s: is spatial_query_node running "
                  "and active, with the same ROS_DOMAIN_ID / ROS_AUTOMATIC_DISCOVERY_RANGE?", file=sys.stderr)
            return EXIT_NO_SERVICE
        req = build_request(args.question, args.targets, target_frame=args.target_frame, timeout_sec=args.timeout)
        res = client.call(req, timeout_sec=args.timeout + 5.0)
        if res is None:
            print(f"no response from {name} within {args.timeout + 5.0:.0f} s", file=sys.stderr)
            return EXIT_FAILED
        result = response_to_dict(res)
        print(json.dumps(result, indent=2) if args.json else format_table(result))
        return EXIT_OK if result["success"] else EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_FAILED
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    sys.exit(main())
