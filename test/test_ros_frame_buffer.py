"""FrameBuffer pairing, bounds and counters (pure Python, no ROS)."""
from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from n3d_ros.ros.frame_buffer import TIME_JUMP_RESET_NS, FrameBuffer

MS = 1_000_000


def test_pairs_by_stamp_within_slop_in_either_order():
    buf = FrameBuffer(4, slop_ns=5 * MS)
    buf.add_image(100 * MS, "img100")
    assert buf.get() is None  # image alone is not a frame
    buf.add_info(103 * MS, "info103")
    pair = buf.get()
    assert (pair.stamp_ns, pair.image, pair.info) == (100 * MS, "img100", "info103")
    buf.add_info(200 * MS, "info200")  # info first this time
    buf.add_image(200 * MS, "img200")
    assert buf.get().image == "img200"
    assert buf.stats().paired == 2


def test_outside_slop_does_not_pair():
    buf = FrameBuffer(4, slop_ns=5 * MS)
    buf.add_image(100 * MS, "a")
    buf.add_info(106 * MS, "b")
    assert buf.get() is None and buf.stats().paired == 0


def test_picks_closest_partner():
    buf = FrameBuffer(4, slop_ns=10 * MS)
    buf.add_info(95 * MS, "far")
    buf.add_info(101 * MS, "near")
    buf.add_image(100 * MS, "img")
    assert buf.get().info == "near"


def test_bounded_and_counts_dropped_only_unused():
    buf = FrameBuffer(2, slop_ns=0)
    for i in range(5):
        buf.add_image(i * 33 * MS, i)
        buf.add_info(i * 33 * MS, i)
        if i == 2:
            assert buf.get().image == 2  # used before it is pushed out
    assert buf.stamps() == [3 * 33 * MS, 4 * 33 * MS]
    s = buf.stats()
    assert s.paired == 5 and s.dropped == 2  # frames 0 and 1; frame 2 was used


def test_get_by_stamp_and_missing_stamp():
    buf = FrameBuffer(4, slop_ns=2 * MS)
    for t in (10, 20, 30):
        buf.add_image(t * MS, t)
        buf.add_info(t * MS, t)
    assert buf.get(21 * MS).image == 20
    assert buf.get(25 * MS) is None
    assert buf.get(0).image == 30  # zero = newest


def test_depth_attached_by_stamp_and_arrays_as_payloads():
    buf = FrameBuffer(4, slop_ns=5 * MS)
    img = np.zeros((2, 2, 3), np.uint8)
    buf.add_depth(99 * MS, np.ones((2, 2)))
    buf.add_image(100 * MS, img)
    buf.add_image(100 * MS, img.copy())  # same stamp twice: arrays must not be compared with ==
    buf.add_info(100 * MS, "info")
    pair = buf.get()
    assert pair.depth is not None and pair.depth.shape == (2, 2)
    buf.add_image(300 * MS, img)
    buf.add_info(300 * MS, "info")
    assert buf.get().depth is None  # no depth near 300 ms


def test_check_pair_rejects_and_counts():
    buf = FrameBuffer(4, slop_ns=0, check_pair=lambda im, info: None if im == info else f"{im}!={info}")
    buf.add_image(1, "640")
    buf.add_info(1, "320")
    assert buf.get() is None
    assert buf.stats().rejected == 1 and buf.last_rejection == "640!=320"


def test_stale_and_time_jump():
    buf = FrameBuffer(4, slop_ns=0)
    assert not buf.add_image(1 * MS, "old", now_ns=10_000 * MS, max_age_ns=1000 * MS)
    assert buf.stats().stale == 1
    buf.add_image(5000 * MS, "a")
    buf.add_info(5000 * MS, "a")
    buf.add_image(5000 * MS - TIME_JUMP_RESET_NS - 1, "restarted")  # source restarted with older clock
    s = buf.stats()
    assert s.resets == 1 and buf.get() is None and s.dropped == 1


def test_unpaired_counted_when_pending_overflows():
    buf = FrameBuffer(1, slop_ns=0)
    for i in range(20):
        buf.add_image(i * MS, i)  # never any camera_info
    assert buf.stats().unpaired == 20 - (1 + 4)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["image", "info", "depth"]), st.integers(0, 2_000)),
                max_size=60),
       st.integers(1, 6), st.integers(0, 30))
def test_property_bounded_sorted_and_within_slop(events, capacity, slop_ms):
    buf = FrameBuffer(capacity, slop_ns=slop_ms * MS)
    for kind, t in events:
        getattr(buf, f"add_{kind}")(t * MS, (kind, t))
        stamps = buf.stamps()
        assert len(stamps) <= capacity
        assert stamps == sorted(stamps)
    pair = buf.get()
    if pair is not None:
        assert abs(pair.image[1] - pair.info[1]) <= slop_ms
        if pair.depth is not None:
            assert abs(pair.depth[1] - pair.image[1]) <= slop_ms
    s = buf.stats()
    assert s.images + s.infos + s.depths == len(events)
    assert s.paired <= min(s.images, s.infos)
