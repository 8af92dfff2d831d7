"""One GPU job at a time from a bounded queue.

Jobs run in order on a single thread that owns the pipeline. Admission is
bounded (a full queue is the caller's 429), every job carries a deadline,
and a job whose caller went away or whose deadline passed before it started
is dropped without touching the GPU. Adapters of queued jobs are fetched
into RAM as they are admitted, so the next job's swap is a RAM -> slot copy.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any


class QueueFull(Exception):
    pass


class DeadlineExceeded(Exception):
    pass


@dataclass(order=True)
class Job:
    seq: int
    fn: Callable[[], Any] = field(compare=False)
    deadline: float = field(compare=False)
    enqueued: float = field(compare=False, default_factory=time.monotonic)
    started: float | None = field(compare=False, default=None)
    future: asyncio.Future = field(compare=False, kw_only=True)


def _consume(future: asyncio.Future) -> None:
    """Retrieve a result nobody waits for, so asyncio does not log 'Future exception was never retrieved'."""
    if not future.cancelled():
        future.exception()


class GpuJobQueue:
    def __init__(self, max_queued: int) -> None:
        self.max_queued = max_queued
        self._queue: asyncio.Queue[Job] | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="gpu-job")
        self._seq = itertools.count()
        self._runner: asyncio.Task | None = None
        self.running: Job | None = None
        self.mean_job_s = 1.0  # for Retry-After

    def start(self) -> None:
        self._queue = asyncio.Queue(self.max_queued)
        self._runner = asyncio.get_running_loop().create_task(self._run())

    @property
    def depth(self) -> int:
        return (self._queue.qsize() if self._queue else 0) + (1 if self.running else 0)

    def retry_after_s(self) -> int:
        return max(1, int(self.depth * self.mean_job_s + 0.999))

    async def submit(self, fn: Callable[[], Any], deadline_s: float) -> tuple[Any, float]:
        """Run fn on the GPU thread; return (result, seconds waited in the queue)."""
        assert self._queue is not None, "start() first"
        loop = asyncio.get_running_loop()
        job = Job(next(self._seq), fn, time.monotonic() + deadline_s, future=loop.create_future())
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            raise QueueFull() from None
        try:
            result = await asyncio.wait_for(asyncio.shield(job.future), timeout=deadline_s)
        except TimeoutError:
            job.deadline = 0.0  # not started yet: the runner will drop it
            job.future.add_done_callback(_consume)  # a running job's late error has no reader any more
            raise DeadlineExceeded() from None
        except asyncio.CancelledError:
            job.deadline = 0.0
            job.future.add_done_callback(_consume)
            raise
        return result, (job.started or time.monotonic()) - job.enqueued

    async def _run(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            job = await self._queue.get()
            if time.monotonic() >= job.deadline or job.future.done():
                continue
            job.started = time.monotonic()
            self.running = job
            try:
                result = await loop.run_in_executor(self._executor, job.fn)
            except Exception as e:  # the job's own error goes back to its caller
                if not job.future.done():
                    job.future.set_exception(e)
            else:
                if not job.future.done():
                    job.future.set_result(result)
            finally:
                took = time.monotonic() - job.started
                self.mean_job_s = 0.8 * self.mean_job_s + 0.2 * took
                self.running = None

    async def close(self) -> None:
        if self._runner:
            self._runner.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)
