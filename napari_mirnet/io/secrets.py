"""Storage options as people type them (``KEY=VALUE``), and credentials kept out of every message.

One place for the CLI's ``--storage-option``, the widgets' storage-options box and the readers'
and writers' errors: what counts as a secret, how a text is scrubbed of it, how ``KEY=VALUE`` items
become fsspec's nested options.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from urllib.parse import parse_qsl, urlsplit

from .urls import _SECRET_QUERY, redact

__all__ = ["option_strings", "parse_items", "scrub", "secrets"]

#: Keys whose values are secrets: kept as text when parsed (a numeric secret must not become an int).
SECRET_KEY = re.compile(r"(key|secret|token|password|credential|sas|sig|auth)", re.IGNORECASE)
#: Keys whose values say where or how, not who: shown in messages as given (but a URL's password never).
PLAIN_KEY = re.compile(r"(endpoint|region|url|anon|timeout|retries|concurrency|block_size)", re.IGNORECASE)
#: Shorter values ("1", "us") would blank out unrelated text; no real credential is this short.
MIN_SECRET = 4


def option_strings(obj) -> Iterator[str]:
    """Every string in nested storage options (dicts, lists, tuples)."""
    if isinstance(obj, dict):
        for value in obj.values():
            yield from option_strings(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from option_strings(value)
    elif isinstance(obj, str):
        yield obj


def _url_secrets(url: str) -> list[str]:
    parts = urlsplit(url)
    found = [v for k, v in parse_qsl(parts.query) if _SECRET_QUERY.search(k) and v]
    if parts.password:
        found.append(parts.password)
    return found


def _keyed_strings(obj, key: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(obj, dict):
        for k, value in obj.items():
            yield from _keyed_strings(value, str(k))
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from _keyed_strings(value, key)
    elif isinstance(obj, str):
        yield key, obj


def secrets(urls: Iterable[str] = (), storage_options: dict | None = None) -> tuple[str, ...]:
    """The strings no message may show, longest first: option values (except those of keys that say
    where, such as an endpoint or a region), and every password and secret query value of a URL,
    given or among the options."""
    found: list[str] = []
    for key, value in _keyed_strings(storage_options or {}):
        found += _url_secrets(value) if "://" in value else []
        if not PLAIN_KEY.search(key):
            found.append(value)
    for url in urls:
        found += _url_secrets(url)
    return tuple(sorted({v for v in found if len(v) >= MIN_SECRET}, key=len, reverse=True))


def scrub(text: str | None, urls: Iterable[str] = (), storage_options: dict | None = None) -> str | None:
    """``text`` with each of ``urls`` redacted and every secret of :func:`secrets` replaced by ``***``."""
    if text is None:
        return None
    urls = tuple(urls)
    for url in sorted(urls, key=len, reverse=True):
        text = text.replace(url, redact(url))
    for value in secrets(urls, storage_options):
        text = text.replace(value, "***")
    return text


def parse_items(items: Iterable[str], where: str, labels: Iterable[str] | None = None) -> dict:
    """``["a.b=1", "anon=true", "secret=0123"]`` -> ``{"a": {"b": 1}, "anon": True, "secret": "0123"}``.

    A dotted key nests; a value is JSON where it parses (``true``, ``3``, ``{...}``), else text, and
    always text under a key that names a secret. ``where`` names the items in errors (the flag, the
    box), ``labels`` each item (``line 2``); ValueError for an item without ``=``, an empty key
    part, or a key given both a value and sub-keys. No error repeats a value.
    """
    items = list(items)
    labels = list(labels) if labels is not None else [None] * len(items)
    options: dict = {}
    for item, label in zip(items, labels):
        key, eq, text = item.partition("=")
        parts = [p.strip() for p in key.strip().split(".")]
        if not eq or not all(parts):
            # without '=' the whole item may be a secret: named by its label, or by its key only
            shown = f" {label}" if label else (f" {key.strip()!r}" if eq else "")
            raise ValueError(
                f"{where}{shown} is not KEY=VALUE; e.g. anon=true or client_kwargs.endpoint_url=http://127.0.0.1:9000"
            )
        node = options
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"{where} {key.strip()!r}: {p!r} is given both a value and sub-keys")
        if isinstance(node.get(parts[-1]), dict):
            raise ValueError(f"{where} {key.strip()!r}: {parts[-1]!r} is given both sub-keys and a value")
        node[parts[-1]] = text.strip() if SECRET_KEY.search(parts[-1]) else _value(text.strip())
    return options


def _value(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text
