"""Segmentation and rebuilding (service.segments): exact segments and gaps, written out by hand."""

import pytest

from moe_specialists.service.segments import (
    Segmented,
    flatten_newlines,
    keep_format,
    lines,
    pack,
    rebuild,
    safe_cuts,
    segment,
    split_long,
    trim,
)

TWO_PARAGRAPHS = ("The weather is nice today. The children are playing in the garden.\n\n"
                  "We are going to the park tomorrow.")


def test_paragraphs_kept():
    seg = segment(TWO_PARAGRAPHS, "en")
    assert seg == Segmented(
        ("The weather is nice today.", "The children are playing in the garden.", "We are going to the park tomorrow."),
        ("", " ", "\n\n", ""),
    )
    assert rebuild(seg, ["A.", "B.", "C."]) == "A. B.\n\nC."


def test_leading_and_trailing_whitespace_kept():
    seg = segment("  \tMy bike is red.  Yours is blue?\n\n", "en")
    assert seg == Segmented(("My bike is red.", "Yours is blue?"), ("  \t", "  ", "\n\n"))
    assert rebuild(seg, ["x", "y"]) == "  \tx  y\n\n"


@pytest.mark.parametrize("blank", ["", " ", "\n\n", " \t\r\n "])
def test_blank_text_has_no_segment(blank):
    seg = segment(blank, "de")
    assert seg == Segmented((), (blank,)) and rebuild(seg, []) == blank


def test_line_breaks_split_by_default_not_with_nonewlines_nor_none():
    text = "Dear Anna,\nthank you for the book.\r\nSee you soon"
    assert segment(text, "en") == Segmented(
        ("Dear Anna,", "thank you for the book.", "See you soon"), ("", "\n", "\r\n", ""))
    assert segment(text, "en", "nonewlines") == Segmented(
        ("Dear Anna,\nthank you for the book.", "See you soon"), ("", "\r\n", ""))
    assert segment(text, "en", "none") == Segmented((text,), ("", ""))
    assert flatten_newlines("Dear Anna,\nthank you.\r\n  Bye") == "Dear Anna, thank you. Bye"


def test_german_abbreviations_do_not_end_a_sentence():
    seg = segment("Wir treffen uns z. B. am Bahnhof. Dann gehen wir essen.", "de")
    assert seg.texts == ("Wir treffen uns z. B. am Bahnhof.", "Dann gehen wir essen.")


def test_cjk():
    seg = segment("今日は雨です。明日は晴れるでしょう。", "ja")
    assert seg == Segmented(("今日は雨です。", "明日は晴れるでしょう。"), ("", "", ""))
    # no spaces to cut at: a clause mark, then every max_chars characters
    seg = segment("今日は雨ですが、明日は晴れるでしょう。", "ja", max_chars=6)
    assert seg.texts == ("今日は雨です", "が、", "明日は晴れる", "でしょう。")
    assert seg.source() == "今日は雨ですが、明日は晴れるでしょう。"


def test_long_segment_split_at_clauses_then_words_never_truncated():
    text = "We took the early train, because the road was closed; nobody at the station knew when it would open"
    assert split_long(text, 40) == [
        "We took the early train, ", "because the road was closed; ",
        "nobody at the station knew when it ", "would open",
    ]
    seg = segment(text + ".", "en", max_chars=40)
    assert seg.texts == ("We took the early train,", "because the road was closed;",
                         "nobody at the station knew when it", "would open.")
    assert seg.gaps == ("", " ", " ", " ", "")
    assert split_long("abcdefghijk", 4) == ["abcd", "efgh", "ijk"]
    assert split_long("short", 40) == ["short"]


def test_pack_and_trim_and_lines():
    assert pack(["ab", "cd", "efg", "h"], 4) == ["abcd", "efgh"]
    assert pack(["abcdef", "g"], 4) == ["abcdef", "g"]
    assert trim("  x y \n") == ("  ", "x y", " \n") and trim(" \n") == (" \n", "", "")
    assert lines("a\nb\r\n\nc") == ["a\n", "b\r\n", "\n", "c"]


def test_markup_cut_only_outside_inline_elements():
    run = 'Our <b>shop opens. It</b> closes late. Ask <a href="/a.b">at the desk</a>. Thanks.'
    seg = segment(run, "en", markup=True)
    assert seg.texts == ("Our <b>shop opens. It</b> closes late.", 'Ask <a href="/a.b">at the desk</a>.', "Thanks.")
    # offsets 0..16 of a0 <1 b2 >3 c4 <5 /6 b7 >8 d9 <10 b11 r12 /13 >14 e15: none inside <b>...</b> or a tag
    assert safe_cuts("a<b>c</b>d<br/>e") == {0, 1, 9, 10, 15, 16}


@pytest.mark.parametrize("text", [
    TWO_PARAGRAPHS, "  One.\n\n\n Two!  Three?\r\n", "Ein Satz. Noch einer.\nUnd hier, ohne Punkt", "x", "   ",
    "今日は雨です。明日は晴れるでしょう。", "a " * 300 + "end.",
])
@pytest.mark.parametrize("mode", ["sentences", "nonewlines", "none"])
@pytest.mark.parametrize("max_chars", [None, 7, 50])
def test_join_round_trip(text, mode, max_chars):
    seg = segment(text, "en", mode, max_chars)
    assert seg.source() == text
    assert all(t == t.strip() and t for t in seg.texts)
    if max_chars is not None:
        assert all(len(t) <= max_chars for t in seg.texts)


def test_keep_format():
    assert keep_format("see you tomorrow", "Bis morgen.") == "bis morgen"
    assert keep_format("Good night.", "gute Nacht.") == "Gute Nacht."
    assert keep_format("- item one", "- Punkt eins") == "- punkt eins"
    assert keep_format("Hello", "") == ""
