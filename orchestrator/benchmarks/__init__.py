"""Benchmark files: readers, prompts, answer extraction and scoring."""

from .extract import extract_answer, extract_choice, extract_number, is_correct
from .readers import FORMATS, read_benchmark

__all__ = [
    "FORMATS", "extract_answer", "extract_choice", "extract_number", "is_correct",
    "read_benchmark",
]
