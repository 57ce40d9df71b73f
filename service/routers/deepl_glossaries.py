"""DeepL's glossary API, as deepl-python's ``create_glossary`` / ``create_multilingual_glossary`` and friends call
it; storage and parsing in ``service.glossaries``, enforcement in ``service.terms``.

* v2 (one language pair): ``POST /v2/glossaries`` (``name``, ``source_lang``, ``target_lang``, ``entries``,
  ``entries_format`` tsv | csv) -> 201 ``{glossary_id, name, ready, source_lang, target_lang, creation_time,
  entry_count}``; ``GET /v2/glossaries`` -> ``{"glossaries": [...]}`` (those with one dictionary);
  ``GET /v2/glossaries/{id}``; ``GET /v2/glossaries/{id}/entries`` (text/tab-separated-values);
  ``DELETE /v2/glossaries/{id}`` -> 204; ``GET /v2/glossary-language-pairs`` (every served direction).
* v3 (multilingual): ``POST /v3/glossaries`` (``name``, ``dictionaries: [{source_lang, target_lang, entries,
  entries_format}]``) -> 201 ``{glossary_id, name, dictionaries: [{source_lang, target_lang, entry_count}],
  creation_time}``; ``GET /v3/glossaries``, ``GET /v3/glossaries/{id}``, ``GET /v3/glossaries/{id}/entries
  ?source_lang=&target_lang=`` -> ``{"dictionaries": [{..., "entries" (TSV), "entries_format": "tsv"}]}``,
  ``DELETE /v3/glossaries/{id}`` and ``DELETE /v3/glossaries/{id}/dictionaries?source_lang=&target_lang=``;
  ``PATCH /v3/glossaries/{id}`` (``name`` and/or ``dictionaries``: entries merged into the pair's dictionary, or
  a new one) and ``PUT /v3/glossaries/{id}/dictionaries`` (one dictionary replaced or added).

A glossary belongs to the API key that made it (``glossaries.owner_of``). Errors: ``{"message"}``, 400 bad
entries or languages, 404 unknown id (deepl-python raises ``GlossaryNotFoundException``)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from moe_specialists.service.errors import ApiError
from moe_specialists.service.glossaries import (
    Dictionary,
    Glossary,
    GlossaryStore,
    check_name,
    merged,
    new_glossary,
    owner_of,
    parse_entries,
    to_tsv,
    with_dictionary,
)
from moe_specialists.service.routers.deepl import DeepLRoute, _authorise, _body
from moe_specialists.service.routers.languages import served_languages
from moe_specialists.service.translation import Translator
from moe_specialists.service.translation_errors import InvalidGlossary

router = APIRouter(tags=["deepl"], route_class=DeepLRoute)


def _store(request: Request) -> GlossaryStore:
    return request.app.state.glossaries


async def _owner(request: Request) -> tuple[str, dict[str, Any]]:
    """(owner of the request's glossaries, its body fields): the key checked as on /v2/translate."""
    data = await _body(request)
    key = _authorise(request, data)
    return owner_of(request.app.state.settings.api_keys, key), data


def _text(data: dict[str, Any], name: str) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value.strip():
        raise ApiError(400, "invalid_request", f"Bad request: {name}: a non-empty string is required")
    return value


def language(translator: Translator, field: str, code: str) -> str:
    """A glossary's language: the served language ``code`` answers (canonical; regions dropped, as DeepL's
    glossaries apply to every variant)."""
    return translator.language(field, code, translator.accepted())


def spelled(code: str) -> str:
    """How DeepL's glossary answers spell a language: ``en``, ``de``."""
    return code.lower()


def dictionary(request: Request, d: dict[str, Any]) -> Dictionary:
    """One dictionary from a v2 body or a v3 ``dictionaries`` item."""
    translator: Translator = request.app.state.translator
    source = language(translator, "source_lang", _text(d, "source_lang"))
    target = language(translator, "target_lang", _text(d, "target_lang"))
    entries_format = str(d.get("entries_format") or "tsv").strip().lower()
    entries = parse_entries(_text(d, "entries"), entries_format, source, target,
                            request.app.state.settings.max_glossary_entries)
    return Dictionary(source, target, entries)


def v2_info(g: Glossary) -> dict:
    (d,) = g.dictionaries
    return {"glossary_id": g.glossary_id, "name": g.name, "ready": True, "source_lang": spelled(d.source_lang),
            "target_lang": spelled(d.target_lang), "creation_time": g.creation_time, "entry_count": len(d.entries)}


def v3_info(g: Glossary) -> dict:
    return {"glossary_id": g.glossary_id, "name": g.name, "creation_time": g.creation_time,
            "dictionaries": [{"source_lang": spelled(d.source_lang), "target_lang": spelled(d.target_lang),
                              "entry_count": len(d.entries)} for d in g.dictionaries]}


def _v2(g: Glossary) -> Glossary:
    if len(g.dictionaries) != 1:
        raise InvalidGlossary("glossary_multilingual", f"Bad request: glossary {g.glossary_id} has "
                              f"{len(g.dictionaries)} dictionaries; read it with /v3/glossaries")
    return g


# ---- v2 ----
@router.post("/v2/glossaries", status_code=201)
async def create_v2(request: Request) -> JSONResponse:
    owner, data = await _owner(request)
    g = new_glossary(_text(data, "name"), [dictionary(request, data)])
    _store(request).save(owner, g)
    return JSONResponse(v2_info(g), status_code=201)


@router.get("/v2/glossaries")
async def list_v2(request: Request) -> dict:
    owner, _ = await _owner(request)
    return {"glossaries": [v2_info(g) for g in _store(request).list(owner) if len(g.dictionaries) == 1]}


@router.get("/v2/glossaries/{glossary_id}")
async def get_v2(glossary_id: str, request: Request) -> dict:
    owner, _ = await _owner(request)
    return v2_info(_v2(_store(request).get(owner, glossary_id)))


@router.get("/v2/glossaries/{glossary_id}/entries")
async def entries_v2(glossary_id: str, request: Request) -> Response:
    owner, _ = await _owner(request)
    (d,) = _v2(_store(request).get(owner, glossary_id)).dictionaries
    return Response(to_tsv(d.entries), media_type="text/tab-separated-values; charset=utf-8")


@router.delete("/v2/glossaries/{glossary_id}", status_code=204)
async def delete_v2(glossary_id: str, request: Request) -> Response:
    owner, _ = await _owner(request)
    _store(request).delete(owner, glossary_id)
    return Response(status_code=204)


@router.get("/v2/glossary-language-pairs")
async def language_pairs(request: Request) -> dict:
    await _owner(request)
    langs, _ = served_languages(request.app.state.translator)
    return {"supported_languages": [{"source_lang": spelled(lang.code), "target_lang": spelled(t)}
                                    for lang in langs for t in lang.targets]}


# ---- v3 ----
@router.post("/v3/glossaries", status_code=201)
async def create_v3(request: Request) -> JSONResponse:
    owner, data = await _owner(request)
    items = data.get("dictionaries")
    if not isinstance(items, list) or not all(isinstance(d, dict) for d in items):
        raise ApiError(400, "invalid_request", "Bad request: dictionaries: a list of {source_lang, target_lang, "
                       "entries, entries_format} is required")
    g = new_glossary(_text(data, "name"), [dictionary(request, d) for d in items])
    _store(request).save(owner, g)
    return JSONResponse(v3_info(g), status_code=201)


@router.get("/v3/glossaries")
async def list_v3(request: Request) -> dict:
    owner, _ = await _owner(request)
    return {"glossaries": [v3_info(g) for g in _store(request).list(owner)]}


@router.get("/v3/glossaries/{glossary_id}")
async def get_v3(glossary_id: str, request: Request) -> dict:
    owner, _ = await _owner(request)
    return v3_info(_store(request).get(owner, glossary_id))


def _chosen(request: Request, g: Glossary, data: dict[str, Any]) -> Dictionary:
    """The dictionary a v3 query names (``source_lang`` and ``target_lang``)."""
    translator: Translator = request.app.state.translator
    source = language(translator, "source_lang", _text(data, "source_lang"))
    target = language(translator, "target_lang", _text(data, "target_lang"))
    found = g.dictionary(source, target)
    if found is None:
        raise ApiError(404, "glossary_not_found", f"Glossary dictionary not found: {source}->{target} in "
                       f"glossary {g.glossary_id}")
    return found


@router.get("/v3/glossaries/{glossary_id}/entries")
async def entries_v3(glossary_id: str, request: Request) -> dict:
    owner, data = await _owner(request)
    d = _chosen(request, _store(request).get(owner, glossary_id), data)
    return {"dictionaries": [{"source_lang": spelled(d.source_lang), "target_lang": spelled(d.target_lang),
                              "entries": to_tsv(d.entries), "entries_format": "tsv"}]}


@router.delete("/v3/glossaries/{glossary_id}", status_code=204)
async def delete_v3(glossary_id: str, request: Request) -> Response:
    owner, _ = await _owner(request)
    _store(request).delete(owner, glossary_id)
    return Response(status_code=204)


@router.delete("/v3/glossaries/{glossary_id}/dictionaries", status_code=204)
async def delete_dictionary(glossary_id: str, request: Request) -> Response:
    owner, data = await _owner(request)
    store = _store(request)
    g = store.get(owner, glossary_id)
    d = _chosen(request, g, data)
    rest = tuple(x for x in g.dictionaries if x is not d)
    if not rest:
        raise ApiError(400, "invalid_request", "Bad request: a glossary keeps at least one dictionary; delete the "
                       "glossary instead")
    store.save(owner, Glossary(g.glossary_id, g.name, g.creation_time, rest))
    return Response(status_code=204)


@router.patch("/v3/glossaries/{glossary_id}")
async def update_v3(glossary_id: str, request: Request) -> dict:
    owner, data = await _owner(request)
    store = _store(request)
    g = store.get(owner, glossary_id)
    if data.get("name") is not None:
        g = Glossary(g.glossary_id, check_name(_text(data, "name")), g.creation_time, g.dictionaries)
    items = data.get("dictionaries") or []
    if not isinstance(items, list) or not all(isinstance(d, dict) for d in items):
        raise ApiError(400, "invalid_request", "Bad request: dictionaries: a list of {source_lang, target_lang, "
                       "entries, entries_format}")
    limit = request.app.state.settings.max_glossary_entries
    for item in items:
        new = dictionary(request, item)
        old = g.dictionary(new.source_lang, new.target_lang)
        g = with_dictionary(g, new if old is None else merged(old, new, limit))
    store.save(owner, g)
    return v3_info(g)


@router.put("/v3/glossaries/{glossary_id}/dictionaries")
async def replace_dictionary(glossary_id: str, request: Request) -> dict:
    owner, data = await _owner(request)
    store = _store(request)
    d = dictionary(request, data)
    store.save(owner, with_dictionary(store.get(owner, glossary_id), d))
    return {"source_lang": spelled(d.source_lang), "target_lang": spelled(d.target_lang),
            "entry_count": len(d.entries)}
