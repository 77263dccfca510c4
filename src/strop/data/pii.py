"""Personal data and secrets in text: detect (with checksums where they exist) and redact.

One table, ``DETECTORS``: a name, a regular expression for candidates and an
optional validator. Checksums (Luhn for cards, mod-97 for IBANs, the
``ipaddress`` parser for IPs) keep order numbers and version strings from
being flagged.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Callable


def _digits(s: str) -> str:
    return re.sub(r"\D", "", s)


def luhn_ok(number: str) -> bool:
    digits = [int(d) for d in _digits(number)]
    if not 13 <= len(digits) <= 19:
        return False
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_ok(text: str) -> bool:
    s = text.replace(" ", "").upper()
    if not 15 <= len(s) <= 34:
        return False
    moved = s[4:] + s[:4]
    return int("".join(str(int(ch, 36)) for ch in moved)) % 97 == 1


def _ip_ok(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _phone_ok(text: str) -> bool:
    return 9 <= len(_digits(text)) <= 15


@dataclass(frozen=True)
class Detector:
    name: str
    pattern: re.Pattern
    valid: Callable[[str], bool] | None = None


DETECTORS: tuple[Detector, ...] = (
    Detector("private_key", re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")),
    Detector("api_key", re.compile(
        r"\b(?:sk-(?:proj-)?[A-Za-z0-9_-]{20,}|AKIA[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{36}|xox[abprs]-[A-Za-z0-9-]{10,}"
        r"|AIza[0-9A-Za-z_-]{35}|hf_[A-Za-z0-9]{30,})")),
    Detector("secret", re.compile(
        r"(?i)\b(?:api[_-]?key|secret|token|password|passwd)\b\s*[:=]\s*['\"]?[A-Za-z0-9_\-/+=]{8,}")),
    Detector("email", re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")),
    Detector("iban", re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b"), iban_ok),
    Detector("credit_card", re.compile(r"\b\d(?:[ -]?\d){12,18}\b"), luhn_ok),
    Detector("ipv4", re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}\b"), _ip_ok),
    Detector("ipv6", re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{1,4}:){2,7}(?::|[0-9A-Fa-f]{1,4})?(?::[0-9A-Fa-f]{1,4}){0,6}(?![\w:])"),
             _ip_ok),
    Detector("phone", re.compile(r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}(?:[ .-]\d{2,4}){1,4}(?!\w)"),
             _phone_ok),
)


# Every detector needs a digit, an '@' or one of these words; one search rules most text out.
_MAYBE = re.compile(r"[0-9@]|-----BEGIN|sk-|AKIA|gh[pousr]_|xox|AIza|hf_|(?i:key|secret|token|passw)")


def find(text: str) -> list[tuple[str, int, int]]:
    """Non-overlapping (kind, start, end) hits; earlier detectors win overlaps."""
    hits: list[tuple[str, int, int]] = []
    if not _MAYBE.search(text):
        return hits
    for det in DETECTORS:
        for m in det.pattern.finditer(text):
            if det.valid and not det.valid(m.group()):
                continue
            if any(s < m.end() and m.start() < e for _, s, e in hits):
                continue
            hits.append((det.name, m.start(), m.end()))
    return sorted(hits, key=lambda h: h[1])


def redact(text: str) -> tuple[str, list[str]]:
    """``text`` with every hit replaced by ``[KIND]``, and the kinds replaced."""
    hits = find(text)
    out, pos = [], 0
    for kind, s, e in hits:
        out += [text[pos:s], f"[{kind.upper()}]"]
        pos = e
    out.append(text[pos:])
    return "".join(out), [k for k, _, _ in hits]
