"""Which calls of the real client libraries (libretranslatepy, deepl) work against the gateway: each call
is made as their users make it and judged by its answer (a translation, a detection, a language list).
Run it on two checkouts to compare (PYTHONPATH pointing at another tree's ``moe_specialists`` folders).

    python benchmarks/client_calls.py                # the `make serve` specialists, in-process vLLM
    python benchmarks/client_calls.py --url http://127.0.0.1:8000 --key KEY
"""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

KEY = "bench-key"


@contextlib.contextmanager
def serve_in_thread(settings, timeout: float = 600) -> Iterator[str]:
    """The gateway of ``settings`` on a free loopback port (uvicorn in a thread): its URL once /readyz is 200."""
    import socket

    import httpx
    import uvicorn

    from moe_specialists.service.app import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                break
        time.sleep(1)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(60)


@contextlib.contextmanager
def bundled_gateway() -> Iterator[str]:
    from moe_specialists.service.cli import bundled_registry_dir
    from moe_specialists.service.settings import Settings

    # what `make serve` serves: the en-de and multilingual (en, de, fr, ru, es, cs) specialists
    settings = Settings(registry_dir=bundled_registry_dir(), api_keys=[KEY], max_model_len=1024, enforce_eager=True,
                        access_log=False)
    with serve_in_thread(settings) as url:
        yield url


def calls(url: str, key: str) -> dict[str, Callable[[], bool]]:
    import deepl
    from libretranslatepy import LibreTranslateAPI

    lt = LibreTranslateAPI(url, api_key=key)
    dl = deepl.Translator(key, server_url=url)
    text = "The children are playing in the garden."
    return {
        "libretranslatepy translate en->de": lambda: bool(lt.translate(text, "en", "de")),
        "libretranslatepy translate EN->DE": lambda: bool(lt.translate(text, "EN", "DE")),
        "libretranslatepy translate en-GB->fr-FR": lambda: bool(lt.translate(text, "en-GB", "fr-FR")),
        "libretranslatepy translate eng->ces": lambda: bool(lt.translate(text, "eng", "ces")),
        "libretranslatepy detect": lambda: lt.detect("Die Kinder spielen im Garten.")[0]["language"] == "de",
        "libretranslatepy languages": lambda: any(lang["code"] == "de" for lang in lt.languages()),
        "deepl translate_text": lambda: bool(dl.translate_text(text, source_lang="EN", target_lang="DE").text),
        "deepl translate_text list": lambda: len(dl.translate_text([text, "Good night."], target_lang="FR")) == 2,
        "deepl translate_text auto source": lambda: (
            dl.translate_text("Die Kinder spielen im Garten.", target_lang="EN-US").detected_source_lang == "DE"),
        "deepl translate_text html": lambda: re.findall(r"<[^>]+>", dl.translate_text(
            "<p>The <b>children</b> play.</p>", target_lang="DE", tag_handling="html").text) == [
            "<p>", "<b>", "</b>", "</p>"],
        "deepl get_source_languages": lambda: any(lang.code == "EN" for lang in dl.get_source_languages()),
        "deepl get_target_languages": lambda: any(lang.code == "EN-US" for lang in dl.get_target_languages()),
        "deepl get_usage": lambda: dl.get_usage().character.count >= 0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url")
    parser.add_argument("--key", default=KEY)
    args = parser.parse_args()
    with contextlib.nullcontext(args.url) if args.url else bundled_gateway() as url:
        results = {}
        for name, call in calls(url, args.key).items():
            try:
                results[name] = (call(), "")
            except Exception as e:  # noqa: BLE001 - any failure of a client call is a result here
                results[name] = (False, f"{type(e).__name__}: {str(e)[:90]}")
    for name, (ok, why) in results.items():
        print(f"{'ok  ' if ok else 'FAIL'} {name}{'  (' + why + ')' if why else ''}")
    for lib in ("libretranslatepy", "deepl"):
        mine = [ok for name, (ok, _) in results.items() if name.startswith(lib)]
        print(f"{lib}: {sum(mine)} of {len(mine)} calls work")


if __name__ == "__main__":
    main()
