"""rosbag2 recording (no ROS graph) and replay through rclpy on the recorded topics.

ROS traffic stays on this machine: ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST, in-process on the
session's domain id and for the player subprocess a fresh one from the `ros_env` fixture (conftest.py).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rclpy.serialization import deserialize_message, serialize_message
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore
from sensor_msgs.msg import CameraInfo, Image

from n3d_ros.ros import bag_player as BP

W, H = 8, 6



def _frame_msgs(i: int, stamp_ns: int) -> tuple[Image, CameraInfo]:
    rgb = np.random.default_rng(i).integers(0, 256, (H, W, 3), dtype=np.uint8)
    img = Image(height=H, width=W, encoding="rgb8", step=W * 3, data=rgb.tobytes())
    img.header.frame_id = "cam_optical"
    img.header.stamp.sec, img.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
    info = CameraInfo(width=W, height=H, k=[10.0 + i, 0, 3.5, 0, 10.0 + i, 2.5, 0, 0, 1],
                      distortion_model="plumb_bob", d=[0.0] * 5)
    info.header = img.header
    return img, info


def _write_bag(path, n_frames=3, storage=StoragePlugin.MCAP, t0=1_700_000_000_000_000_000):
    """A hand-made bag: n_frames of (image, camera_info) 0.05 s apart, same stamp per frame."""
    store = get_typestore(Stores.ROS2_KILTED)
    sent = []
    with Writer(path, version=9, storage_plugin=storage) as w:
        ci = w.add_connection("/image", "sensor_msgs/msg/Image", typestore=store)
        cc = w.add_connection("/camera_info", "sensor_msgs/msg/CameraInfo", typestore=store)
        for i in range(n_frames):
            t = t0 + i * 50_000_000
            img, info = _frame_msgs(i, t)
            w.write(ci, t, serialize_message(img))
            w.write(cc, t, serialize_message(info))
            sent.append((img, info))
    return sent


def _spin_until(executor, done, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end and not done():
        executor.spin_once(timeout_sec=0.05)


def _player(ctx, bag, **params):
    overrides = [Parameter("bag", value=str(bag)), Parameter("start_delay_sec", value=0.8)]
    overrides += [Parameter(k, value=v) for k, v in params.items()]
    return BP.BagPlayerNode(context=ctx, parameter_overrides=overrides)


def _listener(ctx, topics):
    node = rclpy.create_node("bag_listener", context=ctx)
    got = {t: [] for t in topics}
    qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.BEST_EFFORT)
    for topic, cls in topics.items():
        node.create_subscription(cls, topic, lambda m, t=topic: got[t].append(m), qos)
    return node, got


# ---------------------------------------------------------------------------------- pure helpers
def test_read_bag_and_message_class(tmp_path):
    sent = _write_bag(tmp_path / "bag", storage=StoragePlugin.SQLITE3)
    msgs = list(BP.read_bag(tmp_path / "bag"))
    assert [m.topic for m in msgs] == ["/image", "/camera_info"] * 3
    assert BP.bag_topics(tmp_path / "bag") == {"/image": "sensor_msgs/msg/Image",
                                               "/camera_info": "sensor_msgs/msg/CameraInfo"}
    # (compared decoded: Fast CDR leaves alignment padding bytes uninitialised)
    first = deserialize_message(msgs[0].data, Image)
    assert bytes(first.data) == bytes(sent[0][0].data) and first.header == sent[0][0].header
    assert [m.topic for m in BP.read_bag(tmp_path / "bag", ["camera_info"])] == ["/camera_info"] * 3
    assert BP.message_class("sensor_msgs/msg/Image") is Image
    assert BP.message_class("sensor_msgs/CameraInfo") is CameraInfo
    with pytest.raises(ImportError, match="no_such_pkg/msg/Foo"):
        BP.message_class("no_such_pkg/msg/Foo")
    with pytest.raises(ValueError, match="pkg/msg/Name"):
        BP.message_class("Image")
    with pytest.raises(FileNotFoundError, match="no rosbag2"):
        list(BP.read_bag(tmp_path / "missing"))


def test_command_line_sets_only_the_flags_given():
    """Flags become parameter overrides only when given: rclpy applies these over `--ros-args -p`, so a
    default would undo e.g. `-p wait_for_subscribers_sec:=5.0`."""
    def params(*argv):
        return {p.name: p.value for p in BP.cli_overrides(BP._parser().parse_args(["/b", *argv]))}
    assert params() == {"bag": "/b"}
    assert params("--rate", "2", "--loop", "--no-restamp", "--topics", "/image", "--qos-reliability", "reliable",
                  "--wait-for-subscribers", "5") == {
        "bag": "/b", "rate": 2.0, "loop": True, "restamp": False, "topics": ["/image"],
        "qos_reliability": "reliable", "wait_for_subscribers_sec": 5.0}


def test_restamp_keeps_payload():
    img, _ = _frame_msgs(0, 5_000_000_123)
    seen = []
    out = BP.restamp(serialize_message(img), Image, lambda old: seen.append(old) or 42_000_000_007)
    back = deserialize_message(out, Image)
    assert seen == [5_000_000_123]
    assert (back.header.stamp.sec, back.header.stamp.nanosec) == (42, 7)
    assert bytes(back.data) == bytes(img.data) and back.header.frame_id == "cam_optical"


# ---------------------------------------------------------------------------------- replay over ROS
@pytest.mark.parametrize("restamp", [True, False])
def test_replay_delivers_identical_messages(tmp_path, ros_context, restamp):
    sent = _write_bag(tmp_path / "bag")
    listener, got = _listener(ros_context, {"image": Image, "camera_info": CameraInfo})
    player = _player(ros_context, tmp_path / "bag", restamp=restamp)
    ex = SingleThreadedExecutor(context=ros_context)
    ex.add_node(listener)
    ex.add_node(player)
    try:
        _spin_until(ex, lambda: len(got["camera_info"]) >= 3 and len(got["image"]) >= 3)
    finally:
        ex.shutdown()
        player.destroy_node()
        listener.destroy_node()
    assert player.finished.is_set() and player.published == 6
    assert len(got["image"]) == 3 and len(got["camera_info"]) == 3
    for (img, info), rx_img, rx_info in zip(sent, got["image"], got["camera_info"]):
        assert bytes(rx_img.data) == bytes(img.data)
        assert (rx_img.width, rx_img.height, rx_img.encoding) == (W, H, "rgb8")
        assert list(rx_info.k) == list(info.k)
        # image and camera_info of one frame keep one stamp, so synchronizers still pair them
        assert rx_img.header.stamp == rx_info.header.stamp
        if restamp:
            assert rx_img.header.stamp != img.header.stamp
            now = time.time_ns()
            assert abs(rx_img.header.stamp.sec - now // 1_000_000_000) < 30
        else:
            assert rx_img.header.stamp == img.header.stamp
    if restamp:  # consecutive frames get increasing replay stamps
        stamps = [m.header.stamp.sec * 10**9 + m.header.stamp.nanosec for m in got["image"]]
        assert stamps == sorted(stamps) and len(set(stamps)) == 3


def test_player_waits_for_subscribers(tmp_path, ros_context):
    """wait_for_subscribers_sec: nothing is played before every topic has a subscriber (a late one gets every
    frame); when none comes in time the bag is played anyway."""
    _write_bag(tmp_path / "bag")
    player = _player(ros_context, tmp_path / "bag", start_delay_sec=0.0, wait_for_subscribers_sec=30.0)
    ex = SingleThreadedExecutor(context=ros_context)
    ex.add_node(player)
    listener = None
    try:
        _spin_until(ex, lambda: False, timeout=0.8)
        assert player.published == 0 and not player.finished.is_set()
        listener, got = _listener(ros_context, {"image": Image, "camera_info": CameraInfo})
        ex.add_node(listener)
        _spin_until(ex, lambda: len(got["camera_info"]) >= 3 and len(got["image"]) >= 3, timeout=20)
        assert len(got["image"]) == 3 and len(got["camera_info"]) == 3 and player.published == 6
        # In a namespace nobody listens to: after 0.3 s it plays anyway.
        alone = BP.BagPlayerNode(context=ros_context, namespace="/nobody_listens", parameter_overrides=[
            Parameter("bag", value=str(tmp_path / "bag")), Parameter("start_delay_sec", value=0.0),
            Parameter("wait_for_subscribers_sec", value=0.3)])
        try:
            assert alone.finished.wait(5.0) and alone.published == 6
        finally:
            alone.destroy_node()
    finally:
        ex.shutdown()
        player.destroy_node()
        if listener is not None:
            listener.destroy_node()


def test_player_rejects_bad_parameters(tmp_path, ros_context):
    _write_bag(tmp_path / "bag", n_frames=1)
    with pytest.raises(ValueError, match="rate must be > 0"):
        _player(ros_context, tmp_path / "bag", rate=0.0)
    with pytest.raises(ValueError, match="none of the requested topics"):
        _player(ros_context, tmp_path / "bag", topics=["/nope"])


# ---------------------------------------------------------------------------------- sim recording
def _needs_sim_and_interfaces():
    pytest.importorskip("n3d_ros.msg", reason="n3d_ros interfaces not built (scripts/setup_env.sh)")


def test_typestore_knows_our_messages():
    pytest.importorskip("n3d_ros.msg", reason="n3d_ros interfaces not built (scripts/setup_env.sh)")
    from n3d_ros.tools.record_bag import n3d_typestore
    store = n3d_typestore()
    msgdef, _ = store.generate_msgdef("n3d_ros/msg/Object3DArray", ros_version=2)
    assert "n3d_ros/Object3D[] objects" in msgdef and "float32[4] box_2d" in msgdef
    assert store.hash_rihs01("n3d_ros/msg/Object3D").startswith("RIHS01_")


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_record_sim_bag_without_ros_graph(tmp_path, storage):
    _needs_sim_and_interfaces()
    from n3d_ros.msg import Object3DArray
    from n3d_ros.tools.record_bag import TOPICS, record_sim_bag
    summary = record_sim_bag(tmp_path / "bag", scenes=2, frames_per_scene=2, width=48, height=36,
                             storage=storage, start_ns=1_000_000_000, rate_hz=10.0)
    assert summary.messages == {t: 4 for t, _ in TOPICS.values()}
    assert summary.duration_s == pytest.approx(0.3)
    with pytest.raises(FileExistsError):
        record_sim_bag(tmp_path / "bag", scenes=1)
    with Reader(tmp_path / "bag") as reader:
        assert {c.topic: c.msgtype for c in reader.connections} == dict(TOPICS.values())
        stamps: dict[str, list[int]] = {}
        for conn, t, raw in reader.messages():
            msg = deserialize_message(bytes(raw), BP.message_class(conn.msgtype))
            ns = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
            assert ns == t and msg.header.frame_id == "sim_camera_optical_frame"
            stamps.setdefault(conn.topic, []).append(ns)
            if conn.topic == "/image":
                assert (msg.width, msg.height, msg.encoding) == (48, 36, "rgb8")
            if isinstance(msg, Object3DArray):
                assert msg.objects and all(o.label for o in msg.objects)
    assert len({tuple(v) for v in stamps.values()}) == 1  # every topic has the same stamps


def test_recorded_sim_bag_replays_intact(tmp_path, ros_context):
    _needs_sim_and_interfaces()
    from n3d_ros.msg import Object3DArray
    from n3d_ros.tools.record_bag import record_sim_bag
    record_sim_bag(tmp_path / "bag", scenes=1, frames_per_scene=2, width=40, height=30, rate_hz=20.0)
    recorded = {m.topic: m.data for m in BP.read_bag(tmp_path / "bag")}  # last frame of each topic
    listener, got = _listener(ros_context, {"image": Image, "camera_info": CameraInfo, "depth": Image})
    truth = []
    listener.create_subscription(Object3DArray, "sim_camera/ground_truth", truth.append, 10)
    player = _player(ros_context, tmp_path / "bag")
    ex = SingleThreadedExecutor(context=ros_context)
    ex.add_node(listener)
    ex.add_node(player)
    try:
        _spin_until(ex, lambda: all(len(v) >= 2 for v in got.values()) and len(truth) >= 2)
    finally:
        ex.shutdown()
        player.destroy_node()
        listener.destroy_node()
    assert all(len(v) == 2 for v in got.values()) and len(truth) == 2
    rec_img = deserialize_message(recorded["/image"], Image)
    rec_info = deserialize_message(recorded["/camera_info"], CameraInfo)
    assert bytes(got["image"][-1].data) == bytes(rec_img.data)
    assert bytes(got["depth"][-1].data) == bytes(deserialize_message(recorded["/depth"], Image).data)
    assert list(got["camera_info"][-1].k) == list(rec_info.k)
    rec_truth = deserialize_message(recorded["/sim_camera/ground_truth"], Object3DArray)
    assert [o.label for o in truth[-1].objects] == [o.label for o in rec_truth.objects]
    assert truth[-1].header.stamp == got["image"][-1].header.stamp


def test_player_command_line_in_a_namespace(tmp_path, ros_env):
    """`python -m n3d_ros.ros.bag_player BAG --ros-args -r __ns:=/cam1` as its own process."""
    _write_bag(tmp_path / "bag", n_frames=4)
    ctx = rclpy.context.Context()
    rclpy.init(context=ctx, domain_id=int(ros_env["ROS_DOMAIN_ID"]))
    proc = None
    try:
        listener, got = _listener(ctx, {"/cam1/image": Image, "/cam1/camera_info": CameraInfo})
        ex = SingleThreadedExecutor(context=ctx)
        ex.add_node(listener)
        proc = subprocess.Popen([sys.executable, "-m", "n3d_ros.ros.bag_player", str(tmp_path / "bag"),
                                 "--rate", "4.0", "--wait-for-subscribers", "20", "--ros-args", "-r", "__ns:=/cam1",
                                 "-p", "start_delay_sec:=0.2"],
                                env=ros_env, cwd=os.path.dirname(os.path.dirname(__file__)),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        _spin_until(ex, lambda: len(got["/cam1/camera_info"]) >= 4 or proc.poll() is not None, timeout=30)
        _spin_until(ex, lambda: len(got["/cam1/camera_info"]) >= 4, timeout=1)
        out, _ = proc.communicate(timeout=20)
        ex.shutdown()
        listener.destroy_node()
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        rclpy.shutdown(context=ctx)
    assert proc.returncode == 0, out
    assert "replay finished: 8 messages published" in out
    assert len(got["/cam1/image"]) == 4 and len(got["/cam1/camera_info"]) == 4
