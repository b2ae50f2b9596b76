"""Prompt template of the VLM: image placeholders in text, and labels on the answer only.

A template is text with ``{question}`` (VQA) and an image marker (``<image>``); each marker becomes
as many ``image_token_id`` placeholders as that image gives visual tokens. The answer (caption or
VQA answer) follows the prompt and ends with the tokenizer's end-of-text token. Labels are shifted
(position t is trained to predict token t + 1) and set only where the next token belongs to the
answer: prompt text and image positions are never trained.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE = -100


@dataclass
class PromptConfig:
    caption: str = "<image>\ncaption:"  # prompt of image-text samples
    vqa: str = "<image>\nquestion: {question}\nanswer:"  # prompt of VQA samples
    answer_prefix: str = " "  # between the prompt and the answer
    image_marker: str = "<image>"
    max_tokens: int = 512  # a longer sample is an error (it would cut visual tokens or the answer)

    def __post_init__(self):
        for name in ("caption", "vqa"):
            if self.image_marker not in getattr(self, name):
                raise ValueError(f"prompt.{name} has no image marker {self.image_marker!r}: {getattr(self, name)!r}")


def prompt_ids(tokenizer, text: str, image_tokens: list[int], image_token_id: int, marker: str) -> list[int]:
    """Token ids of ``text`` with the i-th marker replaced by ``image_tokens[i]`` placeholders."""
    parts = text.split(marker)
    if len(parts) - 1 != len(image_tokens):
        raise ValueError(f"prompt has {len(parts) - 1} image markers for {len(image_tokens)} images: {text!r}")
    ids: list[int] = []
    for i, part in enumerate(parts):
        if i:
            ids += [image_token_id] * image_tokens[i - 1]
        ids += tokenizer.encode(part) if part else []
    return ids


def training_example(prompt: list[int], answer: list[int], eos_id: int) -> tuple[list[int], list[int]]:
    """(input ids, shifted labels) of prompt + answer + eos; labels only on answer and eos."""
    ids = prompt + answer + [eos_id]
    labels = [IGNORE] * (len(prompt) - 1) + answer + [eos_id] + [IGNORE]
    return ids, labels


def pad_batch(rows: list[tuple[list[int], list[int]]], pad_id: int, max_tokens: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids`` and ``labels`` [B, T]; a row over ``max_tokens`` is an error."""
    longest = max(len(ids) for ids, _ in rows)
    if longest > max_tokens:
        raise ValueError(f"a sample has {longest} tokens, over prompt.max_tokens={max_tokens}")
    ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), longest), IGNORE, dtype=torch.long)
    for i, (row_ids, row_labels) in enumerate(rows):
        ids[i, : len(row_ids)] = torch.tensor(row_ids)
        labels[i, : len(row_labels)] = torch.tensor(row_labels)
    return {"input_ids": ids, "labels": labels}


class VLBatcher:
    """Images + prompts (+ answers) -> the VLM's inputs: tiles, sizes, ids with placeholders, labels.

    One image per prompt (the prompt's one marker); ``blind`` blanks the images (every tile the
    mean colour, i.e. zeros after normalisation) while keeping the token layout, for the blind
    baseline."""

    def __init__(self, tokenizer, prompt: PromptConfig, image, image_token_id: int, tokens_per_side: int):
        self.tokenizer, self.prompt, self.image = tokenizer, prompt, image
        self.image_token_id, self.tokens_per_side = image_token_id, tokens_per_side
        pad = getattr(tokenizer, "pad_id", None)
        self.pad_id = tokenizer.eos_id if pad is None else pad

    def text(self, kind: str, question: str | None = None) -> str:
        if kind == "caption":
            return self.prompt.caption
        if kind == "vqa":
            return self.prompt.vqa.replace("{question}", question or "")
        raise ValueError(f"unknown sample kind {kind!r}; expected caption or vqa")

    def prompts(self, images: list[torch.Tensor], texts: list[str], blind: bool = False):
        """(tiles ProcessedImages, prompt ids per sample)."""
        from mm.models.anyres import num_image_tokens, process_images

        processed = process_images(images, self.image)
        if blind:
            processed.pixel_values.zero_()
        ids = []
        for (h, w), text in zip(processed.image_sizes.tolist(), texts, strict=True):
            count = num_image_tokens(h, w, self.image, self.tokens_per_side)
            ids.append(prompt_ids(self.tokenizer, text, [count], self.image_token_id, self.prompt.image_marker))
        return processed, ids

    def training_batch(self, images: list[torch.Tensor], texts: list[str], answers: list[str],
                       blank: list[bool] | None = None, pack_tokens: int = 0) -> dict:
        """Model inputs of prompts + answers; ``blank[i]`` blanks image i as ``blind`` blanks them all.
        ``pack_tokens`` > 0: samples packed into rows of at most that many tokens, with ``cu_seqlens``
        (:mod:`mm.models.vlm_packing`; the images follow the packed sample order), where that takes
        fewer token positions than one padded row a sample (samples of near-equal length stay unpacked)."""
        processed, prompts = self.prompts(images, texts)
        if blank is not None:
            for tiles, drop in zip(processed.pixel_values.split(processed.tiles), blank, strict=True):
                if drop:
                    tiles.zero_()
        rows = [training_example(p, self.tokenizer.encode(self.prompt.answer_prefix + a), self.tokenizer.eos_id)
                for p, a in zip(prompts, answers, strict=True)]
        batch = pad_batch(rows, self.pad_id, self.prompt.max_tokens)
        if pack_tokens:
            from mm.models.vlm_packing import pack_batch

            packed, order = pack_batch(rows, self.pad_id, pack_tokens)
            if packed["input_ids"].numel() < batch["input_ids"].numel():
                tiles = processed.pixel_values.split(processed.tiles)
                return {**packed, "pixel_values": torch.cat([tiles[i] for i in order]),
                        "image_sizes": processed.image_sizes[order]}
        return {**batch, "pixel_values": processed.pixel_values, "image_sizes": processed.image_sizes}


def to_uint8(images: torch.Tensor | list[torch.Tensor]) -> list[torch.Tensor]:
    """A reader's un-normalised float images in [0, 1] -> uint8 [3, H, W] images (exact: the reader
    made the floats from uint8 pixels): a batch [B, 3, H, W], or a list of [3, H, W] of their own
    sizes (``image.resize: none``, for any-res)."""
    if isinstance(images, torch.Tensor):
        return list(images.mul(255).round_().clamp_(0, 255).to(torch.uint8))
    return [image.mul(255).round_().clamp_(0, 255).to(torch.uint8) for image in images]
