"""Shared pieces of the pre-training tests: a short text to memorise, and token caches kept inside the test."""

from __future__ import annotations

import pytest

# Three lines that the tiny test tokenizer (conftest.py) was trained on: about 50 tokens to memorise.
TEXT = (
    "The quick brown fox jumps over the lazy dog.\nWhat is the capital of France? Paris is the capital of France.\n"
    "Patients with diabetes should check their blood sugar.\n"
)


@pytest.fixture
def token_cache(monkeypatch, tmp_path):
    """Token caches (and anything else under $TAILORLM_HOME) written below tmp_path, not in the user's cache."""
    import tailorlm.data.token_cache as module

    monkeypatch.setenv("TAILORLM_HOME", str(tmp_path / "home"))
    return module
