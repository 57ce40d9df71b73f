"""HTML/XML translation keeps the markup (service.markup), with a stand-in translator (upper-casing: what
matters here is where text goes, not its language; the engines are tested in test_clients.py)."""

import asyncio
import re

import pytest

from moe_specialists.service.markup import texts_of, translate_markup

DOC = """<!DOCTYPE html><html><head><title>My page</title><style>p{color:red}</style></head><body>
<h1>Hello  world</h1><p>The <b>cat</b> sleeps &amp; <a href="x" title="t">dreams</a>.</p>
<p>Run <code>ls -l</code> now</p><div translate="no">Keep me</div>
<ul><li>one</li><li>two <span class="notranslate">Brand</span></li></ul>
<script>var a = "text";</script><!-- a comment --><pre>  spaced  </pre><p>a<br>b</p></body></html>"""


def run(doc, fn, mode="html"):
    calls = []

    async def translate(texts):
        calls.append(list(texts))
        return [fn(t) for t in texts]

    return asyncio.run(translate_markup(doc, translate, mode)), calls


def tags(html):
    return re.findall(r"<[^>]+>", html)


def test_markup_kept_text_translated():
    out, calls = run(DOC, str.upper)
    assert tags(out) == tags(DOC.replace("<br>", "<br/>"))
    for kept in ("Keep me", "ls -l", "Brand", 'var a = "text";', "p{color:red}", "<!-- a comment -->"):
        assert kept in out
    for done in ("MY PAGE", "HELLO  WORLD", "<b>CAT</b>", "DREAMS", "RUN", "NOW", "ONE", "TWO", "  SPACED  ",
                 "<p>A<br/>B</p>"):
        assert done in out
    # one batch: the sentence with inline tags goes as markup, in one piece
    assert len(calls) == 1 and 'The <b>cat</b> sleeps &amp; <a href="x" title="t">dreams</a>.' in calls[0]


def test_model_that_drops_tags_falls_back_to_text_nodes():
    out, calls = run(DOC, lambda t: re.sub(r"<[^>]+>", "", t).upper())
    assert tags(out) == tags(DOC.replace("<br>", "<br/>"))
    assert "<b>CAT</b>" in out and '<a href="x" title="t">DREAMS</a>' in out
    assert len(calls) == 2 and calls[1] == ["The", "cat", "sleeps &", "dreams", "."]


def test_model_cannot_change_attributes():
    out, _ = run('<p>Go <a href="/x" class="btn">home</a></p>', lambda t: t.replace('"/x"', '"/evil"').upper())
    assert out == '<p>GO <a class="btn" href="/x">HOME</a></p>'  # (bs4 writes attributes sorted)


def test_plain_text_and_entities():
    out, calls = run("plain &lt; text", str.upper)
    assert out == "PLAIN &lt; TEXT" and calls == [["plain < text"]]


def test_nothing_to_translate():
    out, calls = run("<p> </p><script>x</script>", str.upper)
    assert out == "<p> </p><script>x</script>" and calls == []


def test_xml():
    out, _ = run("<doc><t>Hello <b>there</b></t><skip translate='no'>x</skip></doc>", str.upper, "xml")
    assert out == '<doc><t>HELLO <b>THERE</b></t><skip translate="no">x</skip></doc>'


def test_texts_of():
    assert texts_of(DOC)[:4] == ["My page", "Hello  world", "The", "cat"]


@pytest.mark.parametrize(
    ("bad", "sent", "expected"),
    [
        ("<p>unclosed", ["unclosed"], "<p>UNCLOSED</p>"),  # the element is closed where the document ends
        ("<<<>>>", ["<<<>>>"], "&lt;&lt;&lt;&gt;&gt;&gt;"),  # no tag: text, translated and written escaped
        ("</p></div>", [], ""),  # end tags with no start: dropped, nothing to translate
        # an unterminated attribute value: the would-be start tag is text (escaped), the stray </p> is dropped
        ("<p a='1>x</p>", ["<p a='1>x"], "&lt;P A='1&gt;X"),
    ],
)
def test_broken_html_is_read_as_the_parser_reads_it(bad, sent, expected):
    out, calls = run(bad, str.upper)
    assert out == expected and calls == ([sent] if sent else [])


def test_nesting_deeper_than_the_limit_refused():
    from moe_specialists.service.markup import MAX_DEPTH, depth, parse
    from moe_specialists.service.translation_errors import InvalidInput

    assert depth(parse("<p>a<b>b<i>c</i></b></p><p>d</p>", "html")[1]) == 3
    ok = "<i>" * MAX_DEPTH + "x" + "</i>" * MAX_DEPTH
    assert run(ok, str.upper)[0] == ok.replace("x", "X")
    with pytest.raises(InvalidInput, match=f"nested {MAX_DEPTH + 1} elements deep; the limit is {MAX_DEPTH}"):
        run("<i>" + ok + "</i>", str.upper)
