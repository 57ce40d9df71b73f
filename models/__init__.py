"""Model code: family adapters, pruned (per-layer expert count) model classes, prompts, the bundled translator.

Importing the package registers the pruned classes with transformers' Auto classes.
"""

from models.pruned import register_transformers

register_transformers()
