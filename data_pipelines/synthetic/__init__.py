"""Deterministic synthetic data sets: ``vl`` (shapes + captions + VQA), ``av`` (audible clips), ``text``."""
