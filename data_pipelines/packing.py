"""Pack tokenised documents into ``[B, T]`` rows with next-token labels and document boundaries.

Format of a packed batch (every row is full; nothing is padded)::

    input_ids   LongTensor [B, T]   documents back to back, each followed by EOS
    labels      LongTensor [B, T]   labels[b, t] = the token after input_ids[b, t] within the same
                                    document (also across the row end, where the document goes on
                                    in the next row); -100 on each document's EOS (what follows
                                    belongs to another document)
    cu_seqlens  IntTensor  [S + 1]  FlashAttention varlen boundaries over the flattened B*T tokens:
                                    0, ..., B*T. A segment is one document's tokens inside one
                                    row: every document start AND every row start is a boundary,
                                    so a document that runs over a row end continues as a new,
                                    marked segment and no segment crosses rows or documents.

A model that honours ``cu_seqlens`` never attends across documents; one that ignores it sees
plain contiguous causal rows. Position ids restarting per segment:
:func:`mm.layers.packing.document_positions`.
The packer's position after a batch is (R, carry): the leftover tokens are always a suffix of
document R, of which ``carry`` tokens were already emitted (0 when R was used up).
"""

from __future__ import annotations

from collections.abc import Iterator

IGNORE_INDEX = -100


def pack_documents(
    docs: Iterator[tuple[int, list[int]]], batch_size: int, seq_len: int, carry: int
) -> Iterator[tuple[dict, int, int]]:
    """(batch, R, carry) from (r, tokens-with-EOS) pairs; on resume the first doc is R, cut at carry."""
    import torch

    need = batch_size * seq_len
    buf: list[int] = []
    starts: list[int] = []  # offsets in buf where a document begins
    first = True
    for r, tokens in docs:
        full = len(tokens)
        if first and carry:
            tokens = tokens[carry:]  # continuation of a document begun before the checkpoint
        else:
            starts.append(len(buf))
        first = False
        buf.extend(tokens)
        while len(buf) >= need:
            # label i = token i+1, unless i+1 begins another document or lies past the buffer
            nxt = torch.tensor(buf[1 : need + 1] + [IGNORE_INDEX] * (need + 1 - len(buf)), dtype=torch.long)
            ends = [s - 1 for s in starts if 0 < s <= need]
            nxt[ends] = IGNORE_INDEX
            boundary = set(range(0, need, seq_len))
            boundary.update(s for s in starts if s < need)
            batch = {
                "input_ids": torch.tensor(buf[:need], dtype=torch.long).view(batch_size, seq_len),
                "labels": nxt.view(batch_size, seq_len),
                "cu_seqlens": torch.tensor(sorted(boundary) + [need], dtype=torch.int32),
            }
            del buf[:need]
            starts = [s - need for s in starts if s >= need]
            left = len(buf)  # a suffix of document r (it alone was appended since len < need)
            yield batch, r, (full - left if left else 0)

