"""Shared pytest fixtures and markers for n3d_ros.

ROS isolation: every ROS process started by a test must stay on localhost and on a domain of its own, so that
parallel test runs (pytest-xdist workers, other people's runs on the same machine) never see each other.
  * at import time this process gets ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST and a session ROS_DOMAIN_ID (kept if
    already set), for tests that use rclpy in-process;
  * the `ros_env` fixture gives a subprocess environment with a fresh ROS_DOMAIN_ID per test.
Markers: `@pytest.mark.requires_interfaces` skips a test when the generated n3d_ros.msg / n3d_ros.srv do not import.
"""
from __future__ import annotations

import importlib
import itertools
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# Domain ids handed to tests. Fast DDS maps a domain to UDP ports; 0..101 is the range that is safe on Linux.
DOMAIN_ID_RANGE = range(20, 100)
INTERFACES_MISSING_REASON = "n3d_ros.msg / n3d_ros.srv do not import: build them with `bash scripts/setup_env.sh`"

requires_interfaces = pytest.mark.requires_interfaces


def _domain_id_sequence() -> Iterator[int]:
    """Endless domain ids for this process, disjoint from every other xdist worker of the same run."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")  # "gw<k>" under pytest-xdist
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    count = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    # Worker k owns the ids whose offset is k modulo the worker count; within its share, the pid picks the
    # starting point so that two separate pytest runs on one machine are unlikely to start on the same id.
    own = [d for d in DOMAIN_ID_RANGE if (d - DOMAIN_ID_RANGE.start) % count == index % count]
    start = os.getpid() % len(own)
    for k in itertools.count():
        yield own[(start + k) % len(own)]


def _with_prefix(path_list: str | None, prefix: str) -> str:
    """`prefix` prepended to a colon-separated path list unless already in it."""
    parts = [p for p in (path_list or "").split(os.pathsep) if p]
    return os.pathsep.join(parts if prefix in parts else [prefix, *parts])


_DOMAIN_IDS = _domain_id_sequence()

# In-process rclpy tests read these when rclpy.init() runs.
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("ROS_DOMAIN_ID", str(next(_DOMAIN_IDS)))
# The ROS wheels never set AMENT_PREFIX_PATH; ament_index lookups (rmw, interfaces) need the venv prefix.
os.environ["AMENT_PREFIX_PATH"] = _with_prefix(os.environ.get("AMENT_PREFIX_PATH"), sys.prefix)


def _interfaces_import_error() -> str | None:
    try:
        importlib.import_module("n3d_ros.msg")
        importlib.import_module("n3d_ros.srv")
    except ImportError as exc:
        return f"{INTERFACES_MISSING_REASON} ({exc})"
    return None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"requires_interfaces: skip unless the generated interfaces import. "
                                       f"{INTERFACES_MISSING_REASON}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    marked = [item for item in items if item.get_closest_marker("requires_interfaces")]
    if not marked:
        return
    error = _interfaces_import_error()
    if error is not None:
        skip = pytest.mark.skip(reason=error)
        for item in marked:
            item.add_marker(skip)


@pytest.fixture
def ros_env() -> dict[str, str]:
    """Environment for a ROS subprocess: a copy of os.environ, localhost-only, with a domain id of its own."""
    env = dict(os.environ)
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env["ROS_DOMAIN_ID"] = str(next(_DOMAIN_IDS))
    env["AMENT_PREFIX_PATH"] = _with_prefix(env.get("AMENT_PREFIX_PATH"), sys.prefix)
    return env


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The project's shared folder (research notes, seeds, demo data): $N3D_SHARED_DIR or ../shared."""
    path = Path(os.environ.get("N3D_SHARED_DIR", REPO_ROOT.parent / "shared"))
    if not path.is_dir():
        pytest.skip(f"shared folder {path} not found (set N3D_SHARED_DIR)")
    return path


@pytest.fixture
def ros_context(monkeypatch: pytest.MonkeyPatch):
    """A private rclpy context for in-process nodes: localhost only, on this session's domain."""
    rclpy = pytest.importorskip("rclpy")
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    ctx = rclpy.context.Context()
    rclpy.init(context=ctx, domain_id=int(os.environ["ROS_DOMAIN_ID"]))
    yield ctx
    rclpy.shutdown(context=ctx)
