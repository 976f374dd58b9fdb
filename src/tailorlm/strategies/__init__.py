"""Strategies: the ways of tailoring a model, each producing a Specialist."""
