"""OpenAI CLIP weights <-> lip_jax.models.clip.CLIP parameters (strict, both directions).

Sources read by `load_clip`:
  * OpenAI's `ViT-B-32.pt` TorchScript archive (the tensors of its state dict, read
    as data by lip_jax.weights.torchscript without running the archive; fp16 weights are cast to
    float32) or a plain OpenAI state dict (`.pt` / `.pth`);
  * a Hugging Face `CLIPModel` directory (`config.json` + `model.safetensors` or `pytorch_model.bin`),
    or a hub name such as `openai/clip-vit-base-patch32` when the network is available.
Written back: `clip_to_openai` gives the OpenAI state-dict layout.

Key mapping: the Flax paths give OpenAI's names with the generic rule of lip_jax.weights.torch_io,
except `ln_1` / `ln_2` (attributes, not indices), `attn.in_proj_{weight,bias}`, and the text tower,
which lives under `text.` in Flax and at the top level in OpenAI's state dict.
"""

from __future__ import annotations

import json
import re
from typing import Mapping

import jax
import numpy as np
from flax import linen as nn

from lip_jax.weights import torch_io
from lip_jax.weights.errors import ConversionError
from lip_jax.models.clip import ClipConfig, param_template
from lip_jax.paths import PathLike, is_url, path as as_path

KEY_RULES = [
    (r"\.ln\.(\d+)\.", r".ln_\1."),
    (r"\.attn\.in_proj\.(weight|bias)$", r".attn.in_proj_\1"),
    (r"^text\.", ""),
]
# Scalars OpenAI's TorchScript archive may carry next to the weights (clip.model.build_model drops them).
_OPENAI_EXTRA = ("input_resolution", "context_length", "vocab_size")




def infer_config(state: Mapping, head_width: int = 64, tokenizer: str | None = None) -> ClipConfig:
    """ClipConfig from an OpenAI state dict's shapes, as OpenAI's build_model does (heads = width / 64)."""
    need = ("visual.conv1.weight", "visual.positional_embedding", "text_projection", "positional_embedding",
            "token_embedding.weight", "ln_final.weight")
    missing = [k for k in need if k not in state]
    if missing:
        raise ConversionError(f"not an OpenAI CLIP state dict (missing {', '.join(missing)})")
    conv = tuple(state["visual.conv1.weight"].shape)
    grid = round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)

    def count(prefix):
        return len({k[len(prefix):].split(".")[0] for k in state if k.startswith(prefix)})

    vocab = int(state["token_embedding.weight"].shape[0])
    width = int(state["ln_final.weight"].shape[0])
    return ClipConfig(embed_dim=int(state["text_projection"].shape[1]), image_resolution=conv[-1] * grid,
                      vision_layers=count("visual.transformer.resblocks."), vision_width=conv[0],
                      vision_patch_size=conv[-1], vision_heads=conv[0] // head_width,
                      context_length=int(state["positional_embedding"].shape[0]), vocab_size=vocab,
                      transformer_width=width, transformer_heads=width // head_width,
                      transformer_layers=count("transformer.resblocks."),
                      tokenizer=tokenizer or ("bytes" if vocab == 259 else "clip"))


def clip_from_openai(state: Mapping, cfg, what: str = "CLIP") -> dict:
    """OpenAI state dict (torch tensors or arrays) -> float32 Flax params of CLIP(cfg), strictly."""
    state = {k: v for k, v in state.items() if k not in _OPENAI_EXTRA}
    template = param_template(cfg)
    params = torch_io.torch_to_flax(state, template, what, (), KEY_RULES)
    return jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32), params)  # OpenAI ships fp16


def clip_to_openai(params: Mapping, cfg=None, what: str = "CLIP") -> dict:
    """Flax params -> OpenAI state dict {key: float32 array} (`model.load_state_dict` order-free)."""
    params = nn.meta.unbox(params)
    if cfg is not None:  # refuse params of another size
        want = torch_io.expected_torch_shapes(param_template(cfg), (), KEY_RULES)
        got = torch_io.expected_torch_shapes(params, (), KEY_RULES)
        torch_io.check_keys({k: s for k, (_, s) in want.items()}, {k: s for k, (_, s) in got.items()}, what)
    return torch_io.flax_to_torch(params, what, (), KEY_RULES)


# --- Hugging Face transformers CLIPModel ------------------------------------------------------------

def _hf_layer_rules(prefix_hf: str, prefix_oa: str) -> list[tuple[str, str]]:
    return [
        (rf"^{prefix_hf}encoder\.layers\.(\d+)\.layer_norm(\d)\.", rf"{prefix_oa}transformer.resblocks.\1.ln_\2."),
        (rf"^{prefix_hf}encoder\.layers\.(\d+)\.self_attn\.out_proj\.",
         rf"{prefix_oa}transformer.resblocks.\1.attn.out_proj."),
        (rf"^{prefix_hf}encoder\.layers\.(\d+)\.mlp\.fc1\.", rf"{prefix_oa}transformer.resblocks.\1.mlp.c_fc."),
        (rf"^{prefix_hf}encoder\.layers\.(\d+)\.mlp\.fc2\.", rf"{prefix_oa}transformer.resblocks.\1.mlp.c_proj."),
    ]


_HF_RENAMES = _hf_layer_rules(r"text_model\.", "") + _hf_layer_rules(r"vision_model\.", "visual.") + [
    (r"^text_model\.embeddings\.token_embedding\.weight$", "token_embedding.weight"),
    (r"^text_model\.embeddings\.position_embedding\.weight$", "positional_embedding"),
    (r"^text_model\.final_layer_norm\.", "ln_final."),
    (r"^vision_model\.embeddings\.class_embedding$", "visual.class_embedding"),
    (r"^vision_model\.embeddings\.patch_embedding\.weight$", "visual.conv1.weight"),
    (r"^vision_model\.embeddings\.position_embedding\.weight$", "visual.positional_embedding"),
    (r"^vision_model\.pre_layrnorm\.", "visual.ln_pre."),
    (r"^vision_model\.post_layernorm\.", "visual.ln_post."),
    (r"^logit_scale$", "logit_scale"),
]
_HF_QKV = re.compile(r"^(text_model|vision_model)\.encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)$")
_HF_PROJ = {"text_projection.weight": "text_projection", "visual_projection.weight": "visual.proj"}


def hf_config_to_clip(hf: Mapping) -> ClipConfig:
    """A CLIPConfig (as a dict: `CLIPConfig.to_dict()`) -> ClipConfig; refuses what CLIP here cannot run."""
    t, v = hf["text_config"], hf["vision_config"]
    for name, sub in (("text", t), ("vision", v)):
        if sub.get("hidden_act", "quick_gelu") != "quick_gelu":
            raise ConversionError(f"HF CLIP {name}_config.hidden_act is {sub['hidden_act']!r}; "
                                  f"only quick_gelu (OpenAI) is supported")
        if sub.get("intermediate_size", 4 * sub["hidden_size"]) != 4 * sub["hidden_size"]:
            raise ConversionError(f"HF CLIP {name}_config.intermediate_size must be 4 * hidden_size")
        if abs(float(sub.get("layer_norm_eps", 1e-5)) - 1e-5) > 1e-12:
            raise ConversionError(f"HF CLIP {name}_config.layer_norm_eps must be 1e-5")
    vocab = int(t["vocab_size"])
    return ClipConfig(embed_dim=int(hf["projection_dim"]), image_resolution=int(v["image_size"]),
                      vision_layers=int(v["num_hidden_layers"]), vision_width=int(v["hidden_size"]),
                      vision_patch_size=int(v["patch_size"]), vision_heads=int(v["num_attention_heads"]),
                      context_length=int(t["max_position_embeddings"]), vocab_size=vocab,
                      transformer_width=int(t["hidden_size"]), transformer_heads=int(t["num_attention_heads"]),
                      transformer_layers=int(t["num_hidden_layers"]), tokenizer="bytes" if vocab == 259 else "clip")


def hf_to_openai(state: Mapping, what: str = "HF CLIP") -> dict:
    """transformers CLIPModel state dict -> OpenAI state dict (numpy); unknown keys are an error."""
    out, qkv, unknown = {}, {}, []
    for key, value in state.items():
        if key.endswith("position_ids"):  # a buffer older transformers versions saved
            continue
        value = torch_io.as_numpy(value)
        if key in _HF_PROJ:
            out[_HF_PROJ[key]] = value.T  # Linear(width, embed, bias=False): x @ W.T
            continue
        if m := _HF_QKV.match(key):
            qkv.setdefault((m.group(1), m.group(2), m.group(4)), {})[m.group(3)] = value
            continue
        for pattern, repl in _HF_RENAMES:
            if re.search(pattern, key):
                out[re.sub(pattern, repl, key)] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise ConversionError(f"{what}: unexpected {len(unknown)} keys: {torch_io._abbrev(sorted(unknown))}")
    for (tower, layer, leaf), parts in sorted(qkv.items()):
        if set(parts) != {"q", "k", "v"}:
            raise ConversionError(f"{what}: {tower} layer {layer} {leaf}: have only {sorted(parts)} of q/k/v")
        prefix = "visual." if tower == "vision_model" else ""
        out[f"{prefix}transformer.resblocks.{layer}.attn.in_proj_{leaf}"] = np.concatenate(
            [parts["q"], parts["k"], parts["v"]], axis=0)
    return out


def read_hf_dir(directory: PathLike) -> tuple[dict, ClipConfig]:
    """A save_pretrained CLIPModel directory -> (OpenAI state dict, ClipConfig). In an object store
    (`gs://...`) its files are read through epath (transformers and safetensors read local files)."""
    root = as_path(directory)
    cfg_path = root / "config.json"
    if not cfg_path.is_file():
        raise ConversionError(f"{directory}: no config.json (not a Hugging Face CLIPModel directory)")
    try:
        from transformers import CLIPConfig

        if is_url(root):
            raw = json.loads(cfg_path.read_text())
            if raw.get("model_type") != CLIPConfig.model_type:
                raise ValueError(f"model_type {raw.get('model_type')!r}, not {CLIPConfig.model_type!r}")
            hf_cfg = CLIPConfig.from_dict(raw).to_dict()
        else:
            hf_cfg = CLIPConfig.from_pretrained(directory).to_dict()
    except Exception as e:  # wrong model_type, malformed JSON, ...
        raise ConversionError(f"{cfg_path}: not a CLIPConfig ({type(e).__name__}: {e})") from e
    st, pt = root / "model.safetensors", root / "pytorch_model.bin"
    if st.is_file():
        from safetensors import numpy as st_numpy
        from safetensors import torch as st_torch

        data = st.read_bytes() if is_url(st) else None
        try:
            state = st_numpy.load(data) if data is not None else st_numpy.load_file(st)
        except Exception as e:  # bf16 tensors numpy cannot hold, truncated file
            try:
                state = st_torch.load(data) if data is not None else st_torch.load_file(st)
            except Exception:
                raise ConversionError(f"{st}: unreadable safetensors file ({type(e).__name__}: {e})") from e
    elif pt.is_file():
        state = torch_io.load_torch_checkpoint(pt)
    else:
        raise ConversionError(f"{directory}: neither model.safetensors nor pytorch_model.bin "
                              f"(sharded checkpoints are not supported)")
    return hf_to_openai(state, what=directory), hf_config_to_clip(hf_cfg)


_HUB_NAME = re.compile(r"^[\w.-]+/[\w.-]+$")


def load_clip(path: PathLike, cfg=None) -> tuple[dict, ClipConfig]:
    """OpenAI `.pt`, HF directory or HF hub name -> (float32 params, ClipConfig).

    `cfg` (preset name, dict or ClipConfig) overrides the sizes inferred from the checkpoint (OpenAI
    files do not record head counts: width / 64 is assumed, as OpenAI does)."""
    if as_path(path).is_dir():
        state, inferred = read_hf_dir(path)
    elif as_path(path).is_file():
        state = torch_io.load_torch_checkpoint(path)  # TorchScript archives too, as data
        inferred = None
    elif not is_url(path) and _HUB_NAME.match(str(path)):
        try:
            from huggingface_hub import snapshot_download

            local = snapshot_download(path, allow_patterns=["config.json", "model.safetensors", "pytorch_model.bin"])
        except Exception as e:  # offline, unknown repo, no access
            raise ConversionError(f"{path}: not a local file or directory, and the hub download failed "
                                  f"({type(e).__name__}: {e})") from e
        state, inferred = read_hf_dir(local)
    else:
        raise ConversionError(f"{path}: no such CLIP checkpoint file or directory")
    if cfg is not None:
        cfg = ClipConfig.from_any(cfg)
    else:
        cfg = inferred or infer_config(state)
    return clip_from_openai(state, cfg, what=path), cfg
