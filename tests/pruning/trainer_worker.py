"""Run by test_trainer.py, alone or under torchrun: train the tiny pruned model FOLDER for 8 steps (2 epochs)
with a global batch of 4 (split across the processes); save the result and the per-step losses under OUT."""

import json
import sys
from pathlib import Path

from transformers import AutoModelForCausalLM

import moe_specialists.models.pruned  # noqa: F401  (registers the pruned classes with the Auto classes)
from moe_specialists.pruning.trainer import TrainConfig, train_recovery
from tests.pruning.test_trainer import _examples

folder, out = Path(sys.argv[1]), Path(sys.argv[2])
model = AutoModelForCausalLM.from_pretrained(folder)
trainer, losses = train_recovery(model, _examples(), 0, TrainConfig(steps=8, lr=3e-3, batch_size=4), out / "work")
trainer.save_model(str(out / "final"))
if trainer.is_world_process_zero():
    (out / "losses.json").write_text(json.dumps(losses))
