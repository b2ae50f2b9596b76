"""Evaluation metrics and runners."""
