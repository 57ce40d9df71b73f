"""Document translations that run after their upload answered (DeepL's /v2/document): each job is translated in
its own task, polled by id and key, downloaded once. In memory, per gateway process: at most ``max_jobs``, each
kept ``ttl_s`` seconds (the oldest finished ones go first; running ones are never dropped).

A job's chunks (``Translator.translate_all``) are admitted like any request; when every engine is busy or
restarting, a chunk waits as long as the refusal says (``patiently``) instead of failing the document."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

from moe_specialists.service.documents import Translate
from moe_specialists.service.translation_errors import DocumentNotFound, Overloaded, TranslationError, Unavailable

log = logging.getLogger(__name__)
Status = Literal["queued", "translating", "done", "error"]


@dataclass
class DocumentJob:
    id: str
    key: str
    owner: str
    name: str  # the file name the translation is downloaded as
    media_type: str
    characters: int  # billed
    status: Status = "queued"
    error: str | None = None
    result: bytes | None = None
    created: float = field(default_factory=time.monotonic)
    task: asyncio.Task | None = None

    @property
    def finished(self) -> bool:
        return self.status in ("done", "error")


def patiently(translate: Translate, deadline: float, clock: Callable[[], float] = time.monotonic,
              sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> Translate:
    """``translate`` retried while it is refused as ``Overloaded``, or ``Unavailable`` with a time to retry, after
    the ``retry_after_s`` the refusal gives, until the ``clock`` time ``deadline`` (then the refusal stands)."""

    async def run(texts: list[str]) -> list[str]:
        while True:
            try:
                return await translate(texts)
            except (Overloaded, Unavailable) as e:
                wait = e.retry_after_s
                if wait is None or clock() + wait > deadline:
                    raise
                await sleep(wait)

    return run


class DocumentJobs:
    def __init__(self, max_jobs: int = 100, ttl_s: float = 3600):
        self.max_jobs, self.ttl_s = max_jobs, ttl_s
        self.jobs: OrderedDict[str, DocumentJob] = OrderedDict()

    def start(self, owner: str, name: str, media_type: str, characters: int,
              work: Callable[[], Awaitable[str]]) -> DocumentJob:
        """A new job running ``work`` (the translated file's text) in a task; its id (32 hex digits, as DeepL's)
        and key (64) name it from then on. ``Overloaded`` when ``max_jobs`` are running."""
        self._evict()
        if len(self.jobs) >= self.max_jobs:  # every one of them still running
            raise Overloaded("documents_busy", f"{len(self.jobs)} documents are being translated, the most this "
                             "gateway takes at once; retry later", retry_after_s=5)
        job = DocumentJob(secrets.token_hex(16).upper(), secrets.token_hex(32).upper(), owner, name, media_type,
                          characters)
        job.task = asyncio.create_task(self._run(job, work), name=f"document {job.id}")
        self.jobs[job.id] = job
        return job

    async def _run(self, job: DocumentJob, work: Callable[[], Awaitable[str]]) -> None:
        job.status = "translating"
        try:
            job.result = (await work()).encode()
            job.status = "done"
        except TranslationError as e:
            job.status, job.error = "error", e.message
        except Exception as e:  # noqa: BLE001 - the job reports it; the gateway goes on
            log.exception("document %s (%s) failed", job.id, job.name)
            job.status, job.error = "error", f"internal error: {type(e).__name__}"

    def get(self, owner: str, document_id: str, key: str | None) -> DocumentJob:
        """The job ``document_id`` of ``owner`` when ``key`` is its key, else ``DocumentNotFound``."""
        self._evict()
        job = self.jobs.get(document_id)
        if job is None or job.owner != owner or not hmac.compare_digest(job.key, str(key or "")):
            raise DocumentNotFound("document_not_found", f"Document not found: {document_id[:80]!r} (a "
                                   "document is kept for an hour, until it is downloaded, with its document_key)")
        return job

    async def wait(self, job: DocumentJob, timeout: float) -> None:
        """Return when ``job`` finished or after ``timeout`` seconds."""
        if job.task is not None and not job.finished:
            await asyncio.wait({job.task}, timeout=timeout)

    def take(self, job: DocumentJob) -> bytes:
        """A finished job's file, once: the job is forgotten (DeepL deletes a document when it is downloaded)."""
        assert job.status == "done" and job.result is not None
        self.jobs.pop(job.id, None)
        return job.result

    def _evict(self) -> None:
        now = time.monotonic()
        for job in [j for j in self.jobs.values() if j.finished and now - j.created > self.ttl_s]:
            del self.jobs[job.id]
        finished = [j for j in self.jobs.values() if j.finished]
        while len(self.jobs) >= self.max_jobs and finished:
            del self.jobs[finished.pop(0).id]

    async def close(self) -> None:
        """Cancel the jobs still running (the gateway stops)."""
        tasks = [j.task for j in self.jobs.values() if j.task is not None and not j.task.done()]
        for task in tasks:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*tasks, return_exceptions=True)
