"""Keeping database passwords out of everything queuectl prints or logs.

A leaf module: the locator factory, the backends, the CLI and the worker all import it, and
it imports nothing of queuectl, so no layer has to reach up to another for it.
"""

from __future__ import annotations

import re  # already loaded by the CLI's start-up

# A URL's user-info password (`://user:secret@`) and a `password=` parameter, anywhere.
_URL_PASSWORD = re.compile(r"(://[^/@:?#]*):([^/@?#]*)@")
_PARAM_PASSWORD = re.compile(r"(?i)(password=)([^&\s]*)")
# The same inside a percent-encoded URL (a `listen=` value): `%3A%2F%2Fuser%3Asecret%40`.
_ENCODED_PASSWORD = re.compile(r"(?i)(%3A%2F%2F[^/@?#&]*?%3A)([^/@?#&]*?)(%40)")


def redact(locator: str) -> str:
    """The locator fit to print: a URL's password (and any password= parameter) masked."""
    if "://" not in locator and "password" not in locator:
        return locator
    text = _URL_PASSWORD.sub(r"\1:***@", locator)
    text = _ENCODED_PASSWORD.sub(r"\1***\3", text)
    return _PARAM_PASSWORD.sub(r"\1***", text)


def unquote(text: str) -> str:
    """Percent-decoding, importing urllib (a few ms of every `enqueue`) only when needed."""
    if "%" not in text:
        return text
    from urllib.parse import unquote as percent_decoded

    return percent_decoded(text)


def secrets_in(locator: str) -> list[str]:
    """Every spelling of a password the locator carries (as written and percent-decoded),
    longest first, so a driver's message that quotes one can be scrubbed."""
    found = [m.group(2) for m in _URL_PASSWORD.finditer(locator)]
    found += [m.group(2) for m in _ENCODED_PASSWORD.finditer(locator)]
    found += [m.group(2) for m in _PARAM_PASSWORD.finditer(locator)]
    spellings = {s for item in found for s in (item, unquote(item)) if s}
    return sorted(spellings, key=len, reverse=True)


def scrub(text: str, secrets: list[str]) -> str:
    """text with each of secrets (from `secrets_in`) replaced by ***."""
    for secret in secrets:
        text = text.replace(secret, "***")
    return text
