"""Translate the text of an HTML (or XML) document and keep its markup, parsed with BeautifulSoup.

The document is cut into units: maximal runs of text and inline elements between block elements (p, li, td,
h1, ...), so a sentence with ``<b>`` inside is translated as one sentence. A run without tags is sent as plain
text. A run with inline tags is sent as markup (LLMs keep tags); when the answer's tags differ from the
original's (the model dropped or invented one), the run falls back to translating each of its text nodes on
its own, so the markup always survives. Never translated: script, style, code, kbd, samp, var, svg, math,
template, and any element with ``translate="no"`` or class ``notranslate`` (and everything inside them).
The translator cuts each unit into sentences only outside tags (``service.segments``, markup mode). A document
nested deeper than ``MAX_DEPTH`` elements is refused (``InvalidInput`` "markup_too_deep"): the walks here recurse.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from bs4 import BeautifulSoup, NavigableString, Tag
from bs4.element import Comment, Declaration, Doctype, ProcessingInstruction

from moe_specialists.service.segments import trim
from moe_specialists.service.translation_errors import InvalidInput

Translate = Callable[[list[str]], Awaitable[list[str]]]
Mode = Literal["html", "xml"]

BLOCK = frozenset([
    "address", "article", "aside", "blockquote", "body", "button", "caption", "dd", "details", "dialog", "div",
    "dl", "dt", "fieldset", "figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6",
    "head", "header", "hr", "html", "label", "legend", "li", "main", "nav", "ol", "optgroup", "option", "p",
    "pre", "section", "summary", "table", "tbody", "td", "tfoot", "th", "thead", "title", "tr", "ul", "br",
])
SKIP = frozenset(["script", "style", "code", "kbd", "samp", "var", "svg", "math", "template", "noscript"])
_NOT_TEXT = (Comment, Declaration, Doctype, ProcessingInstruction)
_ROOT = "moe-fragment"
MAX_DEPTH = 256  # elements inside elements; Python's recursion limit (1000) is the hard one


def skipped(tag: Tag) -> bool:
    return (
        tag.name in SKIP
        or str(tag.get("translate", "")).lower() == "no"
        or "notranslate" in (tag.get("class") or [])
    )


def _is_text(node: object) -> bool:
    return isinstance(node, NavigableString) and not isinstance(node, _NOT_TEXT)


def _has_block(tag: Tag) -> bool:
    return any(isinstance(d, Tag) and d.name in BLOCK for d in tag.descendants)


def _text_nodes(nodes: list) -> list[NavigableString]:
    """The text nodes of ``nodes`` and their descendants, outside skipped elements."""
    out: list[NavigableString] = []
    for node in nodes:
        if _is_text(node):
            out.append(node)
        elif isinstance(node, Tag) and not skipped(node):
            out += _text_nodes(list(node.children))
    return out


def _signature(nodes: list) -> list[str]:
    """The tag names in document order (what a markup answer must keep)."""
    out: list[str] = []
    for node in nodes:
        if isinstance(node, Tag):
            out.append(node.name)
            out += _signature(list(node.children))
    return out


def _tags(nodes: list) -> list[Tag]:
    out: list[Tag] = []
    for node in nodes:
        if isinstance(node, Tag):
            out += [node, *node.find_all(True)]
    return out


def units(root: Tag) -> list[list]:
    """Runs of sibling text / inline nodes with some text, in document order, outside skipped elements."""
    out: list[list] = []
    run: list = []

    def flush() -> None:
        if any(node.strip() for node in _text_nodes(run)):
            out.append(list(run))
        run.clear()

    for child in list(root.children):
        if _is_text(child):
            run.append(child)
        elif not isinstance(child, Tag):
            flush()  # comments, doctype: kept, never translated
        elif child.name in BLOCK or _has_block(child):
            flush()
            if not skipped(child):
                out += units(child)
        else:
            run.append(child)  # inline (a skipped inline element stays in its place)
    flush()
    return out


@dataclass
class _Unit:
    nodes: list
    markup: bool  # sent as markup (has inline tags and nothing skipped)
    lead: str
    text: str
    trail: str


def _serialise(nodes: list) -> str:
    return "".join(n.decode(formatter="minimal") if isinstance(n, Tag) else n.output_ready("minimal") for n in nodes)


def depth(root: Tag) -> int:
    """How many elements deep ``root``'s tree goes below it (walked without recursion)."""
    deepest, todo = 0, [(root, 0)]
    while todo:
        node, d = todo.pop()
        deepest = max(deepest, d)
        todo += [(child, d + 1) for child in node.children if isinstance(child, Tag)]
    return deepest


def parse(document: str, mode: Mode) -> tuple[BeautifulSoup, Tag]:
    """(soup, root): the root holds the document (an XML fragment is wrapped in a private element);
    ``InvalidInput`` for a document nested deeper than ``MAX_DEPTH``."""
    if mode == "xml":
        soup = BeautifulSoup(f"<{_ROOT}>{document}</{_ROOT}>", "xml")
        root = soup.find(_ROOT)
        assert isinstance(root, Tag)
    else:
        soup = root = BeautifulSoup(document, "html.parser")
    found = depth(root)
    if found > MAX_DEPTH:
        raise InvalidInput("markup_too_deep", f"the {mode.upper()} is nested {found} elements deep; the limit is "
                           f"{MAX_DEPTH}: send it flatter, or as text", limit=MAX_DEPTH)
    return soup, root


def _fragment(markup: str, mode: Mode) -> list:
    _, root = parse(markup, mode)
    return list(root.children)


def _render(soup: BeautifulSoup, root: Tag, mode: Mode) -> str:
    if mode == "xml":
        return root.decode_contents(formatter="minimal")
    return soup.decode(formatter="minimal")


def texts_of(document: str, mode: Mode = "html") -> list[str]:
    """The translatable texts of a document (what detection reads)."""
    _, root = parse(document, mode)
    return [t.strip() for run in units(root) for t in _text_nodes(run) if t.strip()]


async def translate_markup(document: str, translate: Translate, mode: Mode = "html") -> str:
    """The document with its text translated by ``translate`` (a batch of texts -> their translations)."""
    soup, root = parse(document, mode)
    work = []
    for run in units(root):
        has_tags = any(isinstance(n, Tag) for n in run)
        markup = has_tags and not any(skipped(t) for t in _tags(run))
        if markup:
            work.append(_Unit(run, True, *trim(_serialise(run))))
        elif not has_tags:
            work.append(_Unit(run, False, *trim("".join(str(n) for n in run))))
        else:
            work += _node_units(run)
    answers = await translate([u.text for u in work]) if work else []
    retry: list[_Unit] = []
    for unit, answer in zip(work, answers, strict=True):
        if unit.markup:
            nodes = _fragment(answer, mode)
            if _signature(nodes) == _signature(unit.nodes):
                for new, orig in zip(_tags(nodes), _tags(unit.nodes), strict=True):
                    new.attrs = dict(orig.attrs)  # attributes (href, class) are never the model's to change
                _replace(unit.nodes, [NavigableString(unit.lead), *nodes, NavigableString(unit.trail)])
            else:
                retry += _node_units(unit.nodes)
        else:
            _replace(unit.nodes, [NavigableString(unit.lead + answer + unit.trail)])
    if retry:
        for unit, answer in zip(retry, await translate([u.text for u in retry]), strict=True):
            _replace(unit.nodes, [NavigableString(unit.lead + answer + unit.trail)])
    return _render(soup, root, mode)


def _node_units(run: list) -> list[_Unit]:
    """One unit per text node of a run (the fallback that keeps every tag where it was)."""
    return [_Unit([t], False, *trim(str(t))) for t in _text_nodes(run) if t.strip()]


def _replace(old: list, new: list) -> None:
    """Put ``new`` where the nodes ``old`` (siblings, in order) were."""
    anchor = old[0]
    for node in new:
        if isinstance(node, NavigableString) and not str(node):
            continue
        anchor.insert_before(node)
    for node in old:
        node.extract()
