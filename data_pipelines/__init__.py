"""Shard writing, streaming readers, decoders, collation and packing, synthetic sets."""
