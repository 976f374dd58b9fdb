"""Tokenizers for a domain: train one on a corpus (train.py), or extend a model's with domain words (extend.py)."""
