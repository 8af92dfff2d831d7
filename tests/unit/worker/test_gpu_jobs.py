"""The GPU job queue: one job at a time, bounded admission, deadlines, dropped jobs never run."""

import asyncio
import threading
import time

import pytest

from inference_pod.worker.jobs import DeadlineExceeded, GpuJobQueue, QueueFull


async def test_jobs_run_one_at_a_time_in_order():
    q = GpuJobQueue(max_queued=8)
    q.start()
    running = []
    order = []
    lock = threading.Lock()

    def job(i):
        def fn():
            with lock:
                running.append(i)
                assert len(running) == 1, "two jobs on the GPU at once"
            time.sleep(0.02)
            with lock:
                running.remove(i)
                order.append(i)
            return i * 10

        return fn

    results = await asyncio.gather(*(q.submit(job(i), 5) for i in range(5)))
    assert [r for r, _ in results] == [0, 10, 20, 30, 40]
    assert order == [0, 1, 2, 3, 4]
    assert all(waited >= 0 for _, waited in results)
    await q.close()


async def test_full_queue_refuses_and_reports_retry_after():
    q = GpuJobQueue(max_queued=1)
    q.start()
    release = threading.Event()
    first = asyncio.ensure_future(q.submit(lambda: release.wait(5), 5))
    await asyncio.sleep(0.05)  # first is running, the queue is empty
    second = asyncio.ensure_future(q.submit(lambda: "second", 5))
    await asyncio.sleep(0.01)
    with pytest.raises(QueueFull):
        await q.submit(lambda: "third", 5)
    assert q.retry_after_s() >= 1
    release.set()
    assert (await first)[0] is True
    assert (await second)[0] == "second"
    await q.close()


async def test_job_past_its_deadline_is_dropped_without_running():
    q = GpuJobQueue(max_queued=4)
    q.start()
    release = threading.Event()
    ran = []
    blocker = asyncio.ensure_future(q.submit(lambda: release.wait(5), 5))
    await asyncio.sleep(0.05)
    with pytest.raises(DeadlineExceeded):
        await q.submit(lambda: ran.append("late"), 0.1)
    release.set()
    await blocker
    assert (await q.submit(lambda: "after", 5))[0] == "after"
    assert ran == []
    await q.close()


async def test_job_errors_go_back_to_their_caller_only():
    q = GpuJobQueue(max_queued=4)
    q.start()

    def boom():
        raise ValueError("bad adapter")

    with pytest.raises(ValueError, match="bad adapter"):
        await q.submit(boom, 5)
    assert (await q.submit(lambda: "still serving", 5))[0] == "still serving"
    await q.close()


async def test_a_late_error_after_the_deadline_is_not_logged_as_never_retrieved():
    """Issue #10: 'Future exception was never retrieved' once a running job failed after its caller's deadline."""
    import gc

    loop = asyncio.get_running_loop()
    seen: list[str] = []
    loop.set_exception_handler(lambda _loop, ctx: seen.append(ctx.get("message", "")))
    q = GpuJobQueue(max_queued=2)
    q.start()

    def fails_late():
        time.sleep(0.3)
        raise RuntimeError("late")

    with pytest.raises(DeadlineExceeded):
        await q.submit(fails_late, 0.05)
    await asyncio.sleep(0.5)
    gc.collect()
    await asyncio.sleep(0)
    assert not [m for m in seen if "never retrieved" in m], seen
    await q.close()
