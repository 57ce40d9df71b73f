"""The generalist training mixture of the bundled model: translation is a minority task.

A translation-only model has few experts to spare; a generalist's translation uses a fraction of experts that
also serve code, arithmetic and chat, which is what the paper prunes away. ``build_mixture`` writes, from a seed:

    OUT/train.jsonl.gz     {"task", "messages"} conversations, shuffled; counts per task = shares * examples
    OUT/heldout.jsonl.gz   held-out arithmetic, lists and code (never in train) for the task scores
    OUT/manifest.json      the config, counts, the code packages used (name, version, licence), sha256 of both files

Code is Python source of installed packages whose licence is permissive (MIT, BSD, Apache-2.0, ISC, PSF; the
SPDX expression parsed by ``license-expression``); a package without one is refused by name, with the reason.
Translation and continuation rows come from the shared English-X pairs.

    python -m moe_specialists.models.tiny_translator.mixture --pairs pairs.jsonl.gz --out M
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import random
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from license_expression import AND, OR, LicenseSymbol, LicenseWithExceptionSymbol, get_spdx_licensing
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from moe_specialists.models.prompts import instruction
from moe_specialists.models.rounding import hamilton_round
from moe_specialists.models.tiny_translator import tasks
from moe_specialists.models.tiny_translator.tasks import Conversation

TASKS = ("translation", "code", "arithmetic", "lists", "continuation")
HELD_OUT_TASKS = ("arithmetic", "lists", "code")
# Pairs from these sources are independent captions of one image, not translations of each other.
NOT_TRANSLATIONS = ("multi30k_task2",)
PERMISSIVE_SPDX = {"MIT", "BSD-2-Clause", "BSD-3-Clause", "Apache-2.0", "ISC", "PSF-2.0", "0BSD"}
PERMISSIVE_CLASSIFIERS = {"MIT License", "BSD License", "Apache Software License", "ISC License (ISCL)",
                          "Python Software Foundation License"}
_SPDX = get_spdx_licensing()  # the SPDX licence list bundled with license-expression (no network)
DEFAULT_CODE_PACKAGES = ["click", "fastapi", "httpx", "jinja2", "pydantic", "requests", "rich", "starlette", "typer",
                         "uvicorn"]


class MixtureConfig(BaseModel):
    """What ``build_mixture`` writes. ``shares`` are fractions of ``examples`` per task (they sum to 1)."""

    model_config = ConfigDict(extra="forbid")

    pairs: Path
    out: Path
    examples: int = Field(200_000, gt=0)
    shares: dict[str, float] = {"translation": 0.3, "code": 0.2, "arithmetic": 0.2, "lists": 0.1,
                                "continuation": 0.2}
    heldout: int = Field(300, ge=0, description="held-out conversations per task of HELD_OUT_TASKS")
    code_packages: list[str] = DEFAULT_CODE_PACKAGES
    seed: int = 0

    @field_validator("shares")
    @classmethod
    def _known_tasks(cls, shares: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(shares) - set(TASKS))
        if unknown:
            raise ValueError(f"unknown tasks {unknown}; tasks are {list(TASKS)}")
        if any(v < 0 for v in shares.values()) or abs(sum(shares.values()) - 1) > 1e-6:
            raise ValueError(f"shares must be >= 0 and sum to 1, got {shares} (sum {sum(shares.values()):.4f})")
        return shares

    @model_validator(mode="after")
    def _inputs_exist(self) -> MixtureConfig:
        if self.shares.get("translation", 0) + self.shares.get("continuation", 0) > 0 and not self.pairs.is_file():
            raise ValueError(f"pairs file {self.pairs} not found (translation and continuation rows come from it)")
        if self.shares.get("code", 0) > 0:
            for name in self.code_packages:
                code_package_licence(name)  # refuses a missing or non-permissive package before any work
        return self


def task_counts(shares: dict[str, float], total: int) -> dict[str, int]:
    """Hamilton rounding (``models.rounding``) of shares * total, so the counts sum to ``total``."""
    return dict(zip(TASKS, hamilton_round([shares.get(t, 0.0) * total for t in TASKS], total), strict=True))


def licence_problem(expression: str | None, classifiers: list[str]) -> str | None:
    """Why a package's licence is not permissive, or None when it is. An SPDX expression (any case, parsed by
    ``license-expression``) is permissive when it can be met with permissive licences alone: ``A AND B`` needs
    both permissive, ``A OR B`` one of them (the user may choose it), ``A WITH exception`` is A (an exception
    only adds permissions). Unknown ids and malformed expressions are refused, saying which. Without an
    expression, a 'License :: OSI Approved :: <name>' classifier of a permissive licence is enough."""
    if not (expression and expression.strip()):
        names = [c.rsplit(" :: ", 1)[-1] for c in classifiers if c.startswith("License ::")]
        if any(n in PERMISSIVE_CLASSIFIERS for n in names):
            return None
        return f"no permissive licence classifier ({names or 'none'})" if names else "no licence declared"
    info = _SPDX.validate(expression)
    if info.errors:
        return f"{expression!r} is not an SPDX expression of known ids: {'; '.join(info.errors)}"
    if not _permissive(_SPDX.parse(expression)):
        return f"{expression!r} is not permissive"
    return None


def _permissive(node) -> bool:
    if isinstance(node, OR):
        return any(_permissive(a) for a in node.args)
    if isinstance(node, AND):
        return all(_permissive(a) for a in node.args)
    if isinstance(node, LicenseWithExceptionSymbol):
        return _permissive(node.license_symbol)
    return isinstance(node, LicenseSymbol) and node.key in PERMISSIVE_SPDX


def is_permissive(expression: str | None, classifiers: list[str]) -> bool:
    """``licence_problem(expression, classifiers) is None``."""
    return licence_problem(expression, classifiers) is None


def code_package_licence(name: str) -> dict[str, str]:
    """{"name", "version", "licence"} of an installed package with a permissive licence; ValueError otherwise."""
    try:
        meta = distribution(name).metadata
    except PackageNotFoundError:
        raise ValueError(f"code package {name!r} is not installed") from None
    expression = meta.get("License-Expression")
    legacy = (meta.get("License") or "").strip()
    if not expression and legacy and not _SPDX.validate(legacy).errors:
        expression = legacy  # the old free-text field, when it holds an SPDX expression (else: classifiers)
    classifiers = meta.get_all("Classifier") or []
    if problem := licence_problem(expression, classifiers):
        raise ValueError(f"code package {name!r} has no permissive licence: {problem}; "
                         f"accepted: {sorted(PERMISSIVE_SPDX)}")
    licence = expression or next(c.rsplit(" :: ", 1)[-1] for c in classifiers if c.startswith("License ::"))
    return {"name": name, "version": meta["Version"], "licence": licence}


def python_files(name: str) -> list[tuple[str, str]]:
    """(path inside the distribution, source) of the package's .py files, sorted by path."""
    files = distribution(name).files or []
    out = []
    for f in sorted(files, key=str):
        if f.suffix == ".py" and "/tests/" not in f"/{f}":
            path = Path(f.locate())
            if path.is_file():
                out.append((str(f), path.read_text(encoding="utf-8", errors="replace")))
    return out


def _held_out(key: str) -> bool:
    """One key in ten is held out, by hash (stable across runs and machines)."""
    return hashlib.sha256(key.encode()).digest()[0] % 10 == 0


def _pair_rows(pairs: Path) -> list[dict]:
    with gzip.open(pairs, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    return [r for r in rows if not r.get("source", "").startswith(NOT_TRANSLATIONS)]


def _translations(rows: list[dict], n: int, rng: random.Random) -> list[Conversation]:
    """n translation conversations, both directions of random pairs (the translation prompt of models.prompts)."""
    out = []
    for _ in range(n):
        r = rng.choice(rows)
        s, t, x, y = ("en", r["lang"], r["en"], r["xx"]) if rng.random() < 0.5 else (r["lang"], "en", r["xx"], r["en"])
        out.append(Conversation("translation", instruction(s, t, x), y))
    return out


def _continuations(rows: list[dict], n: int, rng: random.Random) -> list[Conversation]:
    out: list[Conversation] = []
    while len(out) < n:
        r = rng.choice(rows)
        if (c := tasks.continuation(r["en"] if rng.random() < 0.5 else r["xx"])) is not None:
            out.append(c)
    return out


def _generated(make, n: int, heldout: int, rng: random.Random) -> tuple[list[Conversation], list[Conversation]]:
    """n training and ``heldout`` held-out conversations of a task maker; a prompt is held out by its hash, so no
    held-out question is ever trained on."""
    train: list[Conversation] = []
    held: dict[str, Conversation] = {}
    tries = 0
    while len(train) < n or len(held) < heldout:
        tries += 1
        assert tries < 100 * (n + heldout) + 1000, "the task maker cannot produce enough distinct examples"
        c = make(rng)
        if _held_out(c.user):
            if len(held) < heldout:
                held.setdefault(c.user, c)
        elif len(train) < n:
            train.append(c)
    return train, list(held.values())


def _code(packages: list[str], n: int, heldout: int, rng: random.Random) -> tuple[list[Conversation],
                                                                                  list[Conversation]]:
    """Code windows; whole files are held out by the hash of their path. Training windows are sampled with
    replacement when fewer than n exist."""
    train, held = [], []
    for name in packages:
        for path, source in python_files(name):
            (held if _held_out(f"{name}/{path}") else train).extend(tasks.code_chunks(source))
    if not train:
        raise ValueError(f"no code found in {packages}")
    rng.shuffle(held)
    return [rng.choice(train) for _ in range(n)], held[:heldout]


def conversations(config: MixtureConfig) -> tuple[list[Conversation], list[Conversation]]:
    """(train, held-out) conversations of the mixture, shuffled, from ``config.seed`` alone."""
    rng = random.Random(config.seed)
    counts = task_counts(config.shares, config.examples)
    rows = _pair_rows(config.pairs) if counts["translation"] + counts["continuation"] else []
    train: list[Conversation] = []
    held: list[Conversation] = []
    train += _translations(rows, counts["translation"], rng)
    train += _continuations(rows, counts["continuation"], rng)
    for task, make in (("arithmetic", tasks.arithmetic), ("lists", tasks.list_task)):
        t, h = _generated(make, counts[task], config.heldout, rng)
        train, held = train + t, held + h
    if counts["code"] or config.heldout:
        t, h = _code(config.code_packages, counts["code"], config.heldout, rng)
        train, held = train + t, held + h
    rng.shuffle(train)
    return train, held


def write_jsonl(path: Path, rows: list[Conversation]) -> str:
    """Write {"task", "messages"} rows (gzip with mtime 0, so equal rows give equal bytes); return the sha256."""
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
        for c in rows:
            f.write((json.dumps({"task": c.task, "messages": c.messages()}, ensure_ascii=False) + "\n").encode())
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_jsonl(path: Path) -> Iterator[Conversation]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            user, assistant = row["messages"]
            yield Conversation(row["task"], user["content"], assistant["content"])


def build_mixture(config: MixtureConfig) -> dict:
    """Write train.jsonl.gz, heldout.jsonl.gz and manifest.json under ``config.out``; return the manifest."""
    train, held = conversations(config)
    config.out.mkdir(parents=True, exist_ok=True)
    manifest = {
        "config": config.model_dump(mode="json"),
        "counts": {t: sum(c.task == t for c in train) for t in TASKS},
        "heldout_counts": {t: sum(c.task == t for c in held) for t in HELD_OUT_TASKS},
        "code_packages": [code_package_licence(name) for name in config.code_packages] if config.shares.get("code")
        else [],
        "sha256": {"train.jsonl.gz": write_jsonl(config.out / "train.jsonl.gz", train),
                   "heldout.jsonl.gz": write_jsonl(config.out / "heldout.jsonl.gz", held)},
    }
    (config.out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--examples", type=int, default=200_000)
    p.add_argument("--heldout", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    manifest = build_mixture(MixtureConfig(**vars(args)))
    print(json.dumps({k: manifest[k] for k in ("counts", "heldout_counts", "sha256")}, indent=2))


if __name__ == "__main__":
    main()
