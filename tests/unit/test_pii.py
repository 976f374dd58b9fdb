"""Personal data: each kind is found with its exact span, and the usual look-alikes are not."""

from __future__ import annotations

import pytest

from tailorlm.data.pii import find_personal_data, luhn_ok, redact


def spans(text: str) -> list[tuple[str, str, int, int]]:
    return [(f.kind, f.text, f.start, f.end) for f in find_personal_data(text)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Mail jane.doe@example.com now", [("email", "jane.doe@example.com", 5, 25)]),
        ("Write to a.b+tag@sub.example.co.uk.", [("email", "a.b+tag@sub.example.co.uk", 9, 34)]),
        ("Call (555) 123-4567.", [("phone", "(555) 123-4567", 5, 19)]),
        ("Call 555-123-4567 or 555.123.4567", [("phone", "555-123-4567", 5, 17), ("phone", "555.123.4567", 21, 33)]),
        ("Ring +1 (555) 123-4567", [("phone", "+1 (555) 123-4567", 5, 22)]),
        ("Ring +44 20 7946 0958 today", [("phone", "+44 20 7946 0958", 5, 21)]),
        ("Ring +33 1 23 45 67 89.", [("phone", "+33 1 23 45 67 89", 5, 22)]),
        ("Ring +441234567890", [("phone", "+441234567890", 5, 18)]),
        ("SSN 123-45-6789.", [("ssn", "123-45-6789", 4, 15)]),
        ("card 4111 1111 1111 1111 ok", [("card", "4111 1111 1111 1111", 5, 24)]),
        ("card 4111-1111-1111-1111", [("card", "4111-1111-1111-1111", 5, 24)]),
        ("card 4111111111111111.", [("card", "4111111111111111", 5, 21)]),
        ("amex 3782 822463 10005", [("card", "3782 822463 10005", 5, 22)]),
        ("from 192.168.0.1.", [("ip", "192.168.0.1", 5, 16)]),
        ("from 2001:db8::ff00:42:8329 x", [("ip", "2001:db8::ff00:42:8329", 5, 27)]),
        ("from fe80::1", [("ip", "fe80::1", 5, 12)]),
        ("full 2001:0db8:85a3:0000:0000:8a2e:0370:7334", [("ip", "2001:0db8:85a3:0000:0000:8a2e:0370:7334", 5, 44)]),
        ("mapped ::ffff:192.0.2.128", [("ip", "::ffff:192.0.2.128", 7, 25)]),
    ],
)
def test_each_kind_is_found_with_its_exact_span(text: str, expected: list[tuple[str, str, int, int]]) -> None:
    assert spans(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "In 1999 and 2024 sales doubled.",
        "It cost $1,299.99, or 12.50 EUR, or 1299 dollars.",
        "Released on 2023-10-15 at 12:30:45, again on 10/12/2023.",
        "Upgrade to version 2.10.1 or v3.11.4 (build 1.2.3).",
        "Order 4111111111111112 failed.",  # 16 digits that fail the Luhn check
        "See pages 100-200 and items 12345, 555-1234, 5551234567.",
        "Not an address: 256.1.1.1 or 1.2.3.4.5.",
        "C++ code: std::vector and a::b; the ratio was 10:30.",
        "Placeholders 0000 0000 0000 0000 and 000-12-3456.",
        "Scored +5 points, then +12.",
    ],
)
def test_look_alikes_are_not_personal_data(text: str) -> None:
    assert find_personal_data(text) == []


def test_overlapping_candidates_keep_the_longest() -> None:
    # A card number is not also reported as the phone-like run of digits inside it.
    assert [f.kind for f in find_personal_data("pay 4111 1111 1111 1111")] == ["card"]


def test_luhn() -> None:
    assert luhn_ok("4111111111111111") and luhn_ok("378282246310005")
    assert not luhn_ok("4111111111111112")


def test_redact_replaces_each_kind_with_its_placeholder() -> None:
    text = "jo@x.org, (555) 123-4567, +44 20 7946 0958, 123-45-6789, 4111 1111 1111 1111, 10.0.0.1, fe80::1."
    assert redact(text) == "[EMAIL], [PHONE], [PHONE], [SSN], [CARD], [IP], [IP]."
    assert redact("nothing here, 2024") == "nothing here, 2024"
