"""The in-process engine: a vLLM ``AsyncLLM`` per specialist (its GPU memory share from settings), its
scheduler state copied into the gateway's metrics by a vLLM stat logger (``scheduler_logger``).

vLLM runs the engine in processes of its own: an engine core, started by ``AsyncLLM``, which starts the
worker(s) that hold the model (on a CPU always; on a GPU with tensor/pipeline parallelism). When the core
dies (killed, out of memory) its workers are orphans that vLLM may never end (one that is busy in a kernel or
hung does not notice, and keeps its memory). So the engine notes the core and every process it started once
it is up (``process_tree``), and each reset, before any restart, kills what of them still runs and waits
until they are gone (``end_processes``), after vLLM's own shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import psutil
import pydantic

from moe_specialists.models.generation import VllmCannotServe, check_vllm_can_serve
from moe_specialists.models.prompts import render
from moe_specialists.models.vllm_worker import PROBE
from moe_specialists.service.engines.base import (
    Engine,
    EngineConfigError,
    EngineInputError,
    EngineUnavailable,
    Generation,
    GenerationParams,
    load_tokenizer,
)
from moe_specialists.service.metrics import GatewayMetrics
from moe_specialists.service.settings import Settings, SpecialistSpec

log = logging.getLogger(__name__)


def scheduler_logger(metrics: GatewayMetrics, name: str) -> Any:
    """A vLLM stat-logger class that copies the scheduler's state (running, waiting, KV-cache usage) of the
    engine of specialist ``name`` into the gateway's metrics on every engine step.

    It subclasses vLLM's ``PrometheusStatLogger`` without calling its constructor, so that vLLM adds no
    Prometheus logger of its own: that one unregisters and re-registers every ``vllm:*`` metric in the
    process-global registry, which races (``DuplicateTimeseries``) when two in-process engines start at once,
    and it records histograms on every step that the gateway never exports (its metrics are per-app)."""
    from vllm.v1.metrics.loggers import PrometheusStatLogger

    class SchedulerToMetrics(PrometheusStatLogger):
        def __init__(self, vllm_config: Any, engine_indexes: list[int] | None = None):
            self.engine_indexes = engine_indexes or [0]

        def record(self, scheduler_stats: Any, iteration_stats: Any, mm_cache_stats: Any = None, engine_idx=0):
            if scheduler_stats is not None:
                s = scheduler_stats
                metrics.engine_scheduler(name, s.num_running_reqs, s.num_waiting_reqs, s.kv_cache_usage)

        def record_admission_rejection(self, reason: str) -> None:
            pass

        def record_sleep_state(self, sleep: int = 0, level: int = 0) -> None:
            pass

        def log(self) -> None:
            pass

        def log_engine_initialized(self) -> None:
            pass

    return SchedulerToMetrics


def process_tree(pids: list[int]) -> list[psutil.Process]:
    """The processes ``pids`` and all their descendants (gone ones left out)."""
    tree = []
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc = psutil.Process(pid)
            tree += [proc, *proc.children(recursive=True)]
    return tree


def end_processes(processes: list[psutil.Process], timeout: float = 10.0) -> list[psutil.Process]:
    """SIGKILL those of ``processes`` that still run, and what they started since, then wait until they are gone
    (our own children reaped): the ones still there after ``timeout`` s. psutil checks each process's start
    time, so a pid reused by another process is left alone."""
    doomed = {proc.pid: proc for proc in processes}
    for proc in list(doomed.values()):
        with contextlib.suppress(psutil.Error):
            doomed.update({child.pid: child for child in proc.children(recursive=True)})
    for proc in doomed.values():
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    return psutil.wait_procs(list(doomed.values()), timeout=timeout)[1]


class LocalVllmEngine(Engine):
    backend = "vllm-inprocess"

    def __init__(self, spec: SpecialistSpec, settings: Settings, metrics: GatewayMetrics, memory_share: float):
        super().__init__(spec, settings, metrics)
        self.memory_share = memory_share
        self.llm: Any = None
        self.processes: list[psutil.Process] = []  # the engine core and what it started, noted when it came up

    async def start(self) -> None:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        try:
            check_vllm_can_serve(self.spec.path)
        except VllmCannotServe as e:
            raise EngineConfigError(str(e)) from None
        args = AsyncEngineArgs(
            model=self.spec.path,
            tokenizer=self.spec.tokenizer or self.spec.path,
            served_model_name=[self.spec.name],
            dtype=self.settings.dtype,
            max_num_seqs=self.settings.max_num_seqs,
            gpu_memory_utilization=self.memory_share,
            enforce_eager=self.settings.enforce_eager,
            disable_log_stats=True,  # vLLM's own loggers off; ours (scheduler_logger) replaces them
            worker_extension_cls=PROBE,
        )
        try:
            config = await asyncio.to_thread(engine_config, args, self.settings.max_model_len)
        except pydantic.ValidationError as e:  # vLLM's own checks of its arguments (its configs are pydantic)
            raise EngineConfigError(f"vLLM refused the configuration: {e}") from None
        # anything else (an unreadable config.json, a missing folder) may be repaired: restarted with backoff
        self.tokenizer = await asyncio.to_thread(load_tokenizer, self.spec.tokenizer or self.spec.path)
        # The constructor blocks until the engine core is up (tens of seconds): keep the event loop free.
        self.llm = await asyncio.to_thread(
            AsyncLLM.from_vllm_config, config, stat_loggers=[scheduler_logger(self.metrics, self.name)],
            disable_log_stats=True,
        )
        self.processes = await asyncio.to_thread(process_tree, self.engine_core_pids())
        self.max_model_len = int(self.llm.model_config.max_model_len)
        for kind, nbytes in (await self.llm.collective_rpc("engine_memory"))[0].items():
            self.metrics.engine_memory.labels(self.name, kind).set(nbytes)
        self.error = None
        self.state = "ready"

    async def reset(self) -> None:
        """vLLM's shutdown, then every process of the engine core that outlived it killed and waited for."""
        if self.llm is not None:
            llm, self.llm = self.llm, None
            await asyncio.to_thread(llm.shutdown)
        processes, self.processes = self.processes, []
        if processes and (left := await asyncio.to_thread(end_processes, processes)):
            log.error("specialist %s: processes of its engine core still run after SIGKILL: %s", self.name,
                      ", ".join(str(p.pid) for p in left))

    async def close(self) -> None:
        self.state = "stopped"
        await self.reset()

    def engine_core_pids(self) -> list[int]:
        """Process ids of the vLLM engine-core process(es) of this engine (none when not started)."""
        manager = getattr(getattr(getattr(self.llm, "engine_core", None), "resources", None), "engine_manager", None)
        return [p.pid for p in getattr(manager, "processes", []) if p.pid is not None]

    def unfinished_requests(self) -> int:
        """Requests the engine still holds (generating or queued), as its front end counts them."""
        return 0 if self.llm is None else int(self.llm.output_processor.get_num_unfinished_requests())

    async def check_health(self) -> None:
        if self.llm is None or self.state == "stopped":
            return
        if self.llm.errored:
            if self.state == "ready":
                self.fail("the vLLM engine core died")
        elif self.state == "failed" and not self.died.is_set():
            self.error = None  # marked failed by hand (not by fail()): the engine lives, so it is ready
            self.state = "ready"
        if self.unfinished_requests() == 0:  # idle: the scheduler sends no more stats, so zero them here
            self.metrics.engine_scheduler(self.name, 0, 0, 0.0)

    async def stream(
        self, source: str, target: str, text: str, params: GenerationParams, incremental: bool = True
    ) -> AsyncIterator[Generation]:
        from vllm import SamplingParams
        from vllm.exceptions import VLLMClientError
        from vllm.v1.engine.exceptions import EngineDeadError

        if self.llm is None:
            raise EngineUnavailable(f"specialist {self.name!r} is {self.state}")
        prompt = render(self.tokenizer, source, target, text)
        ids = self.tokenizer.encode(prompt, add_special_tokens=False)
        sampling = SamplingParams(
            max_tokens=self.clamp_max_tokens(len(ids), params.max_tokens),
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=params.top_k,
            seed=params.seed,
            repetition_penalty=params.repetition_penalty,
            skip_special_tokens=False,
            spaces_between_special_tokens=False,
        )
        try:
            async for out in self.llm.generate({"prompt_token_ids": ids}, sampling, uuid.uuid4().hex):
                c = out.outputs[0]
                yield Generation(c.text, len(c.token_ids), len(ids), out.finished, c.finish_reason)
        except EngineDeadError as e:
            self.fail("the vLLM engine core died")
            raise EngineUnavailable(f"specialist {self.name!r}: the vLLM engine core died") from e
        except (VLLMClientError, ValueError) as e:
            raise EngineInputError(f"specialist {self.name!r} refused the input: {e}") from e
        except Exception as e:  # EngineGenerateError and the like: the request failed, the engine lives on
            raise EngineUnavailable(f"specialist {self.name!r}: generation failed: {type(e).__name__}: {e}") from e


def engine_config(args: Any, cap: int | None) -> Any:
    """vLLM's config of ``args`` with the context ``min(cap, the model's own)`` (the model's own when ``cap`` is
    None): the setting caps the context, it never asks for more than the model supports."""
    from vllm.usage.usage_lib import UsageContext

    if cap is not None:
        args.max_model_len = min(cap, args.create_model_config().max_model_len)
    return args.create_engine_config(UsageContext.ENGINE_CONTEXT)
