"""Tar shards: writing (``writer``, ``build``), listing (``spec``) and streaming (``tar_stream``)."""
