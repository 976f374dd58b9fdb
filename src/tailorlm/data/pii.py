"""Find and redact personal data in text: e-mail addresses, phone numbers, SSN-like and card-like numbers, IP addresses.

Precision comes first: a data check that flags every year and price is ignored. Each kind is a strict pattern,
then a validator (Luhn for cards, `ipaddress` for IPs, a digit count for phones); where two candidates overlap,
the one that starts first and is longest wins, so a card number is not also reported as a phone number.

>>> redact("Mail jane.doe@example.com or call (555) 123-4567.")
'Mail [EMAIL] or call [PHONE].'
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Callable, Iterator

KINDS: tuple[str, ...] = ("email", "phone", "ssn", "card", "ip")
PLACEHOLDERS: dict[str, str] = {"email": "[EMAIL]", "phone": "[PHONE]", "ssn": "[SSN]", "card": "[CARD]", "ip": "[IP]"}


@dataclass(frozen=True)
class Finding:
    """One piece of personal data: its kind (one of KINDS), its character span [start, end) and its text."""

    kind: str
    start: int
    end: int
    text: str


_EMAIL = re.compile(
    r"(?<![\w.%+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@"
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}(?![\w-])"
)

# US style needs separators, so a bare 10-digit id is not a phone: (555) 123-4567, 555-123-4567, +1 555.123.4567.
_US_PHONE = re.compile(r"(?<![\w.+-])(?:\+?1[ .-]?)?(?:\(\d{3}\)[ .-]?|\d{3}[ .-])\d{3}[ .-]\d{4}(?![\w-]|[.,]\d)")
# International: a leading + and a country code, then groups of digits; 8 to 15 digits in all (E.164).
_INTL_PHONE = re.compile(r"(?<![\w+])\+[1-9]\d{0,2}(?:[ .-]?\(?\d{1,5}\)?){1,6}(?![\w-]|[.,]\d)")

_SSN = re.compile(r"(?<![\w-])(?!000|666)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\w-])")

# 13-19 digits, optionally split by single spaces or dashes; validated by Luhn and a consistent separator.
_CARD = re.compile(r"(?<![\w+.-])\d(?:[ -]?\d){12,18}(?![\w-]|[.,]\d)")

_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = re.compile(rf"(?<![\w.]){_OCTET}(?:\.{_OCTET}){{3}}(?![\w]|\.\d)")
# A loose candidate (hex groups and colons, optionally an embedded IPv4 tail); `ipaddress` decides.
_IPV6 = re.compile(r"(?<![\w:.])(?=[0-9A-Fa-f]*:[0-9A-Fa-f]*:)[0-9A-Fa-f:]{2,39}(?:(?<=:)\d{1,3}(?:\.\d{1,3}){3})?(?![\w:]|\.\d)")


def luhn_ok(digits: str) -> bool:
    """Whether a string of digits passes the Luhn checksum used by payment cards."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _digits(text: str) -> str:
    return "".join(ch for ch in text if ch.isdigit())


def _emails(text: str) -> Iterator[Finding]:
    for m in _EMAIL.finditer(text):
        yield Finding("email", m.start(), m.end(), m.group())


def _phones(text: str) -> Iterator[Finding]:
    for m in _US_PHONE.finditer(text):
        yield Finding("phone", m.start(), m.end(), m.group())
    for m in _INTL_PHONE.finditer(text):
        found = m.group().rstrip(" .-")
        if 8 <= len(_digits(found)) <= 15 and found.count("(") == found.count(")"):
            yield Finding("phone", m.start(), m.start() + len(found), found)


def _ssns(text: str) -> Iterator[Finding]:
    for m in _SSN.finditer(text):
        yield Finding("ssn", m.start(), m.end(), m.group())


def _cards(text: str) -> Iterator[Finding]:
    for m in _CARD.finditer(text):
        found = m.group()
        digits = _digits(found)
        separators = set(re.sub(r"\d", "", found))
        if len(separators) <= 1 and len(set(digits)) > 1 and luhn_ok(digits):
            yield Finding("card", m.start(), m.end(), found)


def _ips(text: str) -> Iterator[Finding]:
    for m in _IPV4.finditer(text):
        yield Finding("ip", m.start(), m.end(), m.group())
    for m in _IPV6.finditer(text):
        found = m.group()
        if found.endswith(":") and not found.endswith("::"):
            found = found[:-1]
        try:
            ipaddress.IPv6Address(found)
        except ValueError:
            continue
        # "::1" says nothing about anyone, and "a::b" is more likely code than an address: ask for two groups,
        # one of them at least three hex digits long.
        groups = [group for group in re.split(r"[:.]", found) if group]
        if len(groups) >= 2 and max(len(group) for group in groups) >= 3:
            yield Finding("ip", m.start(), m.start() + len(found), found)


_FINDERS: tuple[Callable[[str], Iterator[Finding]], ...] = (_emails, _ips, _cards, _ssns, _phones)


def find_personal_data(text: str) -> list[Finding]:
    """All personal data in `text`, in order of position, with no two findings overlapping."""
    candidates = [finding for finder in _FINDERS for finding in finder(text)]
    order = {finder: rank for rank, finder in enumerate(("email", "ip", "card", "ssn", "phone"))}
    candidates.sort(key=lambda f: (f.start, -(f.end - f.start), order[f.kind]))
    chosen: list[Finding] = []
    for finding in candidates:
        if not chosen or finding.start >= chosen[-1].end:
            chosen.append(finding)
    return chosen


def redact(text: str) -> str:
    """`text` with every piece of personal data replaced by its placeholder ([EMAIL], [PHONE], [SSN], [CARD], [IP])."""
    pieces: list[str] = []
    last = 0
    for finding in find_personal_data(text):
        pieces.append(text[last : finding.start])
        pieces.append(PLACEHOLDERS[finding.kind])
        last = finding.end
    pieces.append(text[last:])
    return "".join(pieces)
