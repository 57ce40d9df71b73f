"""vLLM plugin (entry point ``vllm.general_plugins: moe_specialists``): serve pruned specialists.

vLLM calls ``register()`` in every process it starts (front end, engine core, workers). It maps each family's
pruned architecture name (config.json ``architectures``) to its class in ``models.vllm_models`` by a lazy
"module:Class" string, so nothing heavy is imported until such a model is loaded. Safe to call repeatedly.
"""

from __future__ import annotations

VLLM_MODELS_MODULE = "moe_specialists.models.vllm_models"


def register() -> None:
    """Register the pruned architectures with vLLM's ModelRegistry (idempotent)."""
    from vllm import ModelRegistry

    from moe_specialists.models.adapters import ADAPTERS

    for adapter in ADAPTERS.values():
        arch = adapter.pruned_architecture
        if arch not in ModelRegistry.get_supported_archs():
            ModelRegistry.register_model(arch, f"{VLLM_MODELS_MODULE}:{arch}")
    _share_config_fixups()


def _share_config_fixups() -> None:
    """A specialist gets the config fix-ups vLLM applies to its base architecture (e.g. GPT-OSS's MXFP4
    quantisation name and reasoning parser), which vLLM looks up by architecture name."""
    from vllm.model_executor.models.config import MODELS_CONFIG_MAP

    from moe_specialists.models.adapters import ADAPTERS

    for adapter in ADAPTERS.values():
        if adapter.base_architecture in MODELS_CONFIG_MAP:
            MODELS_CONFIG_MAP.setdefault(adapter.pruned_architecture, MODELS_CONFIG_MAP[adapter.base_architecture])
