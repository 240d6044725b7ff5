"""Record sim-camera frames straight into a rosbag2, no running ROS graph needed.

`python -m n3d_ros.tools.record_bag OUT_DIR --scenes 3 --frames-per-scene 2` (console script
`n3d-record-bag`) writes the topics the live `sim_camera_node` publishes in the root namespace:
    /image (rgb8)  /camera_info  /depth (32FC1 metres)  /sim_camera/ground_truth (Object3DArray)
Messages are built with the same functions the node uses and serialized with rclpy (identical CDR
to a live recording); `rosbags` writes the bag (MCAP by default, or sqlite3), with our
Object3D/Object3DArray definitions registered in its typestore from the package's .msg files.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from rclpy.serialization import serialize_message
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from rosbags.typesys.store import Typestore

from ..ros.conversions import ns_to_stamp
from ..ros.sim_camera_node import DEFAULT_FRAME_ID, DEFAULT_SEED, frame_messages, render_sim_frame

INTERFACE_PACKAGE = "n3d_ros"
TOPICS = {  # role -> (recorded topic, message type)
    "image": ("/image", "sensor_msgs/msg/Image"),
    "camera_info": ("/camera_info", "sensor_msgs/msg/CameraInfo"),
    "depth": ("/depth", "sensor_msgs/msg/Image"),
    "ground_truth": ("/sim_camera/ground_truth", f"{INTERFACE_PACKAGE}/msg/Object3DArray"),
}
STORAGES = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}


def interface_msg_dir() -> Path:
    """Where Object3D.msg lives: the installed interface share dir, else the source tree's msg/."""
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
        try:
            installed = Path(get_package_share_directory(INTERFACE_PACKAGE)) / "msg"
            if installed.is_dir():
                return installed
        except (PackageNotFoundError, LookupError, ValueError, OSError):
            pass  # not installed with an ament index (e.g. AMENT_PREFIX_PATH unset): use the source tree
    except ImportError:
        pass
    source = Path(__file__).resolve().parents[2] / "msg"
    if not source.is_dir():
        raise FileNotFoundError(f"cannot find the {INTERFACE_PACKAGE} .msg files (looked in the ament "
                                f"index and {source})")
    return source


def n3d_typestore(msg_dir: Path | None = None) -> Typestore:
    """ROS 2 Kilted typestore plus this package's message definitions."""
    store = get_typestore(Stores.ROS2_KILTED)
    folder = msg_dir or interface_msg_dir()
    types = {}
    for path in sorted(Path(folder).glob("*.msg")):
        types.update(get_types_from_msg(path.read_text(), f"{INTERFACE_PACKAGE}/msg/{path.stem}"))
    if not types:
        raise FileNotFoundError(f"no .msg files in {folder}")
    store.register(types)
    return store


@dataclass(frozen=True)
class RecordSummary:
    path: Path
    seeds: list[int]
    messages: dict[str, int]   # topic -> count
    duration_s: float          # span of the recorded stamps


def record_sim_bag(out_dir: str | Path, *, scenes: int = 3, frames_per_scene: int = 2,
                   first_seed: int = DEFAULT_SEED, rate_hz: float = 5.0, width: int = 0, height: int = 0,
                   with_depth: bool = True, storage: str = "mcap", frame_id: str = DEFAULT_FRAME_ID,
                   start_ns: int | None = None, device: str = "cpu") -> RecordSummary:
    """Render `scenes` scenes (seeds first_seed, first_seed+1, ...) and write each `frames_per_scene`
    times at `rate_hz`, stamps from `start_ns` (default: now). out_dir must not exist yet."""
    if scenes < 1 or frames_per_scene < 1:
        raise ValueError(f"need at least one scene and one frame per scene, got {scenes}, {frames_per_scene}")
    if not rate_hz > 0:
        raise ValueError(f"rate_hz must be > 0, got {rate_hz}")
    if storage not in STORAGES:
        raise ValueError(f"storage must be one of {', '.join(STORAGES)}, got {storage!r}")
    out = Path(out_dir)
    if out.exists():
        raise FileExistsError(f"{out} exists already; rosbag2 writers only create new bags")
    store = n3d_typestore()
    roles = [r for r in TOPICS if with_depth or r != "depth"]
    counts = {TOPICS[r][0]: 0 for r in roles}
    t = int(time.time_ns() if start_ns is None else start_ns)
    step = int(round(1e9 / rate_hz))
    seeds = list(range(int(first_seed), int(first_seed) + scenes))
    first = t
    with Writer(out, version=Writer.VERSION_LATEST, storage_plugin=STORAGES[storage]) as writer:
        conns = {r: writer.add_connection(TOPICS[r][0], TOPICS[r][1], typestore=store) for r in roles}
        for seed in seeds:
            msgs = frame_messages(render_sim_frame(seed, width=width, height=height, device=device),
                                  frame_id=frame_id, with_depth=with_depth)
            for _ in range(frames_per_scene):
                msgs.restamp(ns_to_stamp(t))
                for role in roles:
                    msg = getattr(msgs, role)
                    writer.write(conns[role], t, serialize_message(msg))
                    counts[TOPICS[role][0]] += 1
                t += step
    return RecordSummary(out, seeds, counts, (t - step - first) * 1e-9)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write sim-camera frames and ground truth to a rosbag2.")
    parser.add_argument("out_dir", help="bag directory to create (must not exist)")
    parser.add_argument("--scenes", type=int, default=3)
    parser.add_argument("--frames-per-scene", type=int, default=2)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="first scene seed")
    parser.add_argument("--rate", type=float, default=5.0, help="frame rate of the stamps, Hz")
    parser.add_argument("--width", type=int, default=0, help="image width; 0 = the scene's random camera")
    parser.add_argument("--height", type=int, default=0, help="image height; 0 = the scene's random camera")
    parser.add_argument("--no-depth", action="store_true", help="leave out the depth topic")
    parser.add_argument("--storage", choices=sorted(STORAGES), default="mcap")
    parser.add_argument("--frame-id", default=DEFAULT_FRAME_ID)
    parser.add_argument("--device", default="cpu", help="renderer device (cpu | cuda)")
    args = parser.parse_args(argv)
    try:
        summary = record_sim_bag(args.out_dir, scenes=args.scenes, frames_per_scene=args.frames_per_scene,
                                 first_seed=args.seed, rate_hz=args.rate, width=args.width,
                                 height=args.height, with_depth=not args.no_depth, storage=args.storage,
                                 frame_id=args.frame_id, device=args.device)
    except (ValueError, FileExistsError, FileNotFoundError) as exc:
        print(f"record_bag: {exc}", file=sys.stderr)
        return 2
    total = sum(summary.messages.values())
    print(f"wrote {summary.path} ({args.storage}): {total} messages, seeds {summary.seeds[0]}.."
          f"{summary.seeds[-1]}, {summary.duration_s:.2f} s")
    for topic, n in summary.messages.items():
        print(f"  {topic}: {n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
