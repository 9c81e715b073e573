"""Evaluation: multiple choice (C-Eval/CMMLU/MMLU), perplexity / bits per byte, exact match (GSM8K).

Results are JSON files next to the model (see results.py, the contract with `minimind report`).
"""

from .results import read_results, result_path, write_result

__all__ = ["read_results", "result_path", "write_result"]
