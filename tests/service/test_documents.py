"""Files translated with their structure kept (service.documents), with a stand-in translator (upper-casing),
chunks within the limits, and the download store."""

import asyncio

import pytest

from moe_specialists.service.documents import FileStore, chunks, translate_file


def run(name, text):
    async def up(texts):
        return [t.upper() for t in texts]

    return asyncio.run(translate_file(name, text, up))


def test_txt():
    assert run("a.txt", "line one\n\n  line two  \r\nend") == "LINE ONE\n\n  LINE TWO  \r\nEND"


def test_srt():
    srt = "1\n00:00:01,000 --> 00:00:02,000\nHello there\nmy friend\n\n2\n00:00:03,000 --> 00:00:04,500\nBye\n"
    assert run("a.SRT", srt) == ("1\n00:00:01,000 --> 00:00:02,000\nHELLO THERE MY FRIEND\n\n"
                                 "2\n00:00:03,000 --> 00:00:04,500\nBYE\n")


def test_md():
    md = "# Title\n\nSome *text*.\n\n- item\n1. first\n> quote\n\n```py\nprint(1)\n```\n| a | b |\n|---|---|\n"
    assert run("r.md", md) == ("# TITLE\n\nSOME *TEXT*.\n\n- ITEM\n1. FIRST\n> QUOTE\n\n```py\nprint(1)\n```\n"
                               "| A | B |\n|---|---|\n")


def test_html():
    assert run("p.html", "<p>Hi <b>you</b></p>") == "<p>HI <b>YOU</b></p>"


@pytest.mark.parametrize("name", ["a.pdf", "a.docx", "noext"])
def test_other_types_refused(name):
    with pytest.raises(ValueError, match="accepted: .txt, .html, .htm, .srt, .md"):
        run(name, "x")


def test_chunks():
    assert chunks(["a", "bb", "ccc", "d"], 2, 4) == [["a", "bb"], ["ccc", "d"]]
    assert chunks(["a", "bb", "ccc", "d"], 10, 3) == [["a", "bb"], ["ccc"], ["d"]]
    assert chunks(["toolong"], 10, 3) == [["toolong"]]
    assert chunks([], 2, 4) == []


def test_file_store_evicts_oldest():
    store = FileStore(max_files=2)
    a = store.put("a.txt", b"a", "text/plain")
    b = store.put("b.txt", b"b", "text/plain")
    c = store.put("c.txt", b"c", "text/plain")
    assert store.get(a) is None and store.get(b).content == b"b" and store.get(c).name == "c.txt"
    assert c.endswith(".c.txt")


@pytest.mark.parametrize(("srt", "line"), [
    ("1\n00:00:01,000 --> 00:00:02,000\nHi\n\n2\n00:00:03 -> 00:00:04\nBye\n", 6),  # the second cue's timing
    ("\n\nJust some words\nand more\n", 3),  # no number: its first line
])
def test_srt_without_timing_refused_naming_the_line(srt, line):
    from moe_specialists.service.translation_errors import InvalidInput

    with pytest.raises(InvalidInput, match=f"^line {line} of the SubRip file") as e:
        run("a.srt", srt)
    assert e.value.details == {"line": line}


def test_file_type_read_text_and_attachment():
    from moe_specialists.service.documents import attachment, file_type, read_text
    from moe_specialists.service.translation_errors import InvalidInput, TooLarge

    assert file_type("C:\\docs\\Report.HTML") == ("Report.HTML", ".html")
    with pytest.raises(InvalidInput, match="'.pdf' is not accepted; accepted: .txt, .html, .htm, .srt, .md"):
        file_type("a.pdf")
    assert read_text("\ufeffGrüße".encode(), 5) == "Grüße"  # the BOM dropped, 5 characters (7 bytes)
    with pytest.raises(TooLarge, match="more than 4 characters"):
        read_text("Grüße".encode(), 4)
    with pytest.raises(InvalidInput, match="not UTF-8"):
        read_text(b"\xff\xfe", 10)
    assert attachment('Über "x".txt') == ('attachment; filename="_ber _x_.txt"; '
                                          "filename*=UTF-8''%C3%9Cber%20%22x%22.txt")
