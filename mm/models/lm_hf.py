"""Hugging Face ``minimax`` format <-> :class:`mm.models.lm.LM`.

The directory holds ``config.json`` (``MiniMaxConfig``) and ``model.safetensors`` or shards with
``model.safetensors.index.json``. Expert weights are stored per expert as linear layers
(``block_sparse_moe.experts.{e}.w1/w2/w3.weight``, [out, in]); we keep them stacked for the
grouped matmul: ``gate_up[e] = [w1ᵀ | w3ᵀ]``, ``down[e] = w2ᵀ``. The lightning layers' decay
buffers in those files (``slope_rate``, ``*_decay``) are derived data: ours come from the layer
index, as theirs do, so reading skips them; writing includes them (computed from our slopes, so
the file is complete and transformers reports nothing as newly initialised). MiniMax's own release
config (``MiniMaxText01``) reads too. transformers applies RoPE to the whole head, so a
checkpoint maps to ``rotary_dim = head_dim``.

Every key is accounted for and every shape checked; configs with features we do not implement
fail naming the key.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from mm.models.lm import LM, LMConfig

_TYPES = {"linear_attention": "lightning", "full_attention": "softmax"}
_DERIVED = re.compile(r"model\.layers\.\d+\.self_attn\.(slope_rate|query_decay|key_decay|diagonal_decay)$")
BLOCK_SIZE = 256  # transformers' lightning block (its default), written with the derived buffers
_EXPERT = re.compile(r"model\.layers\.(\d+)\.block_sparse_moe\.experts\.(\d+)\.(w[123])\.weight$")


class HFFormatError(ValueError):
    """A Hugging Face directory we cannot map exactly; the message names the file and key."""


def _unsupported(where: str, key, value):
    raise HFFormatError(f"{where}: {key}={value!r} is not supported by mm's LM")


def _release_config(hf: dict, where: str) -> LMConfig:
    """MiniMax's own release config (``MiniMaxText01``: ``attn_type_list`` of 0 = lightning /
    1 = softmax, partial RoPE via ``rotary_dim``, ``layernorm_{linear_attention,full_attention,mlp}_
    {alpha,beta}`` and ``postnorm``). Its residual x = α·h + β·f(h) with h the normed input is ours
    when ``postnorm`` is true; the pre-norm form (residual x) is not implemented."""
    for key, ok in (("hidden_act", "silu"), ("sliding_window", None), ("postnorm", True),
                    ("shared_intermediate_size", 0), ("attention_dropout", 0.0), ("rope_scaling", None)):
        if hf.get(key, ok) != ok:
            _unsupported(where, key, hf[key])
    names = ("linear_attention", "full_attention", "mlp")
    alphas = {hf.get(f"layernorm_{k}_alpha", 1) for k in names}
    betas = {hf.get(f"layernorm_{k}_beta", 1) for k in names}
    if len(alphas) != 1 or len(betas) != 1:
        _unsupported(where, "layernorm_*_alpha/beta (must be equal for all sublayers)", (alphas, betas))
    heads, layers = hf["num_attention_heads"], hf["num_hidden_layers"]
    head_dim = hf.get("head_dim") or hf["hidden_size"] // heads
    kinds = hf.get("attn_type_list") or hf.get("decoder_attention_types")
    if kinds is None or len(kinds) != layers or not set(kinds) <= {0, 1}:
        _unsupported(where, "attn_type_list", kinds)
    return LMConfig(
        vocab_size=hf["vocab_size"], hidden=hf["hidden_size"], layers=layers, heads=heads,
        kv_heads=hf.get("num_key_value_heads") or heads, head_dim=head_dim,
        attn_type_list=["softmax" if k else "lightning" for k in kinds],
        rotary_dim=hf.get("rotary_dim") or head_dim, rope_theta=float(hf.get("rope_theta", 1e6)),
        ffn=hf["intermediate_size"], experts=hf["num_local_experts"], top_k=hf["num_experts_per_tok"],
        router_aux_coef=hf.get("router_aux_loss_coef", 0.001), norm_eps=hf.get("rms_norm_eps", 1e-5),
        residual_alpha=float(alphas.pop()), residual_beta=float(betas.pop()),
        tie_embeddings=hf.get("tie_word_embeddings", False), init_std=hf.get("initializer_range", 0.02),
    )  # fmt: skip


def config_from_hf(hf: dict, where: str) -> LMConfig:
    def unsupported(key, value):
        _unsupported(where, key, value)

    if hf.get("model_type") == "minimax_text_01" or "attn_type_list" in hf:
        return _release_config(hf, where)
    if hf.get("model_type") != "minimax":
        unsupported("model_type", hf.get("model_type"))
    for key, ok in (("hidden_act", "silu"), ("sliding_window", None), ("router_jitter_noise", 0.0),
                    ("attention_dropout", 0.0)):
        if hf.get(key, ok) != ok:
            unsupported(key, hf[key])
    rope = hf.get("rope_parameters") or {"rope_theta": hf.get("rope_theta", 1e6), "rope_type": "default"}
    if rope.get("rope_type", "default") != "default" or rope.get("partial_rotary_factor", 1.0) != 1.0:
        unsupported("rope_parameters", rope)
    alphas = {hf.get(f"{k}_alpha_factor", 1) for k in ("linear_attn", "full_attn", "mlp")}
    betas = {hf.get(f"{k}_beta_factor", 1) for k in ("linear_attn", "full_attn", "mlp")}
    if len(alphas) != 1 or len(betas) != 1:
        unsupported("*_alpha_factor/*_beta_factor (must be equal for all sublayers)", (alphas, betas))
    heads = hf["num_attention_heads"]
    head_dim = hf.get("head_dim") or hf["hidden_size"] // heads
    layer_types = hf.get("layer_types") or [
        "full_attention" if (i + 1) % 2 else "linear_attention" for i in range(hf["num_hidden_layers"])
    ]  # transformers' default when the list is absent
    for kind in layer_types:
        if kind not in _TYPES:
            unsupported("layer_types", kind)
    return LMConfig(
        vocab_size=hf["vocab_size"], hidden=hf["hidden_size"], layers=hf["num_hidden_layers"], heads=heads,
        kv_heads=hf.get("num_key_value_heads") or heads, head_dim=head_dim,
        attn_type_list=[_TYPES[t] for t in layer_types], rotary_dim=head_dim, rope_theta=float(rope["rope_theta"]),
        ffn=hf["intermediate_size"], experts=hf["num_local_experts"], top_k=hf["num_experts_per_tok"],
        router_aux_coef=hf.get("router_aux_loss_coef", 0.001), norm_eps=hf.get("rms_norm_eps", 1e-5),
        residual_alpha=float(alphas.pop()), residual_beta=float(betas.pop()),
        tie_embeddings=hf.get("tie_word_embeddings", False), init_std=hf.get("initializer_range", 0.02),
    )  # fmt: skip


def _weight_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return [path / name for name in sorted(set(weight_map.values()))]
    single = path / "model.safetensors"
    if not single.is_file():
        raise HFFormatError(f"{path}: no model.safetensors or model.safetensors.index.json")
    return [single]


def _our_key(hf_key: str) -> str:
    key = hf_key.removeprefix("model.")
    return key.replace(".block_sparse_moe.gate.", ".mlp.gate.")


def weight_entries(path: Path):
    """(where, key, lazy tensor) for every tensor of a directory's safetensors files, file by file;
    a tensor is read only when its thunk is called (the file is memory-mapped again then)."""

    def read(file: Path, key: str) -> torch.Tensor:
        with safe_open(str(file), framework="pt") as f:
            return f.get_tensor(key)

    for file in _weight_files(path):
        with safe_open(str(file), framework="pt") as f:
            keys = list(f.keys())
        for key in keys:
            yield f"{file.name}: {key}", key, (lambda file=file, key=key: read(file, key))


def fill_lm(model: LM, entries, where: str) -> None:
    """Copy ``(where, minimax key, lazy tensor)`` entries into ``model``, checking every shape, and
    fail naming any key mm does not have and any weight the entries left out."""
    cfg = model.cfg
    ours = model.state_dict()
    ffn = cfg.ffn
    loaded: set[str] = set()

    def put(key: str, value: torch.Tensor, where: str, index=None) -> None:
        if key not in ours:
            raise HFFormatError(f"{where}: unexpected key (mm has no {key})")
        target = ours[key] if index is None else ours[key][index]
        if target.shape != value.shape:
            raise HFFormatError(f"{where}: shape {tuple(value.shape)} does not fit {key} {tuple(target.shape)}")
        target.copy_(value)

    for entry_where, hf_key, tensor in entries:
        if _DERIVED.match(hf_key):
            continue
        expert = _EXPERT.match(hf_key)
        if expert:
            layer, e, w = expert.groups()
            prefix = f"layers.{layer}.mlp."
            if w == "w2":
                put(prefix + "down", tensor().t(), entry_where, int(e))
            else:
                cols = slice(0, ffn) if w == "w1" else slice(ffn, 2 * ffn)
                put(prefix + "gate_up", tensor().t(), entry_where, (int(e), slice(None), cols))
            loaded.add(f"{prefix}{w}.{e}")
            continue
        key = _our_key(hf_key)
        put(key, tensor(), entry_where)
        loaded.add(key)
    expected = {k for k in ours if not k.endswith((".gate_up", ".down"))}
    expected |= {f"layers.{i}.mlp.{w}.{e}" for i in range(cfg.layers) for e in range(cfg.experts)
                 for w in ("w1", "w2", "w3")}
    if cfg.tie_embeddings:
        loaded.add("lm_head.weight")
    missing = sorted(expected - loaded)
    if missing:
        raise HFFormatError(f"{where}: missing weights: {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")


def load_hf(path: str | Path) -> LM:
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise HFFormatError(f"{path}: no config.json")
    model = LM(config_from_hf(json.loads(config_file.read_text()), str(config_file)))
    fill_lm(model, weight_entries(path), str(path))
    return model


def config_to_hf(cfg: LMConfig) -> dict:
    if not cfg.experts:
        raise HFFormatError("to_hf: the minimax format has no dense MLP; model.experts must be > 0")
    if cfg.shared_ffn:
        raise HFFormatError(f"to_hf: the minimax format has no shared expert (model.shared_ffn={cfg.shared_ffn})")
    if cfg.rotary_dim != cfg.head_dim:
        raise HFFormatError(f"to_hf: transformers' minimax rotates the whole head; model.rotary_dim={cfg.rotary_dim} "
                            f"!= head_dim={cfg.head_dim}")
    if "lightnet" in cfg.layer_types:
        raise HFFormatError(f"to_hf: the minimax format has no lightnet layers "
                            f"(model.attn_type_list={cfg.layer_types})")
    names = {v: k for k, v in _TYPES.items()}
    factors = {f"{k}_{ab}_factor": (cfg.alpha if ab == "alpha" else cfg.residual_beta)
               for k in ("linear_attn", "full_attn", "mlp") for ab in ("alpha", "beta")}
    return {
        "architectures": ["MiniMaxForCausalLM"], "model_type": "minimax",
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden, "intermediate_size": cfg.ffn,
        "num_hidden_layers": cfg.layers, "num_attention_heads": cfg.heads, "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.head_dim, "hidden_act": "silu", "rms_norm_eps": cfg.norm_eps,
        "layer_types": [names[t] for t in cfg.layer_types],
        "rope_parameters": {"rope_theta": cfg.rope_theta, "rope_type": "default"},
        "num_local_experts": cfg.experts, "num_experts_per_tok": cfg.top_k,
        "router_aux_loss_coef": cfg.router_aux_coef, "tie_word_embeddings": cfg.tie_embeddings,
        "initializer_range": cfg.init_std, "dtype": "float32", "block_size": BLOCK_SIZE, **factors,
    }  # fmt: skip


def hf_tensors(model: LM) -> dict[str, torch.Tensor]:
    out = {}
    ffn = model.cfg.ffn
    for key, value in model.state_dict().items():
        if model.cfg.tie_embeddings and key == "lm_head.weight":
            continue
        layer_prefix = "model." + key.rsplit(".mlp.", 1)[0]
        if key.endswith(".mlp.gate_up"):
            for e, w in enumerate(value):  # w [hidden, 2·ffn]
                out[f"{layer_prefix}.block_sparse_moe.experts.{e}.w1.weight"] = w[:, :ffn].t()
                out[f"{layer_prefix}.block_sparse_moe.experts.{e}.w3.weight"] = w[:, ffn:].t()
        elif key.endswith(".mlp.down"):
            for e, w in enumerate(value):
                out[f"{layer_prefix}.block_sparse_moe.experts.{e}.w2.weight"] = w.t()
        elif key == "lm_head.weight":
            out[key] = value
        else:
            out["model." + key.replace(".mlp.gate.", ".block_sparse_moe.gate.")] = value
    for i, layer in enumerate(model.layers):
        if layer.kind == "lightning":
            for name, value in decay_buffers(layer.self_attn.slopes, BLOCK_SIZE).items():
                out[f"model.layers.{i}.self_attn.{name}"] = value
    return {k: v.detach().contiguous().cpu() for k, v in out.items()}


def decay_buffers(slopes: torch.Tensor, block_size: int) -> dict[str, torch.Tensor]:
    """The derived buffers transformers' ``minimax`` lightning layer keeps, from the slopes s [H]
    (with the per-layer factor) and its block size B, r = 1..B:
    slope_rate = s [H, 1, 1]; query_decay = exp(-s·r) [H, B, 1]; key_decay = exp(-s·(B - r)) [H, B, 1];
    diagonal_decay[i, j] = exp(-s·(i - j)) for i ≥ j else 0 [1, H, B, B]."""
    s = slopes.detach().float().cpu()[:, None, None]  # [H, 1, 1]
    r = torch.arange(1, block_size + 1, dtype=torch.float32)
    diff = r[:, None] - r[None, :]  # [B, B]
    diagonal = torch.where(diff >= 0, torch.exp(-s * diff), torch.zeros(()))  # [H, B, B]
    return {
        "slope_rate": s,
        "query_decay": torch.exp(-s * r[:, None]),
        "key_decay": torch.exp(-s * (block_size - r[:, None])),
        "diagonal_decay": diagonal[None],
    }


def save_hf(model: LM, path: str | Path, max_shard_bytes: int = 5 * 2**30) -> None:
    path = Path(path)
    config = config_to_hf(model.cfg)
    write_weights(hf_tensors(model), path, max_shard_bytes)
    (path / "config.json").write_text(json.dumps(config, indent=2))


def write_weights(tensors: dict[str, torch.Tensor], path: Path, max_shard_bytes: int) -> None:
    """``model.safetensors``, or shards of at most ``max_shard_bytes`` with their index."""
    path.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, value in tensors.items():
        nbytes = value.numel() * value.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = value
        size += nbytes
    meta = {"format": "pt"}
    if len(shards) == 1:
        save_file(shards[0], str(path / "model.safetensors"), metadata=meta)
    else:
        weight_map = {}
        for i, shard in enumerate(shards, 1):
            name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, str(path / name), metadata=meta)
            weight_map.update(dict.fromkeys(shard, name))
        total = sum(v.numel() * v.element_size() for v in tensors.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
