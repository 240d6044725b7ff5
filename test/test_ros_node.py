"""spatial_query_node plumbing, in-process, over DDS on a private domain, with a pipeline test double.

The double stands in for SpatialPipeline only here (the node accepts it through a constructor argument
that no parameter or request can reach). The real-model path is covered by test_ros_integration.py.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
pytest.importorskip("n3d_ros.srv", reason="n3d_ros interfaces not built (scripts/setup_env.sh)")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.executors import MultiThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402
from visualization_msgs.msg import Marker, MarkerArray  # noqa: E402

from n3d_ros.core.box import Box3D  # noqa: E402
from n3d_ros.core.objects import GroundedObject  # noqa: E402
from n3d_ros.msg import Object3DArray  # noqa: E402
from n3d_ros.pipeline.types import CameraFrame, QueryResult  # noqa: E402
from n3d_ros.ros.conversions import ns_to_stamp, stamp_to_ns  # noqa: E402
from n3d_ros.ros.spatial_query_node import SpatialQueryNode, request_problem  # noqa: E402
from n3d_ros.ros.params import NodeParams  # noqa: E402
from n3d_ros.ros.tf_support import TF_AVAILABLE  # noqa: E402
from n3d_ros.srv import SpatialQuery  # noqa: E402

W, H = 64, 48
FRAME_ID = "cam_optical"


@dataclass
class PipelineDouble:
    """Test double with SpatialPipeline's interface; records what it was asked."""

    delay_s: float = 0.0
    mode: str = "ok"                     # ok | fail | raise
    frames: list[CameraFrame] = field(default_factory=list)
    closed: bool = False
    warmed: bool = False
    backend_name: str = "double"
    device: str = "cpu"
    geometry_backend: str = "none"

    def warmup(self) -> None:
        self.warmed = True

    def query(self, frame, question, targets=(), *, detect_only=False) -> QueryResult:
        self.frames.append(frame)
        time.sleep(self.delay_s)
        if self.mode == "raise":
            raise RuntimeError("CUDA error: device-side assert")
        if self.mode == "fail":
            return QueryResult(False, "the model output could not be turned into an answer; rephrase")
        objs = [GroundedObject(Box3D.from_yaw([0.1 * i, 0.0, 2.0], [0.3, 0.3, 0.3], 0.2), label=t, score=0.8,
                               id=f"bbox_{i}", box_2d=(1.0, 2.0, 30.0, 40.0)) for i, t in enumerate(targets)]
        return QueryResult(True, answer=f"{len(objs)} objects", reasoning="double", objects=objs)

    def close(self) -> None:
        self.closed = True


def _env_for_test(request) -> dict[str, str]:
    """ROS_* of conftest's `ros_env` (a fresh domain per test), or the same contract built here."""
    try:
        env = request.getfixturevalue("ros_env")
    except pytest.FixtureLookupError:
        env = {"ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST", "ROS_DOMAIN_ID": str(70 + os.getpid() % 10)}
    return {k: v for k, v in env.items() if k.startswith("ROS_")}


class Harness:
    """One node under test + a helper node (camera publisher, service client, output listeners)."""

    def __init__(self, env: dict[str, str], factory=None, **params) -> None:
        self._saved = {k: os.environ.get(k) for k in env}
        os.environ.update({k: v for k, v in env.items() if k.startswith("ROS_")})
        self.ctx = rclpy.Context()
        rclpy.init(context=self.ctx)
        self.pipeline = PipelineDouble()
        overrides = [Parameter(k, value=v) for k, v in {"warmup": True, **params}.items()]
        self.node = SpatialQueryNode(pipeline_factory=factory or (lambda p: self.pipeline), context=self.ctx,
                                     parameter_overrides=overrides)
        self.helper = rclpy.create_node("test_helper", context=self.ctx)
        qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
        self.image_pub = self.helper.create_publisher(Image, "image", qos)
        self.info_pub = self.helper.create_publisher(CameraInfo, "camera_info", qos)
        self.depth_pub = self.helper.create_publisher(Image, "depth", qos)
        self.client = self.helper.create_client(SpatialQuery, "/spatial_query")
        self.objects: list[Object3DArray] = []
        self.markers: list[MarkerArray] = []
        self.helper.create_subscription(Object3DArray, "objects", self.objects.append, 10)
        self.helper.create_subscription(MarkerArray, "markers", self.markers.append, 10)
        self.diagnostics: list[DiagnosticArray] = []
        self.helper.create_subscription(DiagnosticArray, "/diagnostics", self.diagnostics.append, 10)
        self.debug_images: list[Image] = []
        self.helper.create_subscription(Image, "debug_image", self.debug_images.append, 10)
        self.executor = MultiThreadedExecutor(num_threads=4, context=self.ctx)
        self.executor.add_node(self.node)
        self.executor.add_node(self.helper)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=2.0)
        self.node.close()
        self.node.destroy_node()
        self.helper.destroy_node()
        rclpy.try_shutdown(context=self.ctx)
        for k, v in self._saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

    # -------------------------------------------------------------- camera
    def publish_frame(self, *, stamp_ns: int | None = None, image: Image | None = None,
                      info: CameraInfo | None = None, depth: Image | None = None) -> int:
        stamp_ns = self.node.get_clock().now().nanoseconds if stamp_ns is None else stamp_ns
        image = image if image is not None else make_image()
        info = info if info is not None else make_info()
        for msg in (image, info) + ((depth,) if depth is not None else ()):
            msg.header.stamp = ns_to_stamp(stamp_ns)
            msg.header.frame_id = FRAME_ID
        if depth is not None:
            self.depth_pub.publish(depth)
        self.image_pub.publish(image)
        self.info_pub.publish(info)
        time.sleep(0.02)  # the node keeps only image_qos_depth=5 per topic: do not outrun its callbacks
        return stamp_ns

    def wait_for(self, predicate, timeout: float = 5.0) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if predicate():
                return True
            time.sleep(0.02)
        return False

    def wait_paired(self, n: int) -> None:
        assert self.wait_for(lambda: self.node.health().buffer.paired >= n), self.node.health()

    # -------------------------------------------------------------- service
    def ask(self, question: str = "how far is the mug from the laptop?", targets=("mug", "laptop"), *,
            target_frame: str = "", timeout_sec: float = 2.0, stamp_ns: int = 0) -> SpatialQuery.Response:
        assert self.client.wait_for_service(timeout_sec=10.0), "spatial_query service never appeared"
        req = SpatialQuery.Request(question=question, targets=list(targets), target_frame=target_frame,
                                   timeout_sec=float(timeout_sec))
        req.stamp = ns_to_stamp(stamp_ns)
        future = self.client.call_async(req)
        assert self.wait_for(future.done, timeout_sec + 5.0), "no response"
        return future.result()


def make_image(encoding: str = "rgb8", w: int = W, h: int = H) -> Image:
    ch = {"rgb8": 3, "bgr8": 3, "mono8": 1, "rgba8": 4}[encoding]
    data = np.random.default_rng(0).integers(0, 256, (h, w * ch), dtype=np.uint8)
    return Image(width=w, height=h, encoding=encoding, step=w * ch, data=data.tobytes())


def make_info(w: int = W, h: int = H, fx: float = 50.0) -> CameraInfo:
    return CameraInfo(width=w, height=h, distortion_model="plumb_bob", d=[0.0] * 5,
                      k=[fx, 0.0, w / 2 - 0.5, 0.0, fx, h / 2 - 0.5, 0.0, 0.0, 1.0])


@pytest.fixture
def harness(request):
    h = Harness(_env_for_test(request))
    try:
        assert h.wait_for(lambda: h.node.health().state == "active", 10.0), "node did not self-activate"
        yield h
    finally:
        h.close()


# ------------------------------------------------------------------ pure request validation
def test_request_problem_messages():
    p = NodeParams(max_question_chars=20, max_targets=2, max_target_chars=5)
    assert request_problem("where is it?", ["a"], "", p) is None
    assert "question is empty" in request_problem("   ", [], "", p)
    assert "limit is 20 (parameter max_question_chars)" in request_problem("x" * 21, [], "", p)
    assert "3 targets given" in request_problem("q", ["a", "b", "c"], "", p)
    assert "targets[0] is empty" in request_problem("q", [" "], "", p)
    assert "targets[1] has 6 characters" in request_problem("q", ["a", "abcdef"], "", p)
    assert "not a valid frame id" in request_problem("q", [], "base link", p)


# ------------------------------------------------------------------ node over DDS
def test_query_roundtrip_publishes_objects_and_markers(harness):
    assert harness.pipeline.warmed
    stamp = harness.publish_frame()
    harness.wait_paired(1)
    res = harness.ask()
    assert res.success, res.message
    assert res.answer == "2 objects" and [o.label for o in res.objects] == ["mug", "laptop"]
    assert res.header.frame_id == FRAME_ID and stamp_to_ns(res.header.stamp) == stamp
    assert res.latency_sec > 0
    frame = harness.pipeline.frames[-1]
    assert frame.image.shape == (H, W, 3) and frame.camera.fx == 50.0 and frame.depth is None
    assert harness.wait_for(lambda: harness.objects and harness.markers)
    assert harness.objects[-1].header.frame_id == FRAME_ID and len(harness.objects[-1].objects) == 2
    markers = harness.markers[-1].markers
    assert markers[0].action == Marker.DELETEALL and len(markers) == 5
    assert stamp_to_ns(markers[1].header.stamp) == stamp


def test_no_frame_yet(harness):
    res = harness.ask(timeout_sec=0.3)
    assert not res.success
    assert "no camera frame received yet on /image and /camera_info" in res.message
    assert "image_reliability" in res.message


def test_bad_requests_refused_and_node_keeps_answering(harness):
    harness.publish_frame()
    harness.wait_paired(1)
    for kwargs, needle in [
        ({"question": ""}, "question is empty"),
        ({"question": "x" * 600}, "max_question_chars"),
        ({"targets": ["t"] * 17}, "max_targets"),
        ({"target_frame": "bad frame"}, "not a valid frame id"),
        ({"stamp_ns": 12_345_000_000}, "buffered stamps"),
    ]:
        res = harness.ask(**kwargs)
        assert not res.success and needle in res.message, (kwargs.keys(), res.message)
    assert harness.ask().success


@pytest.mark.skipif(TF_AVAILABLE, reason="tf2_ros present: TF path is exercised instead")
def test_target_frame_without_tf(harness):
    harness.publish_frame()
    harness.wait_paired(1)
    res = harness.ask(target_frame="map")
    assert not res.success
    assert "TF is unavailable in this installation" in res.message and f"'{FRAME_ID}'" in res.message
    assert harness.ask(target_frame=FRAME_ID).success  # the image's own frame needs no TF


def test_timeout_then_late_result_discarded(harness):
    harness.publish_frame()
    harness.wait_paired(1)
    harness.pipeline.delay_s = 0.8
    res = harness.ask(timeout_sec=0.2)
    assert not res.success and "timed out after 0.2 s" in res.message
    n_objects = len(harness.objects)
    harness.pipeline.delay_s = 0.0
    res = harness.ask(timeout_sec=5.0)  # waits behind the late one, then answers
    assert res.success
    time.sleep(0.2)
    assert len(harness.objects) == n_objects + 1  # the timed-out query published nothing
    assert harness.node.health().queries_timed_out == 1


@pytest.mark.parametrize("mode,needle", [("raise", "model failure (RuntimeError"), ("fail", "rephrase")])
def test_model_failures_become_messages(harness, mode, needle):
    harness.publish_frame()
    harness.wait_paired(1)
    harness.pipeline.mode = mode
    res = harness.ask()
    assert not res.success and needle in res.message
    harness.pipeline.mode = "ok"
    assert harness.ask().success


def test_malformed_stream_counted_and_skipped(harness):
    bad_images = [make_image(), make_image(), make_image(), make_image("rgba8")]
    bad_images[0].encoding = "yuv422"
    bad_images[1].step = 10
    bad_images[2].data = b""
    bad_images[3].data = bytes(bad_images[3].data)[:-4]
    # Stamps 100 ms apart (> sync_slop_sec): a good half of one bad frame must not pair with the next.
    base = harness.node.get_clock().now().nanoseconds - 2 * 10**9
    stamps = iter(base + i * 100_000_000 for i in range(20))
    for img in bad_images:
        harness.publish_frame(image=img, stamp_ns=next(stamps))
    zero_k, nan_k, wrong_size = make_info(), make_info(), make_info(w=W * 2)
    zero_k.k = [0.0] * 9
    nan_k.k = [float("nan")] * 9
    for info in (zero_k, nan_k, wrong_size):
        harness.publish_frame(info=info, stamp_ns=next(stamps))
    harness.publish_frame(stamp_ns=base - 60 * 10**9)  # stale
    assert harness.wait_for(lambda: harness.node.health().buffer.rejected >= 7
                            and harness.node.health().buffer.stale >= 2), harness.node.health()
    assert harness.node.health().buffer.paired == 0
    res = harness.ask(timeout_sec=0.3)
    assert not res.success and "no usable image+camera_info pair" in res.message

    def diag_values():
        return {kv.key: kv.value for kv in harness.diagnostics[-1].status[0].values} if harness.diagnostics else {}
    assert harness.wait_for(lambda: int(diag_values().get("frames_rejected", 0)) >= 7, 3.0), diag_values()
    assert diag_values()["backend"] == "double" and diag_values()["device"] == "cpu"
    harness.publish_frame()
    harness.wait_paired(1)
    assert harness.ask().success


def test_camera_stop_and_restart(harness):
    first = harness.publish_frame()
    harness.wait_paired(1)
    assert stamp_to_ns(harness.ask().header.stamp) == first
    time.sleep(0.5)  # camera silent
    stamps = []
    for _ in range(3):  # camera back (new process: new stamps)
        stamps.append(harness.publish_frame())
        time.sleep(0.03)
    harness.wait_paired(4)
    assert stamp_to_ns(harness.ask().header.stamp) == stamps[-1]


def test_depth_paired_and_bad_depth_rejected(harness):
    mm = np.full((H, W), 1500, dtype="<u2")
    depth = Image(width=W, height=H, encoding="16UC1", step=W * 2, data=mm.tobytes())
    harness.publish_frame(depth=depth)
    harness.wait_paired(1)
    assert harness.wait_for(lambda: harness.node.health().buffer.depths >= 1)
    assert harness.ask().success
    np.testing.assert_allclose(harness.pipeline.frames[-1].depth, 1.5)
    small = Image(width=W // 2, height=H // 2, encoding="16UC1", step=W, data=mm[: H // 2, : W // 2].tobytes())
    harness.publish_frame(depth=small)
    harness.wait_paired(2)
    assert harness.wait_for(lambda: harness.node.health().buffer.depths >= 2)
    assert harness.ask().success and harness.pipeline.frames[-1].depth is None  # colour still answered
    assert harness.node.health().rejected_depth == 1


def test_deactivate_frees_models_and_activate_restores(harness):
    from rclpy.lifecycle import TransitionCallbackReturn
    assert harness.node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
    assert harness.pipeline.closed and harness.node.health().state == "inactive"
    assert harness.wait_for(lambda: not harness.client.service_is_ready(), 3.0)
    harness.pipeline.closed = False
    assert harness.node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    harness.publish_frame()
    harness.wait_paired(1)
    assert harness.ask().success


def test_bad_parameter_fails_configure(request):
    h = Harness(_env_for_test(request), autostart=False, image_qos_depth=0, backend="gpt")
    try:
        from rclpy.lifecycle import TransitionCallbackReturn
        time.sleep(0.1)
        assert h.node.health().state == "unconfigured"  # autostart false: nothing happened
        assert h.node.trigger_configure() == TransitionCallbackReturn.FAILURE
        assert h.node.health().state == "unconfigured"
    finally:
        h.close()


def test_model_load_failure_keeps_node_alive_and_reports(request):
    from n3d_ros.vlm.contract import ModelLoadError

    def broken(p):
        raise ModelLoadError("models/n3d_compact/config.json missing")

    h = Harness(_env_for_test(request), factory=broken)
    try:
        # The error is recorded inside on_activate, before rclpy completes the transition back to inactive.
        assert h.wait_for(lambda: h.node.health().load_error != "" and h.node.health().state != "activating", 5.0)
        health = h.node.health()
        assert health.state == "inactive" and "config.json missing" in health.load_error
        assert not h.client.wait_for_service(timeout_sec=0.5)  # no service while not active
    finally:
        h.close()


def test_debug_image_published_when_enabled(request):
    h = Harness(_env_for_test(request), publish_debug_image=True)
    try:
        assert h.wait_for(lambda: h.node.health().state == "active", 10.0)
        stamp = h.publish_frame()
        h.wait_paired(1)
        assert h.ask().success
        assert h.wait_for(lambda: h.debug_images, 5.0)
        img = h.debug_images[-1]
        assert (img.width, img.height, img.encoding) == (W, H, "rgb8")
        assert stamp_to_ns(img.header.stamp) == stamp and img.header.frame_id == FRAME_ID
    finally:
        h.close()


def test_camera_keeps_flowing_while_a_query_runs(harness):
    harness.publish_frame()
    harness.wait_paired(1)
    harness.pipeline.delay_s = 0.6
    assert harness.client.wait_for_service(timeout_sec=5.0)
    future = harness.client.call_async(SpatialQuery.Request(question="where is the mug?", timeout_sec=5.0))
    t0 = time.monotonic()
    while not future.done() and time.monotonic() - t0 < 0.5:  # ~30 Hz during inference
        harness.publish_frame()
        time.sleep(0.013)
    during = harness.node.health().buffer.paired
    assert harness.wait_for(future.done, 5.0) and future.result().success
    assert during >= 8, f"only {during} frames paired while the query ran"
    assert harness.node.health().buffer.dropped >= during - 1 - 4  # buffer_size 4; the one used is not dropped


@pytest.mark.parametrize("backend", ["n3d_vlm", "qwen3_vl"])
def test_checkpoint_folder_parameter_missing_folder_is_reported(request, tmp_path, backend):
    """backend + model_dir parameters reach the real loaders; a missing folder is a clear error, no crash."""
    from n3d_ros.ros.spatial_query_node import default_pipeline_factory

    missing = tmp_path / "no_such_checkpoint"
    h = Harness(_env_for_test(request), factory=default_pipeline_factory, backend=backend,
                model_dir=str(missing), device="cpu")
    try:
        assert h.wait_for(lambda: h.node.health().load_error != "" and h.node.health().state != "activating", 60.0)
        health = h.node.health()
        assert health.state == "inactive"
        assert str(missing) in health.load_error and "does not exist" in health.load_error
    finally:
        h.close()
