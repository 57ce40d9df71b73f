"""Model code: checkpoint I/O, family adapters, pruned (per-layer expert count) model classes, prompts, the
registry, the bundled translator. Importing the package loads nothing heavy; ``moe_specialists.models.pruned``
registers the pruned classes with transformers' Auto classes when it is imported."""
