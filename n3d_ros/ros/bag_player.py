"""Replay a rosbag2 through rclpy on the recorded topics, so a node sees it like the live camera.

`python -m n3d_ros.ros.bag_player BAG --rate 1.0 --loop` (console script `n3d-bag-player`).

The bag is read with `rosbags` (MCAP or sqlite3, no ROS install needed) and its raw CDR is
republished as is; with `restamp` (default on) each message's header stamp is replaced by the
replay time, and messages that shared a stamp in the bag (image, camera_info, depth, ground
truth of one frame) share the new stamp too, so synchronizers still match them.
Recorded absolute names ("/image") are published as relative names ("image") so a namespace or
remap on this node moves them, exactly as for the live sim camera.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.serialization import deserialize_message, serialize_message
from rclpy.time import Time
from rclpy.utilities import remove_ros_args
from rosbags.rosbag2 import Reader

# Types that a camera driver publishes best-effort; everything else is replayed reliable.
SENSOR_TYPES = frozenset({
    "sensor_msgs/msg/Image", "sensor_msgs/msg/CameraInfo", "sensor_msgs/msg/CompressedImage",
    "sensor_msgs/msg/PointCloud2",
})
_STAMP_MEMORY = 64  # recorded stamps remembered for restamping (a few frames' worth of topics)


@dataclass(frozen=True)
class BagMessage:
    topic: str          # as recorded, e.g. "/image"
    msgtype: str        # e.g. "sensor_msgs/msg/Image"
    log_time_ns: int    # receive/record time in the bag
    data: bytes         # CDR, as published


def read_bag(path: str | Path, topics: Sequence[str] = ()) -> Iterator[BagMessage]:
    """Messages of the bag at `path` in log-time order (only `topics` when given)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no rosbag2 at {path} (expected a bag directory with metadata.yaml)")
    wanted = {"/" + t.lstrip("/") for t in topics}
    with Reader(path) as reader:
        conns = [c for c in reader.connections if not wanted or c.topic in wanted]
        for conn, log_time, raw in reader.messages(connections=conns):
            yield BagMessage(conn.topic, conn.msgtype, int(log_time), bytes(raw))


def bag_topics(path: str | Path) -> dict[str, str]:
    """topic -> message type of every connection in the bag."""
    with Reader(Path(path)) as reader:
        return {c.topic: c.msgtype for c in reader.connections}


def message_class(msgtype: str) -> type:
    """"pkg/msg/Name" (or "pkg/Name") -> the rclpy message class; ImportError names what is missing."""
    parts = msgtype.split("/")
    if len(parts) == 2:
        parts = [parts[0], "msg", parts[1]]
    if len(parts) != 3 or not all(parts):
        raise ValueError(f"message type must look like 'pkg/msg/Name', got {msgtype!r}")
    pkg, kind, name = parts
    try:
        module = importlib.import_module(f"{pkg}.{kind}")
        return getattr(module, name)
    except (ImportError, AttributeError) as exc:
        raise ImportError(f"cannot import message type {msgtype!r} ({exc}); is its interface "
                          f"package installed in this environment?") from exc


def restamp(data: bytes, msg_cls: type, new_stamp: Callable[[int], int]) -> bytes:
    """CDR message with header.stamp := new_stamp(old stamp ns); unchanged if it has no header."""
    msg = deserialize_message(data, msg_cls)
    header = getattr(msg, "header", None)
    if header is None:
        return data
    old = header.stamp.sec * 1_000_000_000 + header.stamp.nanosec
    header.stamp = Time(nanoseconds=new_stamp(old)).to_msg()
    return serialize_message(msg)


class BagPlayerNode(Node):
    """Publishes a bag's messages at their recorded pace (scaled by `rate`) from a worker thread."""

    def __init__(self, *, node_name: str = "bag_player", **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        self.declare_parameter("bag", "")
        self.declare_parameter("rate", 1.0)           # playback speed factor, > 0
        self.declare_parameter("loop", False)
        self.declare_parameter("restamp", True)       # header stamps := replay time (node clock)
        self.declare_parameter("topics", [""])        # recorded names to play; [""] = all
        self.declare_parameter("qos_reliability", "best_effort")  # for sensor topics
        self.declare_parameter("start_delay_sec", 0.5)  # lets subscribers match before the first frame
        # > 0: after the delay, also wait up to this long until every played topic has a subscriber, so a
        # slow discovery (a loaded machine, a node started later) does not lose the first frames.
        self.declare_parameter("wait_for_subscribers_sec", 0.0)

        self.bag = Path(self.get_parameter("bag").value)
        self.rate = float(self.get_parameter("rate").value)
        self.loop = bool(self.get_parameter("loop").value)
        self.restamp_enabled = bool(self.get_parameter("restamp").value)
        self.topics = [t for t in self.get_parameter("topics").value if t]
        reliability = str(self.get_parameter("qos_reliability").value)
        self.start_delay = max(float(self.get_parameter("start_delay_sec").value), 0.0)
        self.wait_for_subscribers = max(float(self.get_parameter("wait_for_subscribers_sec").value), 0.0)
        if self.rate <= 0:
            raise ValueError(f"rate must be > 0, got {self.rate}")
        if reliability not in ("best_effort", "reliable"):
            raise ValueError(f"qos_reliability must be 'best_effort' or 'reliable', got {reliability!r}")
        self.sensor_qos = QoSProfile(depth=qos_profile_sensor_data.depth,
                                     reliability=ReliabilityPolicy.BEST_EFFORT
                                     if reliability == "best_effort" else ReliabilityPolicy.RELIABLE)

        self._classes: dict[str, type] = {}
        self._topic_publishers = {}
        for topic, msgtype in bag_topics(self.bag).items():
            if self.topics and topic not in {"/" + t.lstrip("/") for t in self.topics}:
                continue
            cls = message_class(msgtype)
            qos = self.sensor_qos if msgtype in SENSOR_TYPES else QoSProfile(depth=10)
            # Relative name: a namespace/remap on this node applies, as for the live camera.
            self._topic_publishers[topic] = self.create_publisher(cls, topic.lstrip("/"), qos)
            self._classes[topic] = cls
        if not self._topic_publishers:
            raise ValueError(f"bag {self.bag} has none of the requested topics {self.topics}")

        self.published = 0
        self.finished = threading.Event()
        self._stop = threading.Event()
        self._stamp_map: dict[int, int] = {}
        self._thread = threading.Thread(target=self._play, name="bag_player", daemon=True)
        self._thread.start()
        self.get_logger().info(f"playing {self.bag} ({len(self._topic_publishers)} topics) at x{self.rate}"
                               f"{' looping' if self.loop else ''}")

    def _new_stamp(self, old_ns: int) -> int:
        now = self.get_clock().now().nanoseconds
        if old_ns not in self._stamp_map:
            if len(self._stamp_map) >= _STAMP_MEMORY:
                self._stamp_map.clear()
            self._stamp_map[old_ns] = now
        return self._stamp_map[old_ns]

    def _publish(self, msg: BagMessage) -> None:
        data = msg.data
        if self.restamp_enabled:
            data = restamp(data, self._classes[msg.topic], self._new_stamp)
        self._topic_publishers[msg.topic].publish(data)
        self.published += 1

    def _unmatched_topics(self) -> list[str]:
        return [t for t, pub in self._topic_publishers.items() if pub.get_subscription_count() == 0]

    def _play(self) -> None:
        if self._stop.wait(self.start_delay):
            return
        if self.wait_for_subscribers > 0:
            deadline = time.monotonic() + self.wait_for_subscribers
            while self._unmatched_topics() and time.monotonic() < deadline:
                if self._stop.wait(0.05):
                    return
            missing = self._unmatched_topics()
            if missing:
                self.get_logger().warning(f"no subscriber after {self.wait_for_subscribers:.1f} s on {missing}; "
                                          f"playing anyway")
        while not self._stop.is_set():
            start_wall = time.monotonic()
            first_log: int | None = None
            count = 0
            try:
                for msg in read_bag(self.bag, list(self._topic_publishers)):
                    if first_log is None:
                        first_log = msg.log_time_ns
                    due = start_wall + (msg.log_time_ns - first_log) * 1e-9 / self.rate
                    if self._stop.wait(max(due - time.monotonic(), 0.0)):
                        return
                    self._publish(msg)
                    count += 1
            except (OSError, ValueError, TypeError) as exc:  # corrupt bag / undecodable message
                self.get_logger().error(f"replay of {self.bag} failed: {exc}")
                break
            if count == 0 or not self.loop:
                break
        self.finished.set()
        self.get_logger().info(f"replay finished: {self.published} messages published")

    def destroy_node(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=2.0)
        super().destroy_node()


def _parser() -> argparse.ArgumentParser:
    # Flags default to None ("not given"): only given flags become parameter overrides, which rclpy
    # applies over `--ros-args -p name:=value`; a default here would silently undo such a -p.
    parser = argparse.ArgumentParser(description="Replay a rosbag2 on its recorded topics through rclpy.")
    parser.add_argument("bag", help="rosbag2 directory (MCAP or sqlite3)")
    parser.add_argument("--rate", type=float, help="playback speed factor (default 1.0)")
    parser.add_argument("--loop", action="store_true", default=None, help="start over at the end")
    parser.add_argument("--no-restamp", action="store_true", default=None, help="keep the recorded header stamps")
    parser.add_argument("--topics", nargs="*", default=[], help="recorded topic names to play (default all)")
    parser.add_argument("--qos-reliability", choices=("best_effort", "reliable"),
                        help="reliability of the sensor topics (image, camera_info, depth; default best_effort)")
    parser.add_argument("--wait-for-subscribers", type=float, metavar="SEC",
                        help="wait up to SEC seconds until every played topic has a subscriber (default 0: no)")
    return parser


def cli_overrides(args: argparse.Namespace) -> list[Parameter]:
    """The node parameters the command line sets: the bag, and each flag that was given."""
    given = {"rate": args.rate, "loop": args.loop, "restamp": None if args.no_restamp is None else False,
             "qos_reliability": args.qos_reliability, "wait_for_subscribers_sec": args.wait_for_subscribers,
             "topics": list(args.topics) or None}
    return [Parameter("bag", value=str(args.bag))] + [Parameter(k, value=v) for k, v in given.items() if v is not None]


def main(argv: Sequence[str] | None = None) -> None:
    """argv as sys.argv (program name first); ROS arguments after --ros-args go to rclpy."""
    argv = list(sys.argv if argv is None else argv)
    args = _parser().parse_args(remove_ros_args(argv)[1:])
    rclpy.init(args=argv)
    overrides = cli_overrides(args)
    node = None
    try:
        node = BagPlayerNode(parameter_overrides=overrides)
        while rclpy.ok() and not node.finished.is_set():
            rclpy.spin_once(node, timeout_sec=0.2)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()


if __name__ == "__main__":
    main()
