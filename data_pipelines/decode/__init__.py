"""Explicit decoders for the members a recipe reads (never webdataset's automatic handlers)."""
