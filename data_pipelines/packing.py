"""Pack tokenised documents into ``[B, T]`` rows with next-token labels and document boundaries.

Format of a packed batch (every row is full; nothing is padded, except in the last batch of a
one-pass stream, see below)::

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

The last batch of a one-pass stream (``keep_partial``: evaluation, where a held-out set smaller
than one batch must still be measured) holds the tokens left over: ``ceil(n / T)`` rows, the last
one padded with ``pad_id`` up to T. Padding comes after every real token, has label -100 and is a
segment of its own in ``cu_seqlens``, so a causal model's loss over the real tokens is unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator

IGNORE_INDEX = -100


def pack_documents(
    docs: Iterator[tuple[int, list[int]]], batch_size: int, seq_len: int, carry: int, *,
    keep_partial: bool = False, pad_id: int = 0,
) -> Iterator[tuple[dict, int, int]]:
    """(batch, R, carry) from (r, tokens-with-EOS) pairs; on resume the first doc is R, cut at carry.

    With ``keep_partial`` the tokens left when ``docs`` ends come as a last, smaller batch whose
    last row is padded with ``pad_id``; without it they are dropped.
    """
    need = batch_size * seq_len
    buf: list[int] = []
    starts: list[int] = []  # offsets in buf where a document begins
    first = True
    r = 0
    for r, tokens in docs:
        full = len(tokens)
        if first and carry:
            tokens = tokens[carry:]  # continuation of a document begun before the checkpoint
        else:
            starts.append(len(buf))
        first = False
        buf.extend(tokens)
        while len(buf) >= need:
            batch = _batch(buf, starts, batch_size, seq_len, pad_id)
            del buf[:need]
            starts = [s - need for s in starts if s >= need]
            left = len(buf)  # a suffix of document r (it alone was appended since len < need)
            yield batch, r, (full - left if left else 0)
    if keep_partial and buf:
        yield _batch(buf, starts, -(-len(buf) // seq_len), seq_len, pad_id), r, 0


def _batch(buf: list[int], starts: list[int], rows: int, seq_len: int, pad_id: int) -> dict:
    """The first ``rows * seq_len`` tokens of ``buf`` as a batch, padded with ``pad_id`` if it runs short."""
    import torch

    size = rows * seq_len
    real = min(len(buf), size)
    # label i = token i+1, unless i+1 begins another document or lies past the buffer
    nxt = torch.tensor(buf[1 : size + 1] + [IGNORE_INDEX] * (size + 1 - len(buf)), dtype=torch.long)
    nxt[[s - 1 for s in starts if 0 < s <= size]] = IGNORE_INDEX
    boundary = set(range(0, size, seq_len))
    boundary.update(s for s in starts if s < size)
    boundary.add(real)  # the padding, if any, is a segment of its own (a no-op when real == size)
    return {
        "input_ids": torch.tensor(buf[:real] + [pad_id] * (size - real), dtype=torch.long).view(rows, seq_len),
        "labels": nxt.view(rows, seq_len),
        "cu_seqlens": torch.tensor(sorted(boundary - {size}) + [size], dtype=torch.int32),
    }
