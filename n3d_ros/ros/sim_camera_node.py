"""A simulated RGB-D camera: procedural sim scenes published like a camera driver, plus ground truth.

`python -m n3d_ros.ros.sim_camera_node` (console script `sim_camera_node`). Topics (relative, so a
namespace or remap serves several cameras):
    image             sensor_msgs/Image rgb8              (sensor QoS, reliability by parameter)
    camera_info       sensor_msgs/CameraInfo              (same header as image)
    depth             sensor_msgs/Image 32FC1, metres z   (only with publish_depth; NaN = no surface)
    ~/ground_truth    n3d_ros/Object3DArray               (RELIABLE; the visible objects' boxes in
                                                            the optical frame, same header)
Scenes are static, so each is rendered once, in a worker thread ahead of need; the timer only
restamps and publishes the prepared messages. A scene that fails to render is logged and the
last good one stays on air.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header

from n3d_ros.msg import Object3DArray

from ..core.camera import CameraModel
from ..core.objects import GroundedObject
from .conversions import camera_to_camera_info, depth_to_image, objects_to_array, rgb_to_image
from .qos import output_qos, sensor_qos

DEFAULT_FRAME_ID = "sim_camera_optical_frame"
DEFAULT_SEED = 1_000_000  # first held-out seed: the built-in model never trained on it
RETRY_AFTER_SEC = 5.0     # a scene that failed to render is tried again after this long


# ---------------------------------------------------------------------------------- frames
@dataclass(frozen=True)
class SimFrame:
    """One rendered scene.

    rgb:     (H, W, 3) uint8.
    depth:   (H, W) float32 metres along the optical axis, NaN where nothing was hit.
    objects: visible ground-truth objects, boxes in the optical frame of `camera`.
    """

    seed: int
    camera: CameraModel
    rgb: np.ndarray
    depth: np.ndarray
    objects: list[GroundedObject]


def resized_camera(camera: CameraModel, width: int, height: int) -> CameraModel:
    """The same view at width x height: scale uniformly to cover, then crop the centre.

    Uniform scaling keeps fx/fy (square pixels stay square); the crop trims the excess axis.
    Pixel centres at integers: u' = (u + 0.5) * s - 0.5 - crop.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"width and height must be positive, got {width}x{height}")
    s = max(width / camera.width, height / camera.height)
    crop_x = (camera.width * s - width) / 2.0
    crop_y = (camera.height * s - height) / 2.0
    K = camera.K.copy()
    K[0, 0] *= s
    K[0, 1] *= s
    K[1, 1] *= s
    K[0, 2] = (K[0, 2] + 0.5) * s - 0.5 - crop_x
    K[1, 2] = (K[1, 2] + 0.5) * s - 0.5 - crop_y
    return camera.with_intrinsics(K, width, height)


def render_sim_frame(seed: int, *, width: int = 0, height: int = 0, device: str = "cpu") -> SimFrame:
    """Generate and render the scene of `seed`; width/height > 0 override the scene's random camera."""
    from ..sim.questions import gt_object, visible_objects
    from ..sim.render import render  # torch renderer: imported when a frame is actually needed
    from ..sim.world import generate_scene

    scene = generate_scene(int(seed))
    if width > 0 or height > 0:
        w = width if width > 0 else scene.camera.width
        h = height if height > 0 else scene.camera.height
        scene = scene.with_camera(resized_camera(scene.camera, w, h))
    view = render([scene], device=device, named=True).numpy(0)
    objects = [_as_detected(gt_object(scene, i), scene.camera)
               for i in visible_objects(scene, view.instance, named_map=view.named)]
    return SimFrame(int(seed), scene.camera, view.rgb, np.asarray(view.depth, np.float32), objects)


def _as_detected(obj: GroundedObject, camera: CameraModel) -> GroundedObject:
    """Ground truth as a detector reports it: score 1 and the box's 2D extent in pixels."""
    b2 = obj.box.project_2d(camera)
    return replace(obj, score=1.0, box_2d=None if b2 is None else tuple(float(v) for v in b2))


# ---------------------------------------------------------------------------------- messages
@dataclass
class FrameMessages:
    """The prepared messages of one frame (restamped and republished every tick)."""

    image: Image
    camera_info: CameraInfo
    depth: Image | None
    ground_truth: Object3DArray

    def restamp(self, stamp) -> None:
        for msg in (self.image, self.camera_info, self.depth, self.ground_truth):
            if msg is not None:
                msg.header.stamp = stamp


def frame_messages(frame: SimFrame, *, frame_id: str = DEFAULT_FRAME_ID,
                   with_depth: bool = True) -> FrameMessages:
    return FrameMessages(
        image=rgb_to_image(frame.rgb, Header(frame_id=frame_id)),
        camera_info=camera_to_camera_info(frame.camera, Header(frame_id=frame_id)),
        depth=depth_to_image(frame.depth, Header(frame_id=frame_id)) if with_depth else None,
        ground_truth=objects_to_array(frame.objects, Header(frame_id=frame_id)))


# ---------------------------------------------------------------------------------- node
FrameSource = Callable[[int], SimFrame]


class SimCameraNode(Node):
    """Publishes sim scenes at `rate_hz`; a new scene (seed + 1) every `scene_period_sec` (0 = fixed)."""

    def __init__(self, *, frame_source: FrameSource | None = None, node_name: str = "sim_camera",
                 **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        self.declare_parameter("seed", DEFAULT_SEED)          # first scene's seed
        self.declare_parameter("scene_period_sec", 0.0)       # s per scene; 0 = one fixed scene
        self.declare_parameter("rate_hz", 5.0)                # publish rate, Hz
        self.declare_parameter("width", 0)                    # px; 0 = the scene's random camera
        self.declare_parameter("height", 0)                   # px; 0 = the scene's random camera
        self.declare_parameter("frame_id", DEFAULT_FRAME_ID)
        self.declare_parameter("publish_depth", True)
        self.declare_parameter("qos_reliability", "best_effort")  # image/camera_info/depth
        self.declare_parameter("qos_depth", 5)
        self.declare_parameter("device", "cpu")               # renderer device: cpu | cuda

        p = {name: self.get_parameter(name).value for name in (
            "seed", "scene_period_sec", "rate_hz", "width", "height", "frame_id", "publish_depth",
            "qos_reliability", "qos_depth", "device")}
        if not float(p["rate_hz"]) > 0:
            raise ValueError(f"rate_hz must be > 0, got {p['rate_hz']}")
        if float(p["scene_period_sec"]) < 0:
            raise ValueError(f"scene_period_sec must be >= 0 (0 = fixed scene), got {p['scene_period_sec']}")
        if int(p["width"]) < 0 or int(p["height"]) < 0:
            raise ValueError(f"width/height must be >= 0 (0 = scene camera), got {p['width']}x{p['height']}")
        if not str(p["frame_id"]):
            raise ValueError("frame_id must not be empty")
        self.seed = int(p["seed"])
        self.period = float(p["scene_period_sec"])
        self.frame_id = str(p["frame_id"])
        self.with_depth = bool(p["publish_depth"])
        width, height, device = int(p["width"]), int(p["height"]), str(p["device"])
        self._source: FrameSource = frame_source or (
            lambda seed: render_sim_frame(seed, width=width, height=height, device=device))

        qos = sensor_qos(str(p["qos_reliability"]), int(p["qos_depth"]))
        self.pub_image = self.create_publisher(Image, "image", qos)
        self.pub_info = self.create_publisher(CameraInfo, "camera_info", qos)
        self.pub_depth = self.create_publisher(Image, "depth", qos) if self.with_depth else None
        self.pub_truth = self.create_publisher(Object3DArray, "~/ground_truth", output_qos())

        self.published = 0
        self.render_failures = 0
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._ready: dict[int, FrameMessages] = {}   # scene index -> prepared messages
        self._failed: dict[int, float] = {}          # scene index -> time.monotonic() of failure
        self._on_air: int | None = None
        self._stop = False
        self._t0 = self.get_clock().now()
        self._worker = threading.Thread(target=self._render_loop, name="sim_camera_render", daemon=True)
        self._worker.start()
        self.timer = self.create_timer(1.0 / float(p["rate_hz"]), self._timer_callback)
        self.get_logger().info(f"sim camera: seed {self.seed}, {p['rate_hz']} Hz, "
                               f"{'fixed scene' if self.period == 0 else f'new scene every {self.period} s'}")

    # ------------------------------------------------------------------ scene schedule
    def _wanted_index(self) -> int:
        if self.period <= 0:
            return 0
        elapsed = (self.get_clock().now() - self._t0).nanoseconds * 1e-9
        return max(int(elapsed // self.period), 0)

    def _render_loop(self) -> None:
        while True:
            with self._lock:
                while not self._stop:
                    want = self._wanted_index()
                    # The current scene and, when scenes change, the next one (render ahead).
                    now = time.monotonic()
                    todo = [k for k in ((want, want + 1) if self.period > 0 else (want,))
                            if k not in self._ready and now - self._failed.get(k, -1e9) > RETRY_AFTER_SEC]
                    if todo:
                        break
                    self._wake.wait(timeout=0.1)
                if self._stop:
                    return
            k = todo[0]
            try:
                msgs = frame_messages(self._source(self.seed + k), frame_id=self.frame_id,
                                      with_depth=self.with_depth)
            except Exception as exc:  # noqa: BLE001 -- the worker must survive any renderer failure
                self.render_failures += 1
                self.get_logger().error(f"rendering scene seed {self.seed + k} failed: "
                                        f"{type(exc).__name__}: {exc}; keeping the previous scene")
                with self._lock:
                    self._failed[k] = time.monotonic()
                continue
            with self._lock:
                self._ready[k] = msgs
                self._failed.pop(k, None)
                keep = {k2 for k2 in self._ready if k2 >= self._wanted_index() - 1}
                self._ready = {k2: m for k2, m in self._ready.items() if k2 in keep}

    # ------------------------------------------------------------------ publishing
    def _timer_callback(self) -> None:
        want = self._wanted_index()
        with self._lock:
            usable = [k for k in self._ready if k <= want]
            if not usable:
                return  # first scene still rendering
            k = max(usable)
            msgs = self._ready[k]
            self._wake.notify()
        if k != self._on_air:
            self._on_air = k
            self.get_logger().info(f"on air: scene seed {self.seed + k} "
                                   f"({len(msgs.ground_truth.objects)} visible objects)")
        msgs.restamp(self.get_clock().now().to_msg())
        try:
            self.pub_image.publish(msgs.image)
            self.pub_info.publish(msgs.camera_info)
            if self.pub_depth is not None and msgs.depth is not None:
                self.pub_depth.publish(msgs.depth)
            self.pub_truth.publish(msgs.ground_truth)
            self.published += 1
        except RuntimeError as exc:  # rclpy's RCLError (e.g. during shutdown): skip this tick
            self.get_logger().warning(f"publish failed: {exc}")

    def destroy_node(self) -> None:
        with self._lock:
            self._stop = True
            self._wake.notify_all()
        if self._worker.is_alive():
            self._worker.join(timeout=5.0)
        super().destroy_node()


def main(args: list[str] | None = None) -> None:
    rclpy.init(args=args)
    node = None
    try:
        node = SimCameraNode()
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()


if __name__ == "__main__":
    main()
