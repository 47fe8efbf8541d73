"""Database URLs fit to print: every password replaced by ``***``.

A PostgreSQL URL can carry a password in two places, the userinfo
(``postgresql://app:secret@db/app``) and the query (``?password=secret``, or
``sslpassword`` for a client key). Anything errands shows or logs about a
database (banners, ``errands settings``, errors, the dashboard) goes through
:func:`redact_url`; an error text from the driver or from parsing, which may
quote the URL or a piece of it, goes through :func:`redact_text`.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

MASK = "***"

# Query parameters of a libpq URL that hold secrets (password, sslpassword).
_SECRET_PARAMETER = re.compile(r"password", re.IGNORECASE)
# The userinfo of anything that looks like a URL, for text urlsplit cannot parse.
_USERINFO_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s]*(?=@)", re.I)
_BARE_USERINFO = re.compile(r"^(?P<head>(?:[a-z][a-z0-9+.-]*:)?[^:@/]*:)[^@]*@", re.I)
_QUERY_PASSWORD = re.compile(r"(?P<head>[?&][a-z]*password=)[^&\s'\"]*", re.IGNORECASE)


def redact_url(url: str) -> str:
    """``url`` with the password of its userinfo and its query replaced by ``***``."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        # Not a URL urlsplit accepts (a bad port, say): mask by pattern instead.
        return _redact_patterns(url)
    netloc = parts.netloc
    if not netloc and "@" in url:
        # No "//" (say "user:secret@db/app"): urlsplit sees no userinfo at all.
        return _redact_patterns(_BARE_USERINFO.sub(rf"\g<head>{MASK}@", url, count=1))
    if password is not None:
        userinfo, _, hostport = netloc.rpartition("@")
        username = userinfo.split(":", 1)[0]
        netloc = f"{username}:{MASK}@{hostport}"
    query = _redact_query(parts.query)
    # Replaced in place rather than rebuilt: urlunsplit drops an empty "//".
    masked = url.replace(parts.netloc, netloc, 1) if netloc != parts.netloc else url
    if query != parts.query:
        masked = masked.replace(f"?{parts.query}", f"?{query}", 1)
    return masked


def redact_text(text: str, url: str | None) -> str:
    """``text`` (say, a driver's error) with every password of ``url`` masked.

    The passwords are replaced wherever they appear, raw or URL-quoted, and any
    URL-shaped piece of the text is masked as :func:`redact_url` would.
    """
    for secret in _passwords(url or ""):
        for form in {secret, quote(secret, safe=""), quote(secret)}:
            text = text.replace(form, MASK)
    return _redact_patterns(text)


def _redact_query(query: str) -> str:
    if not query or not _SECRET_PARAMETER.search(query):
        return query
    pairs = parse_qsl(query, keep_blank_values=True)
    masked = [(k, MASK if _SECRET_PARAMETER.search(k) else v) for k, v in pairs]
    return urlencode(masked, safe="*")


def _redact_patterns(text: str) -> str:
    text = _USERINFO_PASSWORD.sub(rf"\g<head>{MASK}", text)
    return _QUERY_PASSWORD.sub(rf"\g<head>{MASK}", text)


def _passwords(url: str) -> list[str]:
    """Every password ``url`` carries, longest first, empty ones left out."""
    found: list[str] = []
    try:
        parts = urlsplit(url)
        if parts.password:
            found.append(unquote(parts.password))
            found.append(parts.password)
        found += [v for k, v in parse_qsl(parts.query) if _SECRET_PARAMETER.search(k) and v]
    except ValueError:
        found += [m.group(0).rsplit(":", 1)[-1] for m in _USERINFO_PASSWORD.finditer(url)]
    return sorted({p for p in found if p}, key=len, reverse=True)
