"""Vision-language model in the MiniMax-VL-01 / LLaVA-NeXT layout (DESIGN §4).

    tiles [N, 3, S, S] --ViT--> patch tokens [N, g², w] --(pixel shuffle)--> adapter (Linear, GELU,
    Linear) --> [N, g², hidden] --any-res layout + image_newline--> visual tokens [V, hidden]
    prompt ids [B, T] --embed--> [B, T, hidden]; the V positions holding ``image_token_id`` are
    replaced by the visual tokens in order (masked scatter) --> the hybrid LM (mm.models.lm)

Any number of images per sample and text-only samples mix freely in a batch: the images' tokens
are consumed in prompt order. Interchange with Hugging Face (``from_hf``/``to_hf``) and decoding
(``generate``) are functions of their own modules, reached through the functions at the bottom.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from mm.models.anyres import ImageConfig, tile_grid, unpadded_rows_cols
from mm.models.lm import LM, LMConfig, LMOutput
from mm.models.vision_tower import VisionConfig, VisionTower


@dataclass
class VLMConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    image: ImageConfig = field(default_factory=ImageConfig)
    lm: LMConfig = field(default_factory=LMConfig)
    image_token_id: int = 259  # placeholder id in prompts (the byte tokenizer's first free id)
    pixel_shuffle: int = 1  # r > 1: merge r×r neighbouring patches into one token (r² fewer tokens)

    def __post_init__(self):
        if self.pixel_shuffle < 1:
            raise ValueError(f"pixel_shuffle must be >= 1, got {self.pixel_shuffle}")


class Adapter(nn.Module):
    """Vision width -> LM hidden: y = W2 GELU(W1 x + b1) + b2 (LLaVA's ``multi_modal_projector``).

    With pixel shuffle r, each r×r block of a tile's g×g token map is concatenated channel-wise
    first ([g², w] -> [(g/r)², r²·w]), so W1 sees r²·w inputs."""

    def __init__(self, vision_width: int, hidden: int, pixel_shuffle: int = 1):
        super().__init__()
        self.r = pixel_shuffle
        self.linear_1 = nn.Linear(vision_width * pixel_shuffle**2, hidden)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(hidden, hidden)

    def shuffle(self, x: torch.Tensor) -> torch.Tensor:
        n, p, w = x.shape
        g, r = round(p**0.5), self.r
        x = x.view(n, g // r, r, g // r, r, w)  # [N, g/r, r, g/r, r, w]
        return x.permute(0, 1, 3, 2, 4, 5).reshape(n, (g // r) ** 2, r * r * w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.r > 1:
            x = self.shuffle(x)
        return self.linear_2(self.act(self.linear_1(x)))


class VLM(nn.Module):
    def __init__(self, cfg: VLMConfig):
        super().__init__()
        if not 0 <= cfg.image_token_id < cfg.lm.vocab_size:
            raise ValueError(f"image_token_id={cfg.image_token_id} is outside the LM vocabulary "
                             f"(lm.vocab_size={cfg.lm.vocab_size})")
        self.cfg = cfg
        self.vision = VisionTower(cfg.vision)
        if self.vision.image_size != cfg.image.size:
            raise ValueError(f"image.size={cfg.image.size} but the vision tower takes {self.vision.image_size} px")
        if self.vision.grid % cfg.pixel_shuffle:
            raise ValueError(f"pixel_shuffle={cfg.pixel_shuffle} does not divide the {self.vision.grid}² patch grid")
        self.tokens_per_side = self.vision.grid // cfg.pixel_shuffle
        self.adapter = Adapter(self.vision.width, cfg.lm.hidden, cfg.pixel_shuffle)
        self.image_newline = nn.Parameter(torch.randn(cfg.lm.hidden) * cfg.lm.hidden**-0.5)
        self.lm = LM(cfg.lm)

    def encode_images(self, pixel_values: torch.Tensor, image_sizes: torch.Tensor) -> torch.Tensor:
        """Tiles of N images ([sum tiles, 3, S, S], or Hugging Face's padded [N, max_tiles, 3, S, S])
        and their sizes [N, 2] -> the visual tokens of all images in order, [V, hidden]."""
        sizes = image_sizes.tolist()
        counts = [1 + gh * gw for gh, gw in (tile_grid(h, w, self.cfg.image) for h, w in sizes)]
        if pixel_values.ndim == 5:
            pixel_values = torch.cat([p[:n] for p, n in zip(pixel_values, counts, strict=True)])
        if pixel_values.shape[0] != sum(counts):
            raise ValueError(f"{pixel_values.shape[0]} tiles given for images of sizes {sizes}, "
                             f"which take {sum(counts)} tiles")
        feats = self.adapter(self.vision(pixel_values))  # [sum tiles, g², hidden]
        g = self.tokens_per_side
        out = []
        for (h, w), image in zip(sizes, feats.split(counts), strict=True):
            out.append(image[0])  # the thumbnail's g² tokens
            if image.shape[0] == 1:
                continue
            gh, gw = tile_grid(h, w, self.cfg.image)
            grid = image[1:].view(gh, gw, g, g, -1).permute(0, 2, 1, 3, 4).reshape(gh * g, gw * g, -1)
            rows, cols = unpadded_rows_cols(h, w, gh * g, gw * g)
            grid = grid[rows, cols]  # [rows, cols, hidden]
            newline = self.image_newline.to(grid.dtype).expand(grid.shape[0], 1, -1)
            out.append(torch.cat([grid, newline], dim=1).flatten(0, 1))  # [rows·(cols + 1), hidden]
        return torch.cat(out)

    def embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None,
              image_sizes: torch.Tensor | None = None) -> torch.Tensor:
        """Token embeddings [B, T, hidden] with the image placeholders replaced by visual tokens."""
        x = self.lm.embed_tokens(input_ids)
        mask = input_ids == self.cfg.image_token_id
        placeholders = int(mask.sum())
        if pixel_values is None:
            if placeholders:
                raise ValueError(f"input_ids hold {placeholders} image placeholders (id {self.cfg.image_token_id}) "
                                 "but no images were given")
            return x
        visual = self.encode_images(pixel_values, image_sizes)
        if placeholders != visual.shape[0]:
            raise ValueError(f"input_ids hold {placeholders} image placeholders (id {self.cfg.image_token_id}) but "
                             f"the {image_sizes.shape[0]} images give {visual.shape[0]} visual tokens")
        return x.masked_scatter(mask[..., None], visual.to(x.dtype))

    def forward(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        image_sizes: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        return_logits: bool = True,
        cu_seqlens: torch.Tensor | None = None,
    ) -> LMOutput:
        """input_ids, labels [B, T] (labels shifted: the target of position t, -100 ignored; a batch
        with every label ignored gives loss 0); pixel_values/image_sizes as in :meth:`encode_images`;
        cu_seqlens [S + 1] for samples packed into rows (:mod:`mm.models.vlm_packing`), or None."""
        embeds = self.embed(input_ids, pixel_values, image_sizes)
        return self.lm(input_ids, labels=labels, cu_seqlens=cu_seqlens, inputs_embeds=embeds,
                       return_logits=return_logits)

    def num_image_tokens(self, height: int, width: int) -> int:
        from mm.models.anyres import num_image_tokens

        return num_image_tokens(height, width, self.cfg.image, self.tokens_per_side)


def from_hf(path) -> VLM:
    """Load a LLaVA-NeXT-layout directory (MiniMax-VL-01's release layout; see :mod:`mm.models.vlm_hf`)."""
    from mm.models.vlm_hf import load_hf

    return load_hf(path)


def to_hf(model: VLM, path, max_shard_bytes: int = 5 * 2**30) -> None:
    """Write ``model`` as a LLaVA-NeXT directory that transformers' ``LlavaNextForConditionalGeneration`` loads."""
    from mm.models.vlm_hf import save_hf

    save_hf(model, path, max_shard_bytes)
