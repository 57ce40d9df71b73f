"""The non-translation tasks of the generalist mixture, and how they are scored.

Every task is a user/assistant conversation in the model's chat template (the loss is on the assistant turn):
  arithmetic    "What is 17 + 25?" -> "42"             (a + b, a - b, a * b; scored by exact match)
  lists         "Sort these: 5 2 9" -> "2 5 9"          (sort, reverse, copy; exact match)
  continuation  "Continue this text.\\n\\n<first half>" -> "<rest>"  (monolingual, from either side of a pair)
  code          "Continue this Python code.\\n\\n<lines>" -> "<next lines>"   (scored by next-token loss)
Task makers are pure functions of a ``random.Random``, so a seeded builder is reproducible.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

OPERATORS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
LIST_TASKS = ("sort", "reverse", "copy")
WORDS = ("apple", "river", "stone", "cloud", "green", "table", "light", "north", "paper", "seven", "music", "bread")


@dataclass(frozen=True)
class Conversation:
    task: str
    user: str
    assistant: str

    def messages(self) -> list[dict[str, str]]:
        return [{"role": "user", "content": self.user}, {"role": "assistant", "content": self.assistant}]


def arithmetic(rng: random.Random, max_operand: int = 99) -> Conversation:
    """'What is a <op> b?' -> str(a <op> b), operands uniform in 0..max_operand, op in + - *."""
    a, b = rng.randint(0, max_operand), rng.randint(0, max_operand)
    op = rng.choice(sorted(OPERATORS))
    return Conversation("arithmetic", f"What is {a} {op} {b}?", str(OPERATORS[op](a, b)))


def list_task(rng: random.Random, max_items: int = 8) -> Conversation:
    """Sort (ascending), reverse or copy a list of 3..max_items numbers or words, space separated."""
    kind = rng.choice(LIST_TASKS)
    n = rng.randint(3, max_items)
    items = [str(rng.randint(0, 99)) for _ in range(n)] if rng.random() < 0.5 else rng.sample(WORDS, n)
    if kind == "sort":
        answer = sorted(items, key=lambda x: (int(x), x) if x.isdigit() else (0, x))
        return Conversation("lists", f"Sort these: {' '.join(items)}", " ".join(answer))
    if kind == "reverse":
        return Conversation("lists", f"Reverse these: {' '.join(items)}", " ".join(reversed(items)))
    return Conversation("lists", f"Repeat these: {' '.join(items)}", " ".join(items))


def continuation(text: str, task: str = "continuation") -> Conversation | None:
    """Split ``text`` at the word boundary nearest its middle: the model continues the first half.
    None when the text has fewer than 4 words (nothing worth continuing)."""
    words = text.split()
    if len(words) < 4:
        return None
    cut = len(words) // 2
    return Conversation(task, f"Continue this text.\n\n{' '.join(words[:cut])}", " ".join(words[cut:]))


def code_chunks(source: str, lines_in: int = 5, lines_out: int = 3) -> list[Conversation]:
    """Consecutive windows of a Python file: ``lines_in`` lines of context -> the next ``lines_out`` lines.
    Windows that are blank or only comments on either side are left out. 5 + 3 lines: about 170 tokens of the
    bundled tokenizer on average, so most fit training's 256-token limit (12 + 6 lines: 90% would not)."""
    lines = source.splitlines()
    out = []
    step = lines_in + lines_out
    for start in range(0, len(lines) - step + 1, step):
        context, target = lines[start : start + lines_in], lines[start + lines_in : start + step]
        if _has_code(context) and _has_code(target):
            out.append(Conversation("code", "Continue this Python code.\n\n" + "\n".join(context), "\n".join(target)))
    return out


def _has_code(lines: Sequence[str]) -> bool:
    return any(s and not s.startswith("#") for s in (x.strip() for x in lines))


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Share of predictions equal to their reference after stripping white space at both ends."""
    assert len(predictions) == len(references) and references
    return sum(p.strip() == r.strip() for p, r in zip(predictions, references, strict=True)) / len(references)
