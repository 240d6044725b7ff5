"""`spatial_query_node`: a lifecycle node that answers spatial questions about the camera stream.

Threads: image/camera_info/depth callbacks (one mutually exclusive group) only validate and pair
into a FrameBuffer; the `spatial_query` service (reentrant group) hands the question to a single
worker thread and waits with a timeout, so a 30 Hz camera keeps flowing while a query runs.
"""
from __future__ import annotations

import math
import threading
import time
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header
from visualization_msgs.msg import MarkerArray

from n3d_ros.msg import Object3DArray
from n3d_ros.srv import SpatialQuery

from ..core.camera import CameraModel
from ..core.objects import GroundedObject
from ..pipeline.types import CameraFrame, QueryResult
from . import params as node_params
from .conversions import (camera_info_to_model, check_depth, check_image, depth_to_metres, image_to_rgb,
                          objects_to_array, objects_to_msgs, rgb_to_image, size_mismatch,
                          stamp_to_ns)
from .diagnostics import NodeHealth, health_to_array
from .frame_buffer import BufferStats, FrameBuffer, FramePair
from .markers import objects_to_markers
from .qos import diagnostics_qos, output_qos, sensor_qos
from .tf_support import TF_AVAILABLE, TfTransformer, needs_transform, transform_objects, unavailable_message

FIRST_FRAME_WAIT_SEC = 2.0   # a request right after start-up waits this long for a first frame
MAX_FRAME_ID_CHARS = 256


class QueryPipeline(Protocol):
    """What the node needs of n3d_ros.pipeline.spatial_pipeline.SpatialPipeline."""

    backend_name: str
    device: str
    geometry_backend: str

    def warmup(self) -> None: ...

    def query(self, frame: CameraFrame, question: str, targets: Sequence[str] = (), *,
              detect_only: bool = False) -> QueryResult: ...

    def close(self) -> None: ...


PipelineFactory = Callable[[node_params.NodeParams], QueryPipeline]


def default_pipeline_factory(p: node_params.NodeParams) -> QueryPipeline:
    """The real pipeline (imported here: it pulls in torch, which the node module itself does not)."""
    from ..pipeline.spatial_pipeline import SpatialPipeline
    return SpatialPipeline(pipeline_config(p))


def pipeline_config(p: node_params.NodeParams):
    """NodeParams -> PipelineConfig (raises ValueError on values the pipeline refuses)."""
    from ..pipeline.spatial_pipeline import PipelineConfig
    return PipelineConfig(backend=p.backend, model_dir=p.model_dir, geometry=p.geometry_backend,
                          device=p.device, precision=p.precision, engine_cache_dir=p.engine_cache_dir,
                          max_new_tokens=p.max_new_tokens, ensemble=p.ensemble)


def request_problem(question: str, targets: Sequence[str], target_frame: str,
                    p: node_params.NodeParams) -> str | None:
    """Why a request is refused before any inference, or None when it is acceptable."""
    if not question.strip():
        return "question is empty; ask e.g. 'How far is the mug from the laptop?'"
    if len(question) > p.max_question_chars:
        return (f"question has {len(question)} characters, the limit is {p.max_question_chars} "
                "(parameter max_question_chars); shorten it")
    if len(targets) > p.max_targets:
        return f"{len(targets)} targets given, the limit is {p.max_targets} (parameter max_targets)"
    for i, t in enumerate(targets):
        if not t.strip():
            return f"targets[{i}] is empty; remove it or name an object"
        if len(t) > p.max_target_chars:
            return (f"targets[{i}] has {len(t)} characters, the limit is {p.max_target_chars} "
                    "(parameter max_target_chars)")
    if len(target_frame) > MAX_FRAME_ID_CHARS or any(c.isspace() for c in target_frame):
        return f"target_frame {target_frame[:64]!r} is not a valid frame id (no spaces, <= {MAX_FRAME_ID_CHARS} chars)"
    return None


@dataclass
class _QueryOutcome:
    result: QueryResult
    rgb: np.ndarray | None = None        # (H, W, 3) uint8, for debug_image
    camera: CameraModel | None = None


class SpatialQueryNode(LifecycleNode):
    def __init__(self, *, pipeline_factory: PipelineFactory | None = None,
                 node_name: str = "spatial_query_node", **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        # Only unit tests pass a factory; parameters and requests cannot reach it.
        self._pipeline_factory = pipeline_factory or default_pipeline_factory
        for name, default in node_params.defaults().items():
            # dynamic_typing: a YAML `1` for a float must reach our validator, not a type error.
            self.declare_parameter(name, default, ParameterDescriptor(dynamic_typing=True))
        self.params = node_params.NodeParams()
        self._lock = threading.Lock()
        self._counters = {"queries": 0, "queries_failed": 0, "queries_timed_out": 0, "rejected_depth": 0}
        self._last_latency = -1.0
        self._last_error = ""
        self._load_error = ""
        self._last_frame_mono: float | None = None
        self._pipeline: QueryPipeline | None = None
        self._worker: ThreadPoolExecutor | None = None
        self._buffer: FrameBuffer[Image, CameraModel] | None = None
        self._tf: TfTransformer | None = None
        self._state = "unconfigured"
        self._subscriptions_active: list[Any] = []   # image, camera_info[, depth]
        self._publishers_active: list[Any] = []
        self._service = None
        self._objects_pub = self._markers_pub = self._debug_pub = None
        self._diag_pub = None
        self._diag_timer = None
        self._sensor_group = MutuallyExclusiveCallbackGroup()
        self._service_group = ReentrantCallbackGroup()
        self._timer_group = MutuallyExclusiveCallbackGroup()
        self._draw_boxes = None
        self._autostart_timer = None
        if self.get_parameter("autostart").value is True:
            # Own group: loading models can take minutes and must not hold up /diagnostics.
            self._autostart_timer = self.create_timer(0.01, self._autostart_callback,
                                                      callback_group=MutuallyExclusiveCallbackGroup())

    # ------------------------------------------------------------------ lifecycle
    def _autostart_callback(self) -> None:
        self._autostart_timer.cancel()
        self.destroy_timer(self._autostart_timer)
        if self.trigger_configure() == TransitionCallbackReturn.SUCCESS:
            self.trigger_activate()

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        values = {name: self.get_parameter(name).value for name in node_params.param_names()}
        try:
            self.params = node_params.from_mapping(values)
            if self._pipeline_factory is default_pipeline_factory:
                pipeline_config(self.params)
        except (ValueError, ImportError) as exc:
            self.get_logger().error(f"configure failed: {exc}")
            return TransitionCallbackReturn.FAILURE
        p = self.params
        self._buffer = FrameBuffer(p.buffer_size, int(p.sync_slop_sec * 1e9), check_pair=size_mismatch)
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", diagnostics_qos())
        self._diag_timer = self.create_timer(p.diagnostics_period_sec, self._diagnostics_callback,
                                             callback_group=self._timer_group)
        self.get_logger().info(f"configured: backend={p.backend} device={p.device} "
                               f"inputs QoS {p.image_reliability}/{p.image_qos_depth}")
        self._state = "inactive"
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        p = self.params
        t0 = time.monotonic()
        try:
            self._pipeline = self._pipeline_factory(p)
            if p.warmup:
                self._pipeline.warmup()
        except Exception as exc:  # noqa: BLE001 - load boundary: any loader bug fails the transition, not the node
            self._load_error = f"{type(exc).__name__}: {exc}"
            self.get_logger().error(f"activate failed, models not loaded: {self._load_error}; fix the model "
                                    "parameters (backend, model_dir, device) and activate again")
            self._close_pipeline()
            return TransitionCallbackReturn.FAILURE
        self._load_error = ""
        self.get_logger().info(f"models ready in {time.monotonic() - t0:.1f} s: backend="
                               f"{self._pipeline.backend_name} device={self._pipeline.device} "
                               f"geometry={self._pipeline.geometry_backend}")
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="n3d_query")
        qos_in = sensor_qos(p.image_reliability, p.image_qos_depth)
        sub = self.create_subscription
        self._subscriptions_active = [
            sub(Image, "image", self._image_callback, qos_in, callback_group=self._sensor_group),
            sub(CameraInfo, "camera_info", self._info_callback, qos_in, callback_group=self._sensor_group),
        ]
        if p.use_depth:
            self._subscriptions_active.append(sub(Image, "depth", self._depth_callback, qos_in,
                                                  callback_group=self._sensor_group))
        self._objects_pub = self.create_publisher(Object3DArray, "objects", output_qos())
        self._markers_pub = self.create_publisher(MarkerArray, "markers", output_qos())
        self._publishers_active = [self._objects_pub, self._markers_pub]
        if p.publish_debug_image:
            self._debug_pub = self.create_publisher(Image, "debug_image", output_qos(depth=2))
            self._publishers_active.append(self._debug_pub)
        if TF_AVAILABLE:
            self._tf = TfTransformer(self)
        self._service = self.create_service(SpatialQuery, "spatial_query", self._query_callback,
                                            callback_group=self._service_group)
        self._state = "active"
        self.get_logger().info(f"active: listening on {self._topic(0)} + {self._topic(1)}, "
                               f"service {self._service.service_name}")
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release_active()
        self.get_logger().info("deactivated: models freed")
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release_configured()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release_active()
        self._release_configured()
        self._state = "finalized"
        return TransitionCallbackReturn.SUCCESS

    def close(self) -> None:
        """Free everything (models included) without a lifecycle transition, e.g. at process exit."""
        self._release_active()
        self._release_configured()

    def _release_active(self) -> None:
        if self._service is not None:
            self.destroy_service(self._service)
            self._service = None
        for subscription in self._subscriptions_active:
            self.destroy_subscription(subscription)
        for publisher in self._publishers_active:
            self.destroy_publisher(publisher)
        self._subscriptions_active, self._publishers_active = [], []
        self._objects_pub = self._markers_pub = self._debug_pub = None
        if self._state == "active":
            self._state = "inactive"
        if self._tf is not None:
            self._tf.close()
            self._tf = None
        if self._worker is not None:
            # Queued queries are cancelled; a running one is awaited so the models are not freed under it
            # (its late result is discarded: its service call already gave up or will see the cancellation).
            self._worker.shutdown(wait=True, cancel_futures=True)
            self._worker = None
        self._close_pipeline()
        if self._buffer is not None:
            self._buffer.clear()

    def _release_configured(self) -> None:
        if self._diag_timer is not None:
            self.destroy_timer(self._diag_timer)
            self._diag_timer = None
        if self._diag_pub is not None:
            self.destroy_publisher(self._diag_pub)
            self._diag_pub = None
        self._buffer = None
        self._state = "unconfigured"

    def _close_pipeline(self) -> None:
        pipe, self._pipeline = self._pipeline, None
        if pipe is not None:
            pipe.close()

    # ------------------------------------------------------------------ inputs
    def _warn(self, text: str) -> None:
        throttle = self.params.log_throttle_sec
        if throttle > 0:
            self.get_logger().warning(text, throttle_duration_sec=throttle)
        else:
            self.get_logger().warning(text)

    def _admit_kwargs(self) -> dict[str, int]:
        return {"now_ns": self.get_clock().now().nanoseconds,
                "max_age_ns": int(self.params.max_frame_age_sec * 1e9)}

    def _image_callback(self, msg: Image) -> None:
        buffer = self._buffer
        if buffer is None:
            return
        try:
            check_image(msg)
        except ValueError as exc:
            buffer.count_rejected(f"image: {exc}")
            self._warn(f"rejected image on {self._topic(0)}: {exc}")
            return
        self._last_frame_mono = time.monotonic()
        if not buffer.add_image(stamp_to_ns(msg.header.stamp), msg, **self._admit_kwargs()):
            self._warn(f"stale image (older than max_frame_age_sec={self.params.max_frame_age_sec} s): "
                       "check clocks / use_sim_time")
        elif buffer.last_rejection:
            self._warn(f"rejected frame: {buffer.last_rejection}")
            buffer.last_rejection = ""

    def _info_callback(self, msg: CameraInfo) -> None:
        buffer = self._buffer
        if buffer is None:
            return
        try:
            camera = camera_info_to_model(msg)
        except ValueError as exc:
            buffer.count_rejected(f"camera_info: {exc}")
            self._warn(f"rejected camera_info on {self._topic(1)}: {exc}")
            return
        if not buffer.add_info(stamp_to_ns(msg.header.stamp), camera, **self._admit_kwargs()):
            self._warn("stale camera_info: check clocks / use_sim_time")
        elif buffer.last_rejection:
            self._warn(f"rejected frame: {buffer.last_rejection}")
            buffer.last_rejection = ""

    def _depth_callback(self, msg: Image) -> None:
        buffer = self._buffer
        if buffer is None:
            return
        try:
            check_depth(msg)
        except ValueError as exc:
            self._count("rejected_depth")
            self._warn(f"rejected depth: {exc}")
            return
        buffer.add_depth(stamp_to_ns(msg.header.stamp), msg, **self._admit_kwargs())

    # ------------------------------------------------------------------ service
    def _query_callback(self, request: SpatialQuery.Request,
                        response: SpatialQuery.Response) -> SpatialQuery.Response:
        t0 = time.monotonic()
        self._count("queries")
        try:
            self._answer(request, response)
        except QueryRefused as exc:
            response.success = False
            response.message = str(exc)
        except Exception as exc:  # noqa: BLE001 - callback boundary: a bug must cost one answer, not the node
            self.get_logger().error(f"internal error answering a query: {type(exc).__name__}: {exc}")
            response.success = False
            response.message = (f"internal error in spatial_query_node ({type(exc).__name__}: {exc}); "
                                "see the node log and report it")
        if not response.success:
            self._count("queries_failed")
            with self._lock:
                self._last_error = response.message
            self.get_logger().info(f"query refused/failed: {response.message}")
        response.latency_sec = float(time.monotonic() - t0)
        with self._lock:
            self._last_latency = response.latency_sec
        return response

    def _answer(self, request: SpatialQuery.Request, response: SpatialQuery.Response) -> None:
        p = self.params
        question, targets = request.question, list(request.targets)
        problem = request_problem(question, targets, request.target_frame, p)
        if problem:
            raise QueryRefused(problem)
        pipeline, worker, buffer = self._pipeline, self._worker, self._buffer
        if pipeline is None or worker is None or buffer is None:
            raise QueryRefused("node is not active; activate it (lifecycle) or check its log for load errors")
        timeout = float(request.timeout_sec)
        if not math.isfinite(timeout) or timeout <= 0:
            timeout = p.default_timeout_sec
        deadline = time.monotonic() + timeout
        pair = self._pick_frame(buffer, stamp_to_ns(request.stamp), min(timeout, FIRST_FRAME_WAIT_SEC))
        image_frame = pair.image.header.frame_id
        transform = needs_transform(request.target_frame, image_frame)
        if transform and self._tf is None:
            raise QueryRefused(unavailable_message(image_frame))
        try:
            future: Future = worker.submit(self._run_query, pair, question, targets)
        except RuntimeError:  # the worker was shut down by a deactivation that raced this request
            raise QueryRefused("node was deactivated; activate it again") from None
        try:
            outcome: _QueryOutcome = future.result(timeout=max(0.0, deadline - time.monotonic()))
        except CancelledError:
            raise QueryRefused("node was deactivated before the query ran; activate it again") from None
        except FutureTimeout:
            future.cancel()  # if still queued; a running one finishes and is ignored
            self._count("queries_timed_out")
            raise QueryRefused(f"timed out after {timeout:.1f} s waiting for the model; raise timeout_sec "
                               "(or parameter default_timeout_sec), or use a faster device/backend") from None
        result = outcome.result
        header = Header(stamp=pair.image.header.stamp, frame_id=image_frame)
        response.header = header
        if not result.success:
            raise QueryRefused(result.message or "the model gave no answer; rephrase the question")
        objects = result.objects
        if transform:
            assert self._tf is not None
            try:
                R, t = self._tf.lookup(request.target_frame, image_frame, pair.stamp_ns, p.tf_timeout_sec)
            except LookupError as exc:
                raise QueryRefused(f"{exc}; check that TF publishes '{request.target_frame}' "
                                   f"or request target_frame ''") from None
            objects = transform_objects(objects, R, t)
            header = Header(stamp=pair.image.header.stamp, frame_id=request.target_frame)
            response.header = header
        response.success = True
        response.message = result.message
        response.answer = result.answer
        response.reasoning = result.reasoning
        response.objects = objects_to_msgs(objects)
        self._publish(objects, header, outcome, pair)

    def _pick_frame(self, buffer: FrameBuffer, stamp_ns: int, wait_sec: float) -> FramePair:
        end = time.monotonic() + wait_sec
        while True:
            pair = buffer.get(stamp_ns or None)
            if pair is not None:
                return pair
            if stamp_ns or time.monotonic() >= end:
                break
            time.sleep(0.02)
        stamps = buffer.stamps()
        if stamp_ns:
            listed = ", ".join(f"{s / 1e9:.3f}" for s in stamps) or "none"
            raise QueryRefused(f"no frame within sync_slop_sec={self.params.sync_slop_sec} of stamp "
                               f"{stamp_ns / 1e9:.3f}; buffered stamps: {listed} (zero stamp = newest)")
        stats = buffer.stats()
        topics = f"{self._topic(0)} and {self._topic(1)}"
        if stats.images == 0 or stats.infos == 0:
            raise QueryRefused(f"no camera frame received yet on {topics}; check the camera is publishing and "
                               f"QoS reliability (parameter image_reliability={self.params.image_reliability}) "
                               "matches")
        raise QueryRefused(f"no usable image+camera_info pair on {topics} ({stats.images} images, {stats.infos} "
                           f"camera_infos, {stats.rejected} rejected, {stats.stale} stale); check that stamps "
                           f"match within sync_slop_sec={self.params.sync_slop_sec}"
                           + (f"; last rejection: {buffer.last_rejection}" if buffer.last_rejection else ""))

    def _run_query(self, pair: FramePair, question: str, targets: list[str]) -> _QueryOutcome:
        """Worker thread: convert the chosen frame and ask the pipeline."""
        try:
            rgb = image_to_rgb(pair.image)
        except ValueError as exc:
            return _QueryOutcome(QueryResult(False, f"image could not be decoded: {exc}"))
        camera = pair.info
        frame = CameraFrame(image=rgb, camera=camera, stamp_ns=pair.stamp_ns,
                            frame_id=pair.image.header.frame_id, depth=self._depth_of(pair, camera))
        pipeline = self._pipeline
        if pipeline is None:
            return _QueryOutcome(QueryResult(False, "node was deactivated during the query; activate it again"))
        try:
            result = pipeline.query(frame, question, targets)
        except ValueError as exc:
            result = QueryResult(False, f"the model refused this frame: {exc}")
        except Exception as exc:  # noqa: BLE001 - worker boundary: the node must survive any model bug
            self.get_logger().error(f"model failure: {type(exc).__name__}: {exc}")
            result = QueryResult(False, f"model failure ({type(exc).__name__}: {exc}); see the node log; "
                                        "if it repeats, deactivate/activate the node or choose another device")
        return _QueryOutcome(result, rgb, camera)

    def _depth_of(self, pair: FramePair, camera: CameraModel) -> np.ndarray | None:
        if pair.depth is None:
            return None
        try:
            depth = depth_to_metres(pair.depth)
        except ValueError as exc:
            reason = str(exc)
        else:
            if depth.shape != (camera.height, camera.width):
                reason = (f"depth is {depth.shape[1]}x{depth.shape[0]} but the image is "
                          f"{camera.width}x{camera.height}; register depth to the colour image")
            elif not np.isfinite(depth).any():
                reason = "depth has no valid (finite, positive) values"
            else:
                return depth
        self._count("rejected_depth")
        self._warn(f"ignoring depth, using the geometry encoder: {reason}")
        return None

    def _publish(self, objects: list[GroundedObject], header: Header, outcome: _QueryOutcome,
                 pair: FramePair) -> None:
        # Local copies: a deactivation may clear the attributes while this runs.
        objects_pub, markers_pub, debug_pub = self._objects_pub, self._markers_pub, self._debug_pub
        if objects_pub is None or markers_pub is None:
            return
        objects_pub.publish(objects_to_array(objects, header))
        markers_pub.publish(objects_to_markers(objects, header, namespace=self.params.marker_namespace))
        if debug_pub is None or outcome.rgb is None or outcome.camera is None:
            return
        draw = self._box_drawer()
        if draw is None:
            return
        # Drawn from the optical-frame result (before any TF), on the image's own header.
        try:
            drawn = draw(outcome.rgb, outcome.camera, outcome.result.objects)
        except ValueError as exc:
            self._warn(f"debug_image not drawn: {exc}")
            return
        debug_pub.publish(rgb_to_image(np.asarray(drawn, dtype=np.uint8), pair.image.header))

    def _box_drawer(self):
        if self._draw_boxes is None:
            try:
                from ..core.export import draw_boxes
            except ImportError as exc:
                self._warn(f"debug_image disabled: n3d_ros.core.export.draw_boxes not importable ({exc})")
                return None
            self._draw_boxes = draw_boxes
        return self._draw_boxes

    # ------------------------------------------------------------------ diagnostics
    def _diagnostics_callback(self) -> None:
        if self._diag_pub is None:
            return
        header = Header(stamp=self.get_clock().now().to_msg())
        health = self.health()
        self._diag_pub.publish(health_to_array(health, header, name=self.get_fully_qualified_name(),
                                               hardware_id=health.device))

    def _lifecycle_state(self) -> str:
        """rclpy's own state label ("activating" until on_activate has returned and the transition is
        complete; a caller that saw "active" may then deactivate), else our record of it."""
        machine = getattr(self, "_state_machine", None)
        try:
            return str(machine.current_state[1])
        except (AttributeError, IndexError, TypeError):
            return self._state

    def health(self) -> NodeHealth:
        pipe = self._pipeline
        with self._lock:
            counters = dict(self._counters)
            last_latency, last_error = self._last_latency, self._last_error
        since = -1.0 if self._last_frame_mono is None else time.monotonic() - self._last_frame_mono
        return NodeHealth(
            state=self._lifecycle_state(), buffer=self._buffer.stats() if self._buffer else BufferStats(),
            rejected_depth=counters["rejected_depth"], queries=counters["queries"],
            queries_failed=counters["queries_failed"], queries_timed_out=counters["queries_timed_out"],
            last_latency_sec=last_latency, last_error=last_error,
            backend=pipe.backend_name if pipe else self.params.backend,
            device=pipe.device if pipe else self.params.device,
            geometry_backend=pipe.geometry_backend if pipe else self.params.geometry_backend,
            seconds_since_frame=since, load_error=self._load_error)

    # ------------------------------------------------------------------ helpers
    def _count(self, key: str) -> None:
        with self._lock:
            self._counters[key] += 1

    def _topic(self, index: int) -> str:
        subs = self._subscriptions_active
        return subs[index].topic_name if len(subs) > index else ("image", "camera_info")[index]


class QueryRefused(Exception):
    """A request that gets success=false; the message says what to do."""


def _finish(step: Callable[[], Any]) -> None:
    try:
        step()
    except KeyboardInterrupt:  # the Ctrl-C that ended spin() can surface once more here; steps are idempotent
        step()


def main(args: list[str] | None = None) -> None:
    rclpy.init(args=args)
    node = None
    try:
        node = SpatialQueryNode()
        # 4 threads: sensor callbacks, the blocking service callback, timers and TF never starve each other.
        executor = MultiThreadedExecutor(num_threads=4)
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        # No executor.shutdown(): it joins callback threads, and one may still be loading a model.
        if node is not None:
            _finish(node.close)
            _finish(node.destroy_node)
        _finish(rclpy.try_shutdown)


if __name__ == "__main__":
    main()
