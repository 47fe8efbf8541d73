"""Tags and metadata: labels and a small JSON object a job carries from its enqueue
to its result.

``tags=[...]`` (strings) and ``meta={...}`` (a JSON object) are given per call
(``run_in_worker(tags=, meta=)``, ``EnqueueOptions(tags=, meta=)``) or per class
(``tags`` / ``meta`` class attributes, or ``default_tags()`` / ``default_meta()``);
a call's value replaces the class's (``[]`` / ``{}``: none). They are stored on
the request, its process and its result, and kept by retries and requeues.
Listings filter by one tag (``Selection(tag=...)``): PostgreSQL through a GIN
index of ``tags`` (``text[]``), SQLite through ``json_each`` of its JSON text.

Both are checked before anything is written: :class:`~errands.errors.OptionError`
names the class and the option.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from errands.errors import OptionError

#: At most this many tags per job, each at most MAX_TAG_LENGTH characters.
MAX_TAGS = 50
MAX_TAG_LENGTH = 100
#: The JSON text of a job's meta may take at most this many characters.
MAX_META_CHARS = 8192


def class_tags(job: Any) -> object:
    """The job's own tags: ``default_tags()`` if it has one, else its ``tags`` attribute."""
    method = getattr(job, "default_tags", None)
    if callable(method):
        return method()
    return getattr(job, "tags", None)


def class_meta(job: Any) -> object:
    """The job's own meta: ``default_meta()`` if it has one, else its ``meta`` attribute."""
    method = getattr(job, "default_meta", None)
    if callable(method):
        return method()
    return getattr(job, "meta", None)


def resolve(
    job: Any, path: str, tags: object, meta: object
) -> tuple[tuple[str, ...], dict[str, Any] | None]:
    """The tags and meta to store for ``job``: the call's (when not None), else the
    class's, checked. No tags is ``()``, no meta ``None`` (an empty object too)."""
    return (
        checked_tags(class_tags(job) if tags is None else tags, path),
        checked_meta(class_meta(job) if meta is None else meta, path),
    )


def checked_tags(value: object, path: str) -> tuple[str, ...]:
    """``value`` as a tuple of distinct tags in their first order; OptionError otherwise."""
    if value is None:
        return ()
    if isinstance(value, str | bytes) or not hasattr(value, "__iter__"):
        raise OptionError(f"{path}: tags must be a list of strings, got {value!r:.80}")
    tags: dict[str, None] = {}
    for tag in value:
        if not isinstance(tag, str) or not tag:
            raise OptionError(f"{path}: tags: each tag must be a non-empty string, got {tag!r:.80}")
        if "\x00" in tag:
            raise OptionError(f"{path}: tags: a tag may not contain NUL, got {tag!r:.80}")
        if len(tag) > MAX_TAG_LENGTH:
            raise OptionError(
                f"{path}: tags: a tag may have at most {MAX_TAG_LENGTH} characters, "
                f"got {len(tag)}: {tag!r:.40}"
            )
        tags[tag] = None
    if len(tags) > MAX_TAGS:
        raise OptionError(f"{path}: tags: at most {MAX_TAGS} tags, got {len(tags)}")
    return tuple(tags)


def checked_meta(value: object, path: str) -> dict[str, Any] | None:
    """``value`` as a JSON object (a dict with string keys) of bounded size; None for
    none or an empty one; OptionError otherwise."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise OptionError(f"{path}: meta must be a JSON object (a dict), got {value!r:.80}")
    if not value:
        return None
    try:
        text = json.dumps(dict(value), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise OptionError(f"{path}: meta must be JSON-serialisable: {exc}") from None
    if "\\u0000" in text:
        raise OptionError(f"{path}: meta may not contain NUL characters")
    if len(text) > MAX_META_CHARS:
        raise OptionError(
            f"{path}: meta takes {len(text)} characters as JSON, at most {MAX_META_CHARS}"
        )
    decoded: dict[str, Any] = json.loads(text)  # string keys, plain JSON values
    return decoded


def checked_tag_filter(tag: object) -> str | None:
    """A listing's tag filter: None or a non-empty string (ValueError otherwise)."""
    if tag is None or tag == "":
        return None
    if not isinstance(tag, str):
        raise ValueError(f"tag must be a string, got {tag!r:.80}")
    return tag
