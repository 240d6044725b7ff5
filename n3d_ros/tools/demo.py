"""The main job: synthetic camera + spatial_query_node with the built-in model, a few questions.

    python -m n3d_ros.tools.demo [--seed 1000123] [--questions 6] [--depth]

Starts `sim_camera_node` and `spatial_query_node` as separate ROS 2 processes (localhost-only DDS
on their own domain), asks questions generated for the scene on screen over the real
`/spatial_query` service, and prints each answer next to the simulator's ground truth.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from contextlib import ExitStack

import numpy as np

WAIT_FOR_SERVICE_SEC = 180.0   # model load + warm-up on a cold CPU machine
QUERY_TIMEOUT_SEC = 30.0


def ros_environment() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")   # never multicast off the machine
    env.setdefault("ROS_DOMAIN_ID", str(30 + os.getpid() % 60))
    return env


def scene_questions(seed: int, n: int, width: int, height: int):
    """Questions about what the sim camera shows (same seed and image size as the node sees)."""
    from ..ros.sim_camera_node import resized_camera
    from ..sim.questions import make_questions, visible_objects
    from ..sim.render import render
    from ..sim.world import generate_scene
    scene = generate_scene(seed)
    if width or height:
        scene = scene.with_camera(resized_camera(scene.camera, width or scene.camera.width,
                                                 height or scene.camera.height))
    view = render([scene], named=True).numpy(0)
    visible = list(visible_objects(scene, view.instance, named_map=view.named))
    rng = np.random.default_rng(seed)
    picked, seen = [], set()
    for q in make_questions(scene, visible, rng, n=4 * n):
        if q.spec.kind not in seen:  # one question per kind: a tour of what the node answers
            seen.add(q.spec.kind)
            picked.append(q)
        if len(picked) == n:
            break
    return [scene.objects[i].label for i in visible], picked


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=1_000_124, help="scene seed (held out from training)")
    ap.add_argument("--questions", type=int, default=6)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--depth", action="store_true", help="publish depth too (RGB-D geometry)")
    ap.add_argument("--device", default="auto", help="model device: auto|cpu|cuda")
    args = ap.parse_args(argv)

    env = ros_environment()
    os.environ.update({k: env[k] for k in ("ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_DOMAIN_ID")})
    print(f"ROS_DOMAIN_ID={env['ROS_DOMAIN_ID']} ROS_AUTOMATIC_DISCOVERY_RANGE={env['ROS_AUTOMATIC_DISCOVERY_RANGE']}",
          flush=True)
    labels, questions = scene_questions(args.seed, args.questions, args.width, args.height)
    print(f"scene {args.seed}: {len(labels)} visible objects: " + ", ".join(labels), flush=True)

    py = sys.executable
    cam_cmd = [py, "-m", "n3d_ros.ros.sim_camera_node", "--ros-args", "-p", f"seed:={args.seed}",
               "-p", f"width:={args.width}", "-p", f"height:={args.height}",
               "-p", f"publish_depth:={'true' if args.depth else 'false'}", "-p", "rate_hz:=5.0",
               "-p", "qos_reliability:=reliable"]
    # Reliable image transport on both ends: over loopback UDP (no shared memory with these wheels) a
    # best-effort 640x480 image loses a fragment most of the time and with it the whole frame.
    node_cmd = [py, "-m", "n3d_ros.ros.spatial_query_node", "--ros-args", "-p", f"device:={args.device}",
                "-p", "image_reliability:=reliable"]
    import rclpy

    from ..ros.query_client import SpatialQueryClient, build_request, format_table, response_to_dict
    with ExitStack() as stack:
        procs = []
        for cmd in (cam_cmd, node_cmd):
            p = subprocess.Popen(cmd, env=env)
            procs.append(p)
            stack.callback(_stop, p)
        rclpy.init()
        stack.callback(rclpy.try_shutdown)
        node = rclpy.create_node("n3d_demo")
        stack.callback(node.destroy_node)
        client = SpatialQueryClient(node, "/spatial_query")
        t0 = time.time()
        while not client.wait(2.0):
            if any(p.poll() is not None for p in procs):
                print("a node exited during start-up; see its log above", file=sys.stderr)
                return 1
            if time.time() - t0 > WAIT_FOR_SERVICE_SEC:
                print("spatial_query service did not come up", file=sys.stderr)
                return 1
        print(f"/spatial_query is up after {time.time() - t0:.1f} s\n", flush=True)
        answered = right = 0
        for q in questions:
            res = None
            for _ in range(10):  # the node may still be waiting for its first camera frame
                res = client.call(build_request(q.text, timeout_sec=QUERY_TIMEOUT_SEC),
                                  timeout_sec=QUERY_TIMEOUT_SEC + 5)
                if res is not None and (res.success or "no camera frame" not in res.message):
                    break
                time.sleep(1.0)
            print(f"Q: {q.text}")
            if res is None:
                print("   (no response)\n")
                continue
            answered += bool(res.success)
            ok = res.success and _matches_truth(q, res.answer, labels)
            right += ok
            print("   " + format_table(response_to_dict(res)).replace("\n", "\n   "))
            print(f"   ground truth: {q.answer.text}  [{'right' if ok else 'wrong'}]\n", flush=True)
        print(f"{answered}/{len(questions)} questions answered (success=true), {right} right "
              f"(numbers within 10 %, categories exact).")
        return 0 if answered else 1


def _matches_truth(question, answer: str, labels: list[str]) -> bool:
    """Same scoring as the benchmark (n3d_ros.tools.eval_spatial), applied to the answer text."""
    from ..core.metrics import answer_correct
    from ..pipeline.types import QueryResult
    from .eval_spatial import EvalQuestion, predicted_value, truth_for_record
    eq = EvalQuestion(question.text, question.spec.kind, question.spec.targets, question.answer.value)
    predicted = predicted_value(QueryResult(True, answer=answer), eq, labels)
    return answer_correct(predicted, truth_for_record(eq.truth, eq.kind))


def _stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.send_signal(signal.SIGINT)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()


if __name__ == "__main__":
    sys.exit(main())
