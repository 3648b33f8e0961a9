"""The parts of ``raunet-fast stream`` on their own: the threaded pipeline (order, bounded
queues, errors and Ctrl-C stop every thread), latency percentiles against the standard
library's, the overlay blend against float arithmetic, natural frame order."""
from __future__ import annotations

import _thread
import itertools
import statistics
import threading
import time

import numpy as np
import pytest

from raunet_fast.stream.pipeline import LatestSlot, Pipeline
from raunet_fast.stream.sinks import PALETTE, even_size, overlay
from raunet_fast.stream.sources import natural_key
from raunet_fast.stream.stats import latency_summary


def pipeline_threads() -> list[threading.Thread]:
    """The pipeline's threads still running."""
    return [t for t in threading.enumerate() if t.name.startswith("pipeline-") and t.is_alive()]


def test_items_pass_every_stage_in_order_with_bounded_queues():
    seen, depth = [], []
    p = Pipeline(range(50), [lambda x: x * 2, lambda x: x + 1, seen.append], queue_size=2)

    def slow(x):  # the last stage is slow: the queues before it fill up, never beyond 2
        depth.append([q.qsize() for q in p.queues])
        time.sleep(0.001)
        return seen.append(x)

    p.stages[-1] = slow
    p.run()
    assert seen == [2 * i + 1 for i in range(50)]
    assert max(max(d) for d in depth) <= 2
    assert not pipeline_threads()


def test_an_error_in_a_stage_stops_an_endless_source():
    pulled = []

    def source():
        for i in itertools.count():
            pulled.append(i)
            yield i

    def fail_at_5(x):
        if x == 5:
            raise ValueError("bad frame 5")
        return x

    with pytest.raises(ValueError, match="bad frame 5"):
        Pipeline(source(), [fail_at_5, lambda x: time.sleep(0.01)], queue_size=3).run()
    assert not pipeline_threads()
    assert len(pulled) < 5 + 3 * 2 + 4  # the bounded queues stopped the source


def test_an_error_in_the_source_is_raised():
    def source():
        yield 1
        raise OSError("camera unplugged")

    got = []
    with pytest.raises(OSError, match="camera unplugged"):
        Pipeline(source(), [got.append]).run()
    assert not pipeline_threads()


def test_ctrl_c_stops_the_source_and_finishes_the_items_in_flight():
    """One KeyboardInterrupt in the main thread: the endless source stops, every item it
    handed out reaches the last stage, and run() returns."""
    done = []

    def last(x):
        if x == 10:
            _thread.interrupt_main()
        time.sleep(0.002)
        done.append(x)

    p = Pipeline(itertools.count(), [lambda x: x, last], queue_size=4)
    p.run()
    assert p.interrupted and not pipeline_threads()
    assert done == list(range(len(done))) and len(done) > 10


def test_a_second_ctrl_c_aborts():
    # interrupt_main() only sets a flag that the main thread reads between bytecodes: two
    # calls before it looks are one Ctrl-C, so the second waits until the first was taken
    def last(x):
        if x == 3:
            _thread.interrupt_main()
        if x == 4:
            deadline = time.monotonic() + 30
            while not pipe.interrupted and time.monotonic() < deadline:
                time.sleep(0.01)
            _thread.interrupt_main()
        time.sleep(0.05)

    pipe = Pipeline(itertools.count(), [last], queue_size=50)
    with pytest.raises(KeyboardInterrupt):
        pipe.run()
    assert pipe.interrupted
    assert not pipeline_threads()


def test_drop_stale_keeps_the_newest_item():
    slot = LatestSlot()
    for i in range(5):
        slot.offer(i)
    assert slot.get_nowait() == 4 and slot.dropped == 4

    done = []

    def slow(x):
        time.sleep(0.01)
        done.append(x)

    def source():  # 100 items, one every 0.5 ms: most arrive while slow() works
        for i in range(100):
            time.sleep(0.0005)
            yield i

    p = Pipeline(source(), [slow], drop_stale=True)
    p.run()
    assert len(done) + p.dropped == 100 and p.dropped > 0
    assert done == sorted(done) and done[-1] == 99  # in order; the last one is never lost


def test_latency_percentiles_match_the_standard_library():
    rng = np.random.default_rng(0)
    seconds = list(rng.gamma(2.0, 0.01, size=137))
    q = statistics.quantiles([s * 1e3 for s in seconds], n=100, method="inclusive")
    got = latency_summary(seconds)
    assert got["p50"] == pytest.approx(q[49], rel=1e-12)
    assert got["p99"] == pytest.approx(q[98], rel=1e-12)
    assert got["max"] == pytest.approx(max(seconds) * 1e3, rel=1e-12)
    assert latency_summary([]) == {"p50": None, "p99": None, "max": None}


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_overlay_blends_each_layer_towards_its_colour(alpha):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (7, 9, 3), dtype=np.uint8)
    a, b = rng.random((7, 9)) > 0.5, rng.random((7, 9)) > 0.5
    want = rgb.astype(np.float64)
    for layer, colour in ((a, PALETTE[0]), (b, PALETTE[1])):
        want[layer] = want[layer] * (1 - alpha) + np.asarray(colour) * alpha
    got = overlay(rgb, [a, b], alpha)
    assert np.abs(got.astype(np.float64) - want).max() <= 1.0
    np.testing.assert_array_equal(got[~(a | b)], rgb[~(a | b)])


def test_odd_frames_are_padded_to_even_with_their_edge():
    rgb = np.arange(5 * 3 * 3, dtype=np.uint8).reshape(5, 3, 3)
    out = even_size(rgb)
    assert out.shape == (6, 4, 3)
    np.testing.assert_array_equal(out[:5, :3], rgb)
    np.testing.assert_array_equal(out[5, :3], rgb[4])
    np.testing.assert_array_equal(out[:5, 3], rgb[:, 2])


def test_natural_order_of_frame_names():
    names = ["img10.png", "img2.png", "img1.png", "a.png", "img1b.png"]
    assert sorted(names, key=natural_key) == ["a.png", "img1.png", "img1b.png", "img2.png",
                                              "img10.png"]
