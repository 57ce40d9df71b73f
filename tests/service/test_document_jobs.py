"""Document jobs (service/document_jobs.py): a job runs in its own task, is read with its id and key, downloaded
once; a chunk refused as busy waits as long as the refusal says, until the deadline."""

from __future__ import annotations

import asyncio

import pytest

from moe_specialists.service.document_jobs import DocumentJobs, patiently
from moe_specialists.service.translation_errors import DocumentNotFound, InvalidInput, Overloaded, Unavailable


def test_a_job_is_read_with_its_key_and_downloaded_once():
    async def go():
        jobs = DocumentJobs()

        async def work():
            return "übersetzt"

        job = jobs.start("alice", "a.txt", "text/plain", 9, work)
        assert len(job.id) == 32 and len(job.key) == 64 and job.status == "queued"
        await jobs.wait(job, 5)
        assert jobs.get("alice", job.id, job.key).status == "done"
        for owner, key in (("bob", job.key), ("alice", "wrong"), ("alice", None)):
            with pytest.raises(DocumentNotFound, match="Document not found"):
                jobs.get(owner, job.id, key)
        assert jobs.take(job) == "übersetzt".encode()
        with pytest.raises(DocumentNotFound):  # gone once downloaded
            jobs.get("alice", job.id, job.key)

    asyncio.run(go())


def test_a_failed_translation_is_the_job_status_with_its_reason():
    async def go():
        jobs = DocumentJobs()

        async def refused():
            raise InvalidInput("invalid_srt", "line 3 is not a timing line")

        async def broken():
            raise RuntimeError("bug")

        a, b = jobs.start("o", "a.srt", "x", 1, refused), jobs.start("o", "b.txt", "x", 1, broken)
        await asyncio.gather(jobs.wait(a, 5), jobs.wait(b, 5))
        assert (a.status, a.error) == ("error", "line 3 is not a timing line")
        assert (b.status, b.error) == ("error", "internal error: RuntimeError")

    asyncio.run(go())


def test_running_jobs_are_never_dropped_finished_ones_make_room():
    async def go():
        jobs = DocumentJobs(max_jobs=2)
        gate = asyncio.Event()

        async def slow():
            await gate.wait()
            return "x"

        async def quick():
            return "y"

        done = jobs.start("o", "a.txt", "x", 1, quick)
        await jobs.wait(done, 5)
        running = jobs.start("o", "b.txt", "x", 1, slow)
        third = jobs.start("o", "c.txt", "x", 1, slow)  # the finished one goes to make room
        assert list(jobs.jobs) == [running.id, third.id]
        with pytest.raises(Overloaded, match="2 documents are being translated"):
            jobs.start("o", "d.txt", "x", 1, slow)
        gate.set()
        await jobs.close()

    asyncio.run(go())


def test_patiently_waits_as_told_until_the_deadline():
    now = [0.0]
    calls: list[float] = []
    refusals = [Overloaded("queue_full", "full", retry_after_s=2), Unavailable("down", "down", retry_after_s=3)]

    async def translate(texts):
        calls.append(now[0])
        if refusals:
            raise refusals.pop(0)
        return [t.upper() for t in texts]

    async def fake_sleep(s):
        now[0] += s

    async def go(deadline):
        return await patiently(translate, deadline, clock=lambda: now[0], sleep=fake_sleep)(["a"])

    assert asyncio.run(go(10)) == ["A"] and calls == [0, 2, 5]  # waited 2 s, then 3 s
    now[0], calls[:] = 0.0, []
    refusals[:] = [Overloaded("queue_full", "full", retry_after_s=2), Unavailable("down", "down", retry_after_s=3)]
    with pytest.raises(Unavailable):  # 2 + 3 > 4: the second refusal stands
        asyncio.run(go(4))
    refusals[:] = [Unavailable("given_up", "never again", retry_after_s=None)]
    with pytest.raises(Unavailable, match="never again"):
        asyncio.run(go(100))
