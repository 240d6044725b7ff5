"""A small bounded buffer that pairs image and camera_info (and optional depth) by stamp.

Pure Python and thread-safe: the node's subscription callbacks only call `add_*`, the query
worker calls `get`. Payloads are opaque (the node stores the validated messages and converts
only the pair a query uses, so a 30 Hz camera costs no pixel copies).
"""
from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Generic, TypeVar

ImageT = TypeVar("ImageT")
InfoT = TypeVar("InfoT")

# A stamp this far behind the newest one means the source restarted (bag loop, sim reset):
# start over instead of treating every new frame as out of order.
TIME_JUMP_RESET_NS = 1_000_000_000


@dataclass(frozen=True)
class FramePair(Generic[ImageT, InfoT]):
    stamp_ns: int
    image: ImageT
    info: InfoT
    depth: Any = None          # payload of the paired depth image, None when there is none


@dataclass(frozen=True)
class BufferStats:
    images: int = 0            # image messages offered
    infos: int = 0             # camera_info messages offered
    depths: int = 0            # depth messages offered
    paired: int = 0            # image+camera_info pairs formed
    dropped: int = 0           # pairs pushed out by newer ones without being used
    unpaired: int = 0          # image/camera_info/depth that never found a partner
    stale: int = 0             # messages older than the age limit
    rejected: int = 0          # pairs whose image and camera_info disagree (see `check_pair`)
    resets: int = 0            # time jumps backwards that cleared the buffer


class FrameBuffer(Generic[ImageT, InfoT]):
    """Keeps the newest `capacity` image+camera_info pairs whose stamps differ by <= `slop_ns`.

    check_pair(image, info) -> None when compatible, else a reason; incompatible pairs are
    counted as rejected and discarded.
    """

    def __init__(self, capacity: int, slop_ns: int, *,
                 check_pair: Callable[[ImageT, InfoT], str | None] | None = None) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        if slop_ns < 0:
            raise ValueError(f"slop_ns must be >= 0, got {slop_ns}")
        self.capacity = capacity
        self.slop_ns = slop_ns
        self._check_pair = check_pair
        self._lock = threading.Lock()
        # Unmatched halves wait here; a few more than the pair capacity, so a late partner still
        # finds them at 30 Hz.
        self._pending_images: deque[tuple[int, ImageT]] = deque()
        self._pending_infos: deque[tuple[int, InfoT]] = deque()
        self._depths: deque[tuple[int, Any]] = deque()
        self._pairs: deque[tuple[FramePair[ImageT, InfoT], bool]] = deque()  # (pair, used)
        self._pending_cap = capacity + 4
        self._newest_ns: int | None = None
        self._counts = dict.fromkeys(BufferStats.__dataclass_fields__, 0)
        self.last_rejection = ""

    # ------------------------------------------------------------------ input
    def add_image(self, stamp_ns: int, image: ImageT, *, now_ns: int | None = None,
                  max_age_ns: int = 0) -> bool:
        """Offer an image; True when accepted (paired now or waiting for its camera_info)."""
        with self._lock:
            self._counts["images"] += 1
            if not self._admit(stamp_ns, now_ns, max_age_ns):
                return False
            match = self._take_closest(self._pending_infos, stamp_ns)
            if match is None:
                self._push_pending(self._pending_images, (stamp_ns, image))
                return True
            self._form_pair(stamp_ns, image, match[1])
            return True

    def add_info(self, stamp_ns: int, info: InfoT, *, now_ns: int | None = None,
                 max_age_ns: int = 0) -> bool:
        with self._lock:
            self._counts["infos"] += 1
            if not self._admit(stamp_ns, now_ns, max_age_ns):
                return False
            match = self._take_closest(self._pending_images, stamp_ns)
            if match is None:
                self._push_pending(self._pending_infos, (stamp_ns, info))
                return True
            self._form_pair(match[0], match[1], info)
            return True

    def add_depth(self, stamp_ns: int, depth: Any, *, now_ns: int | None = None,
                  max_age_ns: int = 0) -> bool:
        with self._lock:
            self._counts["depths"] += 1
            if not self._admit(stamp_ns, now_ns, max_age_ns):
                return False
            self._push_pending(self._depths, (stamp_ns, depth))
            return True

    def count_rejected(self, reason: str = "") -> None:
        """Count a message the caller refused before offering it (malformed, bad values)."""
        with self._lock:
            self._counts["rejected"] += 1
            self.last_rejection = reason

    # ------------------------------------------------------------------ output
    def get(self, stamp_ns: int | None = None) -> FramePair[ImageT, InfoT] | None:
        """The newest pair, or the one closest to `stamp_ns` within the slop; None if absent.

        The returned pair carries the depth closest to its stamp within the slop, if any.
        """
        with self._lock:
            if not self._pairs:
                return None
            if stamp_ns is None or stamp_ns == 0:
                index = len(self._pairs) - 1
            else:
                diffs = [abs(p.stamp_ns - stamp_ns) for p, _ in self._pairs]
                index = min(range(len(diffs)), key=diffs.__getitem__)
                if diffs[index] > self.slop_ns:
                    return None
            pair, _ = self._pairs[index]
            self._pairs[index] = (pair, True)
            depth = self._closest(self._depths, pair.stamp_ns)
            return FramePair(pair.stamp_ns, pair.image, pair.info,
                             None if depth is None else depth[1])

    def stamps(self) -> list[int]:
        """Stamps of the buffered pairs, oldest first (for "which stamps are available")."""
        with self._lock:
            return [p.stamp_ns for p, _ in self._pairs]

    def newest_stamp(self) -> int | None:
        with self._lock:
            return self._pairs[-1][0].stamp_ns if self._pairs else None

    def stats(self) -> BufferStats:
        with self._lock:
            return BufferStats(**self._counts)

    def clear(self) -> None:
        with self._lock:
            self._clear_locked()

    # ------------------------------------------------------------------ internals
    def _admit(self, stamp_ns: int, now_ns: int | None, max_age_ns: int) -> bool:
        if max_age_ns > 0 and now_ns is not None and now_ns - stamp_ns > max_age_ns:
            self._counts["stale"] += 1
            return False
        if self._newest_ns is not None and stamp_ns < self._newest_ns - TIME_JUMP_RESET_NS:
            self._clear_locked()
            self._counts["resets"] += 1
        self._newest_ns = stamp_ns if self._newest_ns is None else max(self._newest_ns, stamp_ns)
        return True

    def _clear_locked(self) -> None:
        self._counts["unpaired"] += len(self._pending_images) + len(self._pending_infos)
        self._counts["dropped"] += sum(1 for _, used in self._pairs if not used)
        self._pending_images.clear()
        self._pending_infos.clear()
        self._depths.clear()
        self._pairs.clear()
        self._newest_ns = None

    def _push_pending(self, queue: deque, item: tuple[int, Any]) -> None:
        queue.append(item)
        while len(queue) > self._pending_cap:
            queue.popleft()
            if queue is not self._depths:
                self._counts["unpaired"] += 1

    def _closest_index(self, queue: deque, stamp_ns: int) -> int | None:
        best: int | None = None
        for i, item in enumerate(queue):
            d = abs(item[0] - stamp_ns)
            if d <= self.slop_ns and (best is None or d < abs(queue[best][0] - stamp_ns)):
                best = i
        return best

    def _closest(self, queue: deque, stamp_ns: int) -> tuple[int, Any] | None:
        i = self._closest_index(queue, stamp_ns)
        return None if i is None else queue[i]

    def _take_closest(self, queue: deque, stamp_ns: int) -> tuple[int, Any] | None:
        # By index: payloads may be arrays, whose == is not a truth value.
        i = self._closest_index(queue, stamp_ns)
        if i is None:
            return None
        item = queue[i]
        del queue[i]
        return item

    def _form_pair(self, stamp_ns: int, image: ImageT, info: InfoT) -> None:
        if self._check_pair is not None:
            reason = self._check_pair(image, info)
            if reason is not None:
                self._counts["rejected"] += 1
                self.last_rejection = reason
                return
        self._counts["paired"] += 1
        # Keep stamp order even when a late partner completes an older pair.
        pair = FramePair(stamp_ns, image, info)
        items = list(self._pairs)
        pos = len(items)
        while pos > 0 and items[pos - 1][0].stamp_ns > stamp_ns:
            pos -= 1
        items.insert(pos, (pair, False))
        while len(items) > self.capacity:
            _, used = items.pop(0)
            if not used:
                self._counts["dropped"] += 1
        self._pairs = deque(items)
