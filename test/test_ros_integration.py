"""spatial_query_node as a separate process, talked to over DDS (private ROS_DOMAIN_ID, localhost only).

Two node processes:
  * `python -m n3d_ros.ros.spatial_query_node` with the real pipeline and the built-in model;
  * the same node class served by `serve_with_double()` below with a pipeline test double, so the
    process/DDS plumbing (no frame yet, TF refusal, malformed stream, camera restart) is always tested.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
pytest.importorskip("n3d_ros.srv", reason="n3d_ros interfaces not built (scripts/setup_env.sh)")

from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402

from n3d_ros.ros.conversions import ns_to_stamp, stamp_to_ns  # noqa: E402
from n3d_ros.ros.tf_support import TF_AVAILABLE  # noqa: E402
from n3d_ros.srv import SpatialQuery  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MODEL_CONFIG = REPO / "models" / "n3d_compact" / "config.json"
DEMO_JPG = Path("/work/shared/data/n3d_demo/demo2.jpg")
DEMO_NPZ = DEMO_JPG.with_suffix(".npz")
FRAME_ID = "camera_color_optical_frame"


# ------------------------------------------------------------------ the double-served node process
def serve_with_double() -> None:
    """Entry point of the child process: the real node class, a pipeline test double inside."""
    from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor

    from n3d_ros.core.box import Box3D
    from n3d_ros.core.objects import GroundedObject
    from n3d_ros.pipeline.types import QueryResult
    from n3d_ros.ros.spatial_query_node import SpatialQueryNode

    class Double:
        backend_name, device, geometry_backend = "double", "cpu", "none"

        def warmup(self) -> None:
            pass

        def query(self, frame, question, targets=(), *, detect_only=False):
            box = Box3D.from_yaw([0.0, 0.0, 2.0], [0.4, 0.4, 0.4], 0.0)
            objs = [GroundedObject(box, label=t, id=f"bbox_{i}") for i, t in enumerate(targets or ["thing"])]
            return QueryResult(True, answer=f"{frame.image.shape[1]}x{frame.image.shape[0]}", objects=objs)

        def close(self) -> None:
            pass

    rclpy.init(args=sys.argv)
    node = SpatialQueryNode(pipeline_factory=lambda p: Double())
    executor = MultiThreadedExecutor(num_threads=4)
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.close()
        rclpy.try_shutdown()


# ------------------------------------------------------------------ helpers
def _ros_env(request) -> dict[str, str]:
    """ROS_* of conftest's `ros_env` (a fresh domain per test), or the same contract built here."""
    try:
        env = request.getfixturevalue("ros_env")
    except pytest.FixtureLookupError:
        env = {"ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST", "ROS_DOMAIN_ID": str(70 + (os.getpid() + 5) % 10)}
    return {k: v for k, v in env.items() if k.startswith("ROS_")}


class Camera:
    """Test-side ROS node in its own context: publishes frames, calls the service."""

    def __init__(self, env: dict[str, str], reliable: bool = False) -> None:
        self._saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        self.ctx = rclpy.Context()
        rclpy.init(context=self.ctx)
        self.node = rclpy.create_node("integration_camera", context=self.ctx)
        policy = ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT
        qos = QoSProfile(depth=5, reliability=policy)
        self.image_pub = self.node.create_publisher(Image, "image", qos)
        self.info_pub = self.node.create_publisher(CameraInfo, "camera_info", qos)
        self.client = self.node.create_client(SpatialQuery, "/spatial_query")
        self.executor = SingleThreadedExecutor(context=self.ctx)
        self.executor.add_node(self.node)

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.ctx)
        for k, v in self._saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)

    def publish(self, rgb: np.ndarray, K: np.ndarray, *, image: Image | None = None,
                info: CameraInfo | None = None) -> int:
        h, w, _ = rgb.shape
        stamp = self.node.get_clock().now().nanoseconds
        image = image or Image(width=w, height=h, encoding="rgb8", step=w * 3, data=rgb.tobytes())
        info = info or CameraInfo(width=w, height=h, distortion_model="plumb_bob", d=[0.0] * 5,
                                  k=[float(v) for v in K.reshape(-1)])
        for msg in (image, info):
            msg.header.stamp = ns_to_stamp(stamp)
            msg.header.frame_id = FRAME_ID
        self.image_pub.publish(image)
        self.info_pub.publish(info)
        time.sleep(0.02)  # the node keeps image_qos_depth=5 per topic: do not outrun it
        return stamp

    def stream(self, rgb: np.ndarray, K: np.ndarray, seconds: float, hz: float = 30.0) -> int:
        # Frames sent before the node subscribed are lost (best effort): wait until it is active.
        assert self.client.wait_for_service(timeout_sec=300.0), "spatial_query service never appeared"
        end, stamp = time.monotonic() + seconds, 0
        while time.monotonic() < end:
            stamp = self.publish(rgb, K)
            self.executor.spin_once(timeout_sec=1.0 / hz)
        return stamp

    def ask(self, question: str, targets=(), *, target_frame: str = "", timeout_sec: float = 5.0,
            service_wait: float = 60.0) -> SpatialQuery.Response:
        assert self.client.wait_for_service(timeout_sec=service_wait), "spatial_query service never appeared"
        req = SpatialQuery.Request(question=question, targets=list(targets), target_frame=target_frame,
                                   timeout_sec=float(timeout_sec))
        future = self.client.call_async(req)
        self.executor.spin_until_future_complete(future, timeout_sec=timeout_sec + 10.0)
        assert future.done(), "no response from the node"
        return future.result()


def _start_node(env: dict[str, str], argv: list[str]) -> subprocess.Popen:
    child_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
    child_env.pop("_ROS_WHEELS_BOOTSTRAP_COMPLETE", None)  # else the child cannot import rclpy
    return subprocess.Popen(argv, cwd=REPO, env=child_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def _stop_node(proc: subprocess.Popen) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    return proc.stdout.read() if proc.stdout else ""


def _synthetic_frame(w: int = 160, h: int = 120) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.stack([xx * 255 // w, yy * 255 // h, np.full_like(xx, 90)], axis=-1).astype(np.uint8)
    rgb[40:80, 50:100] = (200, 30, 30)  # a red box
    K = np.array([[120.0, 0, w / 2 - 0.5], [0, 120.0, h / 2 - 0.5], [0, 0, 1]])
    return rgb, K


# ------------------------------------------------------------------ double-served process
class Session:
    """A node process and the camera/client talking to it (the camera can be replaced)."""

    def __init__(self, proc: subprocess.Popen, env: dict[str, str], reliable: bool = False) -> None:
        self.proc, self.env = proc, env
        self.cam = Camera(env, reliable)


@pytest.fixture
def double_node(request):
    env = _ros_env(request)
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
            "from test_ros_integration import serve_with_double; serve_with_double()")
    session = Session(_start_node(env, [sys.executable, "-c", code, "--ros-args", "-p", "log_throttle_sec:=0.0"]),
                      env)
    try:
        yield session
    finally:
        session.cam.close()
        print(_stop_node(session.proc)[-4000:])


def test_d_no_frame_yet(double_node):
    res = double_node.cam.ask("where is the red box?", timeout_sec=0.5)
    assert not res.success and "no camera frame received yet" in res.message


@pytest.mark.skipif(TF_AVAILABLE, reason="tf2_ros present here")
def test_e_target_frame_needs_tf(double_node):
    cam = double_node.cam
    rgb, K = _synthetic_frame()
    cam.stream(rgb, K, 0.3)
    res = cam.ask("where is the red box?", target_frame="base_link")
    assert not res.success and "TF is unavailable" in res.message and FRAME_ID in res.message


def test_b_malformed_stream_then_valid_query(double_node):
    cam = double_node.cam
    rgb, K = _synthetic_frame()
    assert cam.client.wait_for_service(timeout_sec=60.0)
    for enc, step, data in [("yuv422", 320, b"\0" * 320 * 120), ("rgb8", 10, rgb.tobytes()), ("rgb8", 480, b"")]:
        cam.publish(rgb, K, image=Image(width=160, height=120, encoding=enc, step=step, data=data))
        time.sleep(0.05)  # > sync_slop_sec apart, so halves of bad frames do not pair with each other
    cam.publish(rgb, K, info=CameraInfo(width=160, height=120, k=[0.0] * 9))
    time.sleep(0.05)
    cam.publish(rgb, K, info=CameraInfo(width=320, height=240, k=[float(v) for v in K.reshape(-1)]))
    for question, targets in (("", ()), ("x" * 5000, ()), ("q", ("",))):
        assert not cam.ask(question, targets).success
    assert double_node.proc.poll() is None, "node died"
    stamp = cam.stream(rgb, K, 0.3)
    res = cam.ask("where is the red box?", ["red box"])
    assert res.success, res.message
    assert res.answer == "160x120" and res.header.frame_id == FRAME_ID
    assert [o.label for o in res.objects] == ["red box"]
    assert abs(stamp_to_ns(res.header.stamp) - stamp) < 0.5e9
    # The console client, as a third process, against the same node.
    env = {**os.environ, **double_node.env}
    env.pop("_ROS_WHEELS_BOOTSTRAP_COMPLETE", None)
    out = subprocess.run([sys.executable, "-m", "n3d_ros.ros.query_client", "where is the red box?",
                          "--targets", "red box", "--json", "--timeout", "5"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["success"] and result["objects"][0]["label"] == "red box" and result["frame_id"] == FRAME_ID


def test_c_camera_stop_and_restart(double_node):
    rgb, K = _synthetic_frame()
    double_node.cam.stream(rgb, K, 0.3)
    assert double_node.cam.ask("where is the red box?").success
    double_node.cam.close()                   # camera gone
    time.sleep(1.0)
    double_node.cam = Camera(double_node.env)  # a new camera node on the same topics
    stamp = double_node.cam.stream(rgb, K, 0.5)
    res = double_node.cam.ask("where is the red box?")
    assert res.success and abs(stamp_to_ns(res.header.stamp) - stamp) < 0.5e9
    assert double_node.proc.poll() is None


# ------------------------------------------------------------------ real pipeline + built-in model
@pytest.fixture
def real_node(request):
    assert MODEL_CONFIG.exists(), "the built-in model ships in models/n3d_compact"
    env = _ros_env(request)
    session = Session(_start_node(env, [sys.executable, "-m", "n3d_ros.ros.spatial_query_node", "--ros-args",
                                        "-p", "device:=cpu", "-p", "default_timeout_sec:=120.0",
                                        # 640x480 frames: best effort over loopback UDP loses most of them
                                        "-p", "image_reliability:=reliable"]), env, reliable=True)
    try:
        yield session
    finally:
        session.cam.close()
        print(_stop_node(session.proc)[-4000:])


def _demo_frame() -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image as PILImage
    intr = np.load(DEMO_NPZ)["intr"].astype(np.float64)   # normalised K (fx/W, fy/H, cx/W, cy/H)
    h, w = np.load(DEMO_NPZ)["pcd"].shape[:2]
    rgb = np.asarray(PILImage.open(DEMO_JPG).convert("RGB").resize((w, h)), dtype=np.uint8)
    K = intr.copy()
    K[0] *= w
    K[1] *= h
    K[2] = (0, 0, 1)
    return rgb, K


def test_a_real_model_answers_over_dds_and_survives_malformed_input(real_node):
    from n3d_ros.ros.sim_camera_node import render_sim_frame

    proc, cam = real_node.proc, real_node.cam
    frame = render_sim_frame(1_000_124, width=640, height=480)   # a held-out synthetic scene
    rgb, K = frame.rgb, frame.camera.K
    inside = [o for o in frame.objects if o.box_2d[0] > 2 and o.box_2d[1] > 2
              and o.box_2d[2] < 637 and o.box_2d[3] < 477]             # not cut by the image border
    target = max(inside, key=lambda o: o.box.volume)                 # the most prominent of those
    cam.stream(rgb, K, 0.5)  # waits for the service: model loading may take minutes on CPU
    res = cam.ask(f"Where is the {target.label}?", timeout_sec=120.0, service_wait=300.0)
    assert res.success, res.message
    assert res.header.frame_id == FRAME_ID
    assert [o.label for o in res.objects] == [target.label]
    p = res.objects[0].pose.position
    # sensible: the grounded box sits where the object is, in the image's optical frame
    assert np.linalg.norm(np.array([p.x, p.y, p.z]) - target.box.center) < 0.75
    assert res.objects[0].box_2d[2] > res.objects[0].box_2d[0] >= 0
    if DEMO_JPG.exists():  # a real photograph: the sim-trained model must still answer, not fail
        rgb_real, K_real = _demo_frame()
        cam.stream(rgb_real, K_real, 0.5)
        assert cam.ask("How many objects are there?", timeout_sec=120.0).success
        cam.stream(rgb, K, 0.5)
    cam.publish(rgb, K, image=Image(width=10, height=10, encoding="bayer_rggb8", step=10, data=b"\0" * 100))
    cam.publish(rgb, K, info=CameraInfo(width=rgb.shape[1], height=rgb.shape[0], k=[float("nan")] * 9))
    cam.stream(rgb, K, 0.5)
    res = cam.ask("How many objects are there?", timeout_sec=120.0)
    assert res.success, res.message
    assert proc.poll() is None
