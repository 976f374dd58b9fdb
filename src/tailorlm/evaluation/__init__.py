"""Evaluation: one specialist measured on one task (evaluator.py); every strategy compared and reported (compare.py, report.py)."""

from tailorlm.evaluation.evaluator import EvalResult, evaluate

__all__ = ["EvalResult", "evaluate"]
