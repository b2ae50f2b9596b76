"""LLaVA-NeXT folders (MiniMax-VL-01's release layout) <-> :class:`mm.models.vlm.VLM`.

``config.json`` holds ``text_config`` (a ``minimax`` or MiniMax ``MiniMaxText01`` text model, read by
:mod:`mm.models.lm_hf`), ``vision_config`` (a CLIP ViT), ``image_grid_pinpoints``,
``image_token_index``, ``vision_feature_layer``. Key map, file -> ours:

    language_model.model.* / language_model.lm_head.*   -> lm.*  (through mm.models.lm_hf)
    (transformers 5 in memory: model.language_model.*, lm_head.*)
    vision_tower[.vision_model].embeddings.class_embedding [w]          -> vision.encoder.cls_token [1, 1, w]
      .embeddings.position_embedding.weight [1 + P, w]                    -> pos_embed [1, 1 + P, w]
      .embeddings.patch_embedding.weight                                  -> patch_embed.proj.weight
      .pre_layrnorm / .post_layernorm                                     -> norm_pre / norm
      .encoder.layers.i.{layer_norm1, layer_norm2, mlp.fc1, mlp.fc2}     -> blocks.i.{norm1, norm2, mlp.fc1, mlp.fc2}
      .encoder.layers.i.self_attn.{q,k,v}_proj                           -> blocks.i.attn.qkv (stacked q; k; v)
      .encoder.layers.i.self_attn.out_proj                               -> blocks.i.attn.proj
    multi_modal_projector.linear_{1,2}  -> adapter.linear_{1,2};   image_newline -> image_newline

The vision tower is built through timm as a CLIP ViT (pre-norm, class token, QuickGELU or GELU).
Every key is accounted for and every shape checked; features we do not implement fail naming the key.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from data_pipelines.collate import NORMALIZATIONS
from mm.models.anyres import ImageConfig
from mm.models.lm_hf import (
    HFFormatError,
    config_from_hf,
    config_to_hf,
    fill_lm,
    hf_tensors,
    weight_entries,
    write_weights,
)
from mm.models.vision_tower import VisionConfig
from mm.models.vlm import VLM, VLMConfig

_ACTS = {"quick_gelu": "quick_gelu", "gelu": "gelu"}
_LAYER = re.compile(r"encoder\.layers\.(\d+)\.(.+)$")
_BLOCK = {"layer_norm1": "norm1", "layer_norm2": "norm2", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
          "self_attn.out_proj": "attn.proj"}
_TOP = {"embeddings.patch_embedding.weight": "patch_embed.proj.weight", "pre_layrnorm.weight": "norm_pre.weight",
        "pre_layrnorm.bias": "norm_pre.bias", "post_layernorm.weight": "norm.weight",
        "post_layernorm.bias": "norm.bias"}
CLIP_MEAN_STD = "clip"


def _vision_config(vc: dict, feature_layer, where: str) -> VisionConfig:
    def unsupported(key, value):
        raise HFFormatError(f"{where}: vision_config {key}={value!r} is not supported by mm's VLM")

    if vc.get("model_type", "clip_vision_model") != "clip_vision_model":
        unsupported("model_type", vc.get("model_type"))
    act = vc.get("hidden_act", "quick_gelu")
    if act not in _ACTS:
        unsupported("hidden_act", act)
    for key, ok in (("layer_norm_eps", 1e-5), ("num_channels", 3), ("attention_dropout", 0.0)):
        if vc.get(key, ok) != ok:
            unsupported(key, vc[key])
    if not isinstance(feature_layer, int):
        raise HFFormatError(f"{where}: vision_feature_layer={feature_layer!r}: only one layer is supported")
    width, inner = vc.get("hidden_size", 768), vc.get("intermediate_size", 3072)
    options = dict(img_size=vc.get("image_size", 224), patch_size=vc.get("patch_size", 32), embed_dim=width,
                   depth=vc.get("num_hidden_layers", 12), num_heads=vc.get("num_attention_heads", 12),
                   mlp_ratio=inner / width, act_layer=_ACTS[act])
    return VisionConfig(library="timm", name="vit_base_patch16_clip_224", checkpoint=None, layer=feature_layer,
                        options=options)


def config_from_llava(hf: dict, where: str) -> VLMConfig:
    def unsupported(key, value):
        raise HFFormatError(f"{where}: {key}={value!r} is not supported by mm's VLM")

    if hf.get("model_type") not in ("llava_next", "minimax_vl_01"):
        unsupported("model_type", hf.get("model_type"))
    for key, ok in (("vision_feature_select_strategy", "default"), ("projector_hidden_act", "gelu"),
                    ("multimodal_projector_bias", True), ("process_image_mode", "anyres")):
        if hf.get(key, ok) != ok:
            unsupported(key, hf[key])
    if "text_config" not in hf or "vision_config" not in hf:
        raise HFFormatError(f"{where}: needs text_config and vision_config")
    vision = _vision_config(hf["vision_config"], hf.get("vision_feature_layer", -2), where)
    lm = config_from_hf(hf["text_config"], f"{where} text_config")
    pinpoints = hf.get("image_grid_pinpoints") or [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
    image = ImageConfig(size=vision.options["img_size"], anyres=True, grid_pinpoints=pinpoints, normalize=CLIP_MEAN_STD)
    token = hf.get("image_token_index", hf.get("image_token_id", 32000))
    return VLMConfig(vision=vision, image=image, lm=lm, image_token_id=token, pixel_shuffle=1)


def _vision_key(key: str) -> str | None:
    """Our ``vision.encoder`` key of a CLIP key (``vision_tower.`` and ``vision_model.`` stripped)."""
    if key in _TOP:
        return _TOP[key]
    if key == "embeddings.class_embedding":
        return "cls_token"
    if key == "embeddings.position_embedding.weight":
        return "pos_embed"
    match = _LAYER.match(key)
    if match:
        i, rest = match.groups()
        name, _, param = rest.rpartition(".")
        if name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
            return f"blocks.{i}.attn.qkv.{param}"
        if name in _BLOCK:
            return f"blocks.{i}.{_BLOCK[name]}.{param}"
    return None


def load_hf(path) -> VLM:
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise HFFormatError(f"{path}: no config.json")
    cfg = config_from_llava(json.loads(config_file.read_text()), str(config_file))
    model = VLM(cfg)
    ours = model.state_dict()
    lm_entries, loaded, qkv = [], set(), {}

    def put(key: str, value: torch.Tensor, where: str) -> None:
        if key not in ours:
            raise HFFormatError(f"{where}: unexpected key (mm has no {key})")
        if ours[key].shape != value.shape:
            raise HFFormatError(f"{where}: shape {tuple(value.shape)} does not fit {key} {tuple(ours[key].shape)}")
        ours[key].copy_(value)
        loaded.add(key)

    for where, key, tensor in weight_entries(path):
        if key.startswith(("language_model.model.", "model.language_model.")):
            lm_entries.append((where, "model." + key.split(".", 2)[2], tensor))
        elif key in ("language_model.lm_head.weight", "lm_head.weight"):
            lm_entries.append((where, "lm_head.weight", tensor))
        elif key.removeprefix("model.") == "image_newline":
            put("image_newline", tensor(), where)
        elif key.removeprefix("model.").startswith("multi_modal_projector."):
            put("adapter." + key.removeprefix("model.").removeprefix("multi_modal_projector."), tensor(), where)
        elif key.removeprefix("model.").startswith("vision_tower."):
            clip = key.removeprefix("model.").removeprefix("vision_tower.").removeprefix("vision_model.")
            if clip == "embeddings.position_ids":
                continue  # a derived buffer of older files: arange(1 + P)
            ours_key = _vision_key(clip)
            if ours_key is None:
                raise HFFormatError(f"{where}: unexpected vision tower key")
            if ".attn.qkv." in ours_key:
                qkv.setdefault(ours_key, {})[clip.split("self_attn.")[1][0]] = (tensor(), where)
                continue
            value = tensor()
            if ours_key in ("cls_token", "pos_embed"):  # [w] / [1 + P, w] -> [1, 1, w] / [1, 1 + P, w]
                value = value.reshape(1, -1, value.shape[-1])
            put("vision.encoder." + ours_key, value, where)
        else:
            raise HFFormatError(f"{where}: unexpected key")
    for key, parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise HFFormatError(f"{path}: {key} needs q_proj, k_proj and v_proj; found {sorted(parts)}")
        put("vision.encoder." + key, torch.cat([parts[c][0] for c in "qkv"]), parts["q"][1])
    fill_lm(model.lm, lm_entries, str(path))
    missing = sorted(k for k in ours if not k.startswith("lm.") and k not in loaded)
    if missing:
        raise HFFormatError(f"{path}: missing weights: {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
    return model


def _check_writable(model: VLM) -> None:
    cfg = model.cfg
    enc = model.vision.encoder
    problems = []
    if cfg.vision.library != "timm" or not hasattr(enc, "norm_pre") or getattr(enc, "cls_token", None) is None:
        problems.append("a timm CLIP ViT vision tower (pre-norm, class token)")
    if cfg.pixel_shuffle != 1:
        problems.append(f"pixel_shuffle=1 (got {cfg.pixel_shuffle})")
    if not cfg.image.anyres:
        problems.append("image.anyres=true")
    if cfg.image.normalize != CLIP_MEAN_STD:
        problems.append(f"image.normalize=clip (got {cfg.image.normalize})")
    if problems:
        raise HFFormatError(f"to_hf: the LLaVA-NeXT format needs {'; '.join(problems)}")


def _vision_config_to_hf(model: VLM) -> dict:
    enc = model.vision.encoder
    block = enc.blocks[0]
    act = "quick_gelu" if type(block.mlp.act).__name__ == "QuickGELU" else "gelu"
    return {"model_type": "clip_vision_model", "hidden_size": model.vision.width,
            "intermediate_size": block.mlp.fc1.out_features, "num_hidden_layers": len(enc.blocks),
            "num_attention_heads": block.attn.num_heads, "image_size": model.vision.image_size,
            "patch_size": model.vision.patch_size, "hidden_act": act, "layer_norm_eps": enc.norm.eps,
            "num_channels": 3}


def _vision_tensors(model: VLM) -> dict[str, torch.Tensor]:
    ours = {k.removeprefix("vision.encoder."): v for k, v in model.state_dict().items() if k.startswith("vision.")}
    out = {}
    prefix = "vision_tower.vision_model."
    for hf_key, our_key in _TOP.items():
        out[prefix + hf_key] = ours[our_key]
    out[prefix + "embeddings.class_embedding"] = ours["cls_token"].reshape(-1)
    out[prefix + "embeddings.position_embedding.weight"] = ours["pos_embed"][0]
    for i in range(len(model.vision.encoder.blocks)):
        layer = f"{prefix}encoder.layers.{i}."
        for hf_name, our_name in _BLOCK.items():
            for param in ("weight", "bias"):
                out[f"{layer}{hf_name}.{param}"] = ours[f"blocks.{i}.{our_name}.{param}"]
        for param in ("weight", "bias"):
            for c, part in zip("qkv", ours[f"blocks.{i}.attn.qkv.{param}"].chunk(3), strict=True):
                out[f"{layer}self_attn.{c}_proj.{param}"] = part
    return out


def save_hf(model: VLM, path, max_shard_bytes: int = 5 * 2**30) -> None:
    _check_writable(model)
    path = Path(path)
    cfg = model.cfg
    tensors = {("language_model." + k): v for k, v in hf_tensors(model.lm).items()}
    tensors.update(_vision_tensors(model))
    for name in ("linear_1.weight", "linear_1.bias", "linear_2.weight", "linear_2.bias"):
        tensors["multi_modal_projector." + name] = model.adapter.state_dict()[name]
    tensors["image_newline"] = model.image_newline
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    write_weights(tensors, path, max_shard_bytes)
    config = {
        "architectures": ["LlavaNextForConditionalGeneration"], "model_type": "llava_next",
        "text_config": config_to_hf(cfg.lm), "vision_config": _vision_config_to_hf(model),
        "image_grid_pinpoints": [list(p) for p in cfg.image.pinpoints], "image_token_index": cfg.image_token_id,
        "vision_feature_layer": cfg.vision.layer, "vision_feature_select_strategy": "default",
        "projector_hidden_act": "gelu", "multimodal_projector_bias": True, "tie_word_embeddings": False,
        "image_seq_length": model.tokens_per_side**2, "dtype": "float32",
    }  # fmt: skip
    (path / "config.json").write_text(json.dumps(config, indent=2))
    size = cfg.image.size
    processor = {
        "image_processor_type": "LlavaNextImageProcessor", "image_grid_pinpoints": config["image_grid_pinpoints"],
        "size": {"shortest_edge": size}, "crop_size": {"height": size, "width": size}, "resample": 3,
        "do_resize": True, "do_center_crop": True, "do_rescale": True, "rescale_factor": 1 / 255,
        "do_normalize": True, "image_mean": list(NORMALIZATIONS[CLIP_MEAN_STD][0]),
        "image_std": list(NORMALIZATIONS[CLIP_MEAN_STD][1]), "do_convert_rgb": True, "do_pad": True,
    }  # fmt: skip
    (path / "preprocessor_config.json").write_text(json.dumps(processor, indent=2))
