"""Request bodies of the compatible APIs (LibreTranslate, DeepL): their clients send JSON, urlencoded or
multipart forms, and the routes read them by hand (``read_body``) since FastAPI's body parameters take one
content type. What differs between the APIs is passed in: the message style, whether a body is required,
the query string, the fields a form may repeat."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, NamedTuple

from fastapi import Request
from starlette.datastructures import UploadFile

from moe_specialists.service.errors import ApiError

FORMS = ("application/x-www-form-urlencoded", "multipart/form-data")


class Body(NamedTuple):
    fields: dict[str, Any]
    files: dict[str, UploadFile]


async def read_body(
    request: Request, *, required: bool = True, query: bool = False, repeatable: Iterable[str] = (),
    expects: str = "", prefix: str = "",
) -> Body:
    """The fields (and uploaded files) of a form, or the fields of a JSON object; 400 for invalid JSON or JSON
    that is not an object. ``required``: a body that is not a form is JSON, whatever its content type says
    (empty: refused); otherwise only a body declared JSON is read, and none is no fields. ``query``: the
    query string's fields first, the body's win. ``repeatable``: form fields given more than once become a
    list. ``expects`` (the fields, for the message) and ``prefix`` (the API's message style) shape the errors."""
    content_type = request.headers.get("content-type", "")
    fields: dict[str, Any] = dict(request.query_params) if query else {}
    if content_type.startswith(FORMS):
        form = await request.form()
        fields |= {k: v for k, v in form.items() if isinstance(v, str)}
        for name in repeatable:
            if len(values := [v for v in form.getlist(name) if isinstance(v, str)]) > 1:
                fields[name] = values
        return Body(fields, {k: v for k, v in form.items() if isinstance(v, UploadFile)})
    if not required and "json" not in content_type:
        return Body(fields, {})
    try:
        loaded = json.loads(await request.body() or (b"null" if required else b"{}"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ApiError(400, "invalid_json", f"{prefix}the request body is not valid JSON") from None
    if not isinstance(loaded, dict):
        with_fields = f" with {expects}" if expects else ""
        raise ApiError(400, "invalid_request", f"{prefix}the body must be a JSON object (or a form){with_fields}")
    return Body(fields | loaded, {})
