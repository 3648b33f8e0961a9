"""A staged pipeline: a source and stage functions, each in its own thread, joined by
bounded queues, so that decoding, inference and encoding overlap.

* Memory stays bounded: each queue holds at most ``queue_size`` items; a full queue makes
  the stage before it wait. With ``drop_stale`` the source hands over through a one-item
  slot instead, and an item still waiting there when the next one comes is dropped
  (counted in :attr:`Pipeline.dropped`): the first stage always gets the newest item.
* An exception in any thread stops every thread (none is left blocked on a queue) and is
  raised again by :meth:`Pipeline.run`.
* Ctrl-C (KeyboardInterrupt in the main thread) stops the source; the items already
  taken from it go through every stage, and :meth:`Pipeline.run` returns normally with
  :attr:`Pipeline.interrupted` set. A second Ctrl-C stops every thread at once and raises
  KeyboardInterrupt.
"""
from __future__ import annotations

import queue
import threading
from typing import Callable, Iterable, Sequence

_END = object()  # end of the items, passed down the queues


class _Aborted(Exception):
    """Raised inside a thread when the pipeline is aborted."""


class LatestSlot(queue.Queue):
    """A one-item queue whose :meth:`offer` replaces a waiting item (counted in
    :attr:`dropped`) instead of waiting for room. One producer only."""

    def __init__(self):
        super().__init__(maxsize=1)
        self.dropped = 0

    def offer(self, item) -> None:
        while True:
            try:
                self.put_nowait(item)
                return
            except queue.Full:
                try:
                    self.get_nowait()
                    self.dropped += 1
                except queue.Empty:  # the consumer took it meanwhile
                    pass


class Pipeline:
    """``source`` (an iterable, iterated in its own thread) -> ``stages[0]`` -> ... ->
    ``stages[-1]``, each stage a function of one item whose result goes to the next stage
    (the last one's result is dropped). See the module docstring."""

    def __init__(self, source: Iterable, stages: Sequence[Callable], queue_size: int = 4,
                 drop_stale: bool = False, poll_s: float = 0.05):
        if not stages:
            raise ValueError("a pipeline needs at least one stage")
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        self.source, self.stages, self.poll_s = source, list(stages), poll_s
        first = LatestSlot() if drop_stale else queue.Queue(queue_size)
        self.queues = [first] + [queue.Queue(queue_size) for _ in self.stages[1:]]
        self._halt = threading.Event()   # graceful: the source stops, items in flight finish
        self._abort = threading.Event()  # every thread stops now
        self._lock = threading.Lock()
        self.error: BaseException | None = None
        self.interrupted = False

    @property
    def dropped(self) -> int:
        """Items of the source that no stage saw (``drop_stale``)."""
        return getattr(self.queues[0], "dropped", 0)

    def stop(self) -> None:
        """Stop taking items from the source; those taken go through (as Ctrl-C does)."""
        self._halt.set()

    def run(self) -> "Pipeline":
        threads = [threading.Thread(target=self._feed, name="pipeline-source", daemon=True)]
        threads += [threading.Thread(target=self._work, args=(i,), daemon=True,
                                     name=f"pipeline-stage{i}") for i in range(len(self.stages))]
        for t in threads:
            t.start()
        try:
            self._wait(threads)
        finally:
            if any(t.is_alive() for t in threads):  # an interrupt while waiting: stop all
                self._abort.set()
                for t in threads:
                    t.join()
        if self.error is not None:
            raise self.error
        return self

    def _wait(self, threads) -> None:
        while True:
            try:
                for t in threads:
                    while t.is_alive():
                        t.join(self.poll_s)
                return
            except KeyboardInterrupt:
                if self._halt.is_set():  # the second one
                    self._abort.set()
                    raise
                self.interrupted = True
                self._halt.set()

    # ------------------------------------------------------------------ threads
    def _fail(self, e: BaseException) -> None:
        with self._lock:
            if self.error is None:
                self.error = e
        self._abort.set()

    def _get(self, q: queue.Queue):
        while True:
            if self._abort.is_set():
                raise _Aborted
            try:
                return q.get(timeout=self.poll_s)
            except queue.Empty:
                pass

    def _put(self, q: queue.Queue, item) -> None:
        while True:
            if self._abort.is_set():
                raise _Aborted
            try:
                return q.put(item, timeout=self.poll_s)
            except queue.Full:
                pass

    def _end(self, q: queue.Queue) -> None:
        try:
            self._put(q, _END)
        except _Aborted:
            pass

    def _feed(self) -> None:
        q, it = self.queues[0], iter(self.source)
        try:
            while not (self._halt.is_set() or self._abort.is_set()):
                item = next(it, _END)
                if item is _END:
                    break
                if isinstance(q, LatestSlot):
                    q.offer(item)
                else:
                    self._put(q, item)
        except _Aborted:
            pass
        except BaseException as e:  # noqa: BLE001  (re-raised by run)
            self._fail(e)
        finally:
            getattr(it, "close", lambda: None)()  # a generator's own cleanup runs here
            self._end(q)

    def _work(self, i: int) -> None:
        fn, q = self.stages[i], self.queues[i]
        out = self.queues[i + 1] if i + 1 < len(self.queues) else None
        try:
            while (item := self._get(q)) is not _END:
                result = fn(item)
                if out is not None:
                    self._put(out, result)
        except _Aborted:
            pass
        except BaseException as e:  # noqa: BLE001  (re-raised by run)
            self._fail(e)
        finally:
            if out is not None:
                self._end(out)
