"""The bundled tiny MoE translator (Qwen3-MoE architecture): weights, tokenizer and model card."""

from pathlib import Path

BUNDLED_MODEL_DIR = Path(__file__).parent

