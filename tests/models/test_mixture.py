"""The generalist mixture: task makers and scores by hand, licences decided on parsed SPDX expressions, the
builder reproducible and leak-free (a toy trained on it: tests/pruning/test_tiny_training.py)."""

from __future__ import annotations

import random

import pytest

from moe_specialists.models.tiny_translator.mixture import (
    MixtureConfig,
    build_mixture,
    is_permissive,
    licence_problem,
    read_jsonl,
    task_counts,
)
from moe_specialists.models.tiny_translator.tasks import (
    Conversation,
    arithmetic,
    code_chunks,
    continuation,
    exact_match,
    list_task,
)


def test_arithmetic_answers_are_right():
    rng = random.Random(1)
    for _ in range(200):
        c = arithmetic(rng)
        a, op, b = c.user.removeprefix("What is ").removesuffix("?").split()
        assert int(c.assistant) == {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]


def test_list_tasks_by_hand():
    rng = random.Random(3)
    seen = set()
    for _ in range(200):
        c = list_task(rng)
        kind, items = c.user.split(": ", 1)
        items = items.split()
        seen.add(kind)
        if kind == "Sort these":
            key = (lambda x: int(x)) if items[0].isdigit() else None
            assert c.assistant.split() == sorted(items, key=key)
        elif kind == "Reverse these":
            assert c.assistant.split() == items[::-1]
        else:
            assert c.assistant.split() == items
    assert seen == {"Sort these", "Reverse these", "Repeat these"}
    assert Conversation("lists", "Sort these: 10 9 100", "9 10 100").assistant == "9 10 100"  # numeric order


def test_continuation_splits_at_the_middle_word():
    c = continuation("one two three four five")
    assert (c.user, c.assistant) == ("Continue this text.\n\none two", "three four five")
    assert continuation("too short here") is None


def test_code_chunks_skip_windows_without_code():
    source = "\n".join([f"x{i} = {i}" for i in range(12)] + ["# only", "", "# comments", "", "", ""]
                       + [f"y{i} = {i}" for i in range(18)])
    chunks = code_chunks(source, lines_in=12, lines_out=6)
    assert len(chunks) == 1  # the first window's target is only comments; the second is code on both sides
    assert chunks[0].user.endswith("y11 = 11") and chunks[0].assistant.splitlines() == [
        f"y{i} = {i}" for i in range(12, 18)]


def test_exact_match_by_hand():
    assert exact_match(["42", " 7 ", "x"], ["42", "7", "y"]) == pytest.approx(2 / 3)


def test_task_counts_hamilton():
    shares = {"translation": 0.3, "code": 0.2, "arithmetic": 0.2, "lists": 0.1, "continuation": 0.2}
    # 7 * shares = 2.1, 1.4, 1.4, 0.7, 1.4 -> floors 2, 1, 1, 0, 1 (5); the 2 left go to lists (.7), then code
    assert task_counts(shares, 7) == {"translation": 2, "code": 2, "arithmetic": 1, "lists": 1, "continuation": 1}
    # 10 * shares are whole numbers: nothing left over
    assert task_counts(shares, 10) == {"translation": 3, "code": 2, "arithmetic": 2, "lists": 1, "continuation": 2}
    assert task_counts({"code": 1.0}, 3) == {"translation": 0, "code": 3, "arithmetic": 0, "lists": 0,
                                             "continuation": 0}


@pytest.mark.parametrize(
    ("expression", "classifiers", "ok"),
    [
        ("MIT", [], True),
        ("Apache-2.0 OR BSD-2-Clause", [], True),
        ("MPL-2.0 AND MIT", [], False),  # AND: every term must be permissive
        ("GPL-3.0-only", [], False),
        ("(MIT OR Apache-2.0) AND GPL-3.0-only", [], False),  # the GPL term is not optional
        ("(MIT OR GPL-3.0-only) AND BSD-3-Clause", [], True),  # OR: one permissive choice is enough
        ("GPL-3.0-only OR (MIT AND ISC)", [], True),
        ("mit", [], True),  # ids and operators in any case
        ("apache-2.0 or gpl-3.0-only", [], True),
        ("Apache-2.0 WITH LLVM-exception", [], True),  # an exception only adds permissions
        ("GPL-2.0-only WITH Classpath-exception-2.0", [], False),
        ("MIT", ["License :: OSI Approved :: GNU General Public License v3 (GPLv3)"], True),  # the expression wins
        (None, ["License :: OSI Approved :: BSD License"], True),
        ("", ["License :: OSI Approved :: MIT License"], True),
        (None, ["Programming Language :: Python"], False),
        (None, ["License :: OSI Approved :: GNU General Public License v3 (GPLv3)"], False),
    ],
)
def test_licences(expression, classifiers, ok):
    assert is_permissive(expression, classifiers) is ok


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        ("(MIT OR Apache-2.0) AND GPL-3.0-only", "'(MIT OR Apache-2.0) AND GPL-3.0-only' is not permissive"),
        ("Foo-1.0 OR MIT", "Unknown license key(s): Foo-1.0"),  # refused, though MIT is a choice
        ("MIT AND (", "Invalid expression"),
        ("BSD License", "Unknown license key(s): BSD License"),  # a classifier's name is no SPDX id
    ],
)
def test_licence_refusals_say_why(expression, reason):
    problem = licence_problem(expression, [])
    assert problem is not None and reason in problem
    assert licence_problem(None, []) == "no licence declared"


def test_bad_configs_are_refused_before_any_work(tmp_path, sample_pairs):
    with pytest.raises(ValueError, match="sum to 1"):
        MixtureConfig(pairs=sample_pairs, out=tmp_path, shares={"translation": 0.5, "code": 0.2})
    with pytest.raises(ValueError, match="tasks are"):
        MixtureConfig(pairs=sample_pairs, out=tmp_path, shares={"translation": 0.5, "poetry": 0.5})
    with pytest.raises(ValueError, match="'tqdm' has no permissive licence: 'MPL-2.0 AND MIT' is not permissive"):
        MixtureConfig(pairs=sample_pairs, out=tmp_path, code_packages=["tqdm"])
    with pytest.raises(ValueError, match="not installed"):
        MixtureConfig(pairs=sample_pairs, out=tmp_path, code_packages=["no-such-package-here"])
    with pytest.raises(ValueError, match="pairs file"):
        MixtureConfig(pairs=tmp_path / "missing.jsonl.gz", out=tmp_path)



def test_mixture_is_reproducible_and_holds_out_what_it_scores(tmp_path, sample_pairs):
    config = MixtureConfig(pairs=sample_pairs, out=tmp_path / "a", examples=1000, heldout=40, seed=5)
    first = build_mixture(config)
    again = build_mixture(config.model_copy(update={"out": tmp_path / "b"}))
    other = build_mixture(config.model_copy(update={"out": tmp_path / "c", "seed": 6}))
    assert first["sha256"] == again["sha256"] and first["sha256"] != other["sha256"]
    assert first["counts"] == {"translation": 300, "code": 200, "arithmetic": 200, "lists": 100, "continuation": 200}
    assert first["heldout_counts"] == {"arithmetic": 40, "lists": 40, "code": 40}
    assert {p["name"] for p in first["code_packages"]} == set(config.code_packages)
    train = list(read_jsonl(tmp_path / "a" / "train.jsonl.gz"))
    held = list(read_jsonl(tmp_path / "a" / "heldout.jsonl.gz"))
    assert not {c.user for c in held} & {c.user for c in train}, "a held-out prompt was trained on"
    translation = [c for c in train if c.task == "translation"]
    starts = {c.user.split(".")[0] for c in translation}
    assert any(s.startswith("Translate this passage from English to") for s in starts)
    assert any(s.endswith(" to English") for s in starts), "both directions"
    assert len(translation) / len(train) < 0.5, "translation is a minority task"
