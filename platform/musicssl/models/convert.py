"""Checkpoint interchange: Hugging Face directories and fairseq `.pt` files, without transformers or fairseq.

- `export_hf(encoder, paradigm, out_dir)` writes `config.json` + `model.safetensors` that `transformers` loads as
  `Data2VecAudioModel` (music2vec) or `HubertModel` (musichubert).
- `import_hf(dir)` reads such a directory (public models such as data2vec-audio base, HuBERT base or
  music2vec-v1 saved locally) into an `EncoderConfig` + `SSLEncoder` state dict.
- `import_fairseq(path)` reads a fairseq checkpoint through a restricted unpickler: tensors and plain
  containers are rebuilt, every other class (omegaconf configs, argparse namespaces, ...) becomes inert data,
  and no code from the file runs.
"""

from __future__ import annotations

import ast
import json
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from musicssl.checkpoints import ENCODER_FILE, file_sha256, load_encoder_checkpoint
from musicssl.config import EncoderConfig, ModelConfig, Music2VecConfig, MusicHubertConfig

HF_MODEL_TYPES = {"music2vec": ("data2vec-audio", "Data2VecAudioModel"), "musichubert": ("hubert", "HubertModel")}

_LAYER_RENAMES = (  # (ours, HF) inside encoder.layers.{i}.
    ("self_attn.q_proj", "attention.q_proj"), ("self_attn.k_proj", "attention.k_proj"),
    ("self_attn.v_proj", "attention.v_proj"), ("self_attn.out_proj", "attention.out_proj"),
    ("self_attn_layer_norm", "layer_norm"), ("fc1", "feed_forward.intermediate_dense"),
    ("fc2", "feed_forward.output_dense"), ("final_layer_norm", "final_layer_norm"),
)
_TOP_RENAMES = (("layer_norm.", "feature_projection.layer_norm."), ("post_extract_proj.", "feature_projection.projection."),
                ("encoder.layer_norm.", "encoder.layer_norm."))


def to_hf_key(key: str) -> str | None:
    """Our SSLEncoder key -> the HF key (None for keys HF has no place for)."""
    if key == "mask_emb":
        return "masked_spec_embed"
    if m := re.fullmatch(r"feature_extractor\.conv_layers\.(\d+)\.0\.(weight|bias)", key):
        return f"feature_extractor.conv_layers.{m[1]}.conv.{m[2]}"
    if m := re.fullmatch(r"feature_extractor\.conv_layers\.(\d+)\.2\.(?:1\.)?(weight|bias)", key):
        return f"feature_extractor.conv_layers.{m[1]}.layer_norm.{m[2]}"
    if m := re.fullmatch(r"encoder\.pos_conv\.0\.(bias|parametrizations\.weight\.original[01])", key):
        return f"encoder.pos_conv_embed.conv.{m[1]}"
    if m := re.fullmatch(r"encoder\.pos_conv\.(\d+)\.0\.(weight|bias)", key):
        return f"encoder.pos_conv_embed.layers.{m[1]}.conv.{m[2]}"
    if m := re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", key):
        for ours, theirs in _LAYER_RENAMES:
            if m[2] == ours:
                return f"encoder.layers.{m[1]}.{theirs}.{m[3]}"
    for ours, theirs in _TOP_RENAMES:
        if key.startswith(ours):
            return theirs + key[len(ours):]
    return None


def hf_config(cfg: EncoderConfig, paradigm: str) -> dict[str, Any]:
    """The HF `config.json` of an encoder."""
    model_type, arch = HF_MODEL_TYPES[paradigm]
    common = {
        "model_type": model_type, "architectures": [arch], "hidden_size": cfg.embed_dim,
        "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads, "intermediate_size": cfg.ffn_dim,
        "hidden_act": "gelu", "feat_extract_activation": "gelu", "layer_norm_eps": 1e-5,
        "conv_dim": [c for c, _, _ in cfg.conv_layers], "conv_kernel": [k for _, k, _ in cfg.conv_layers],
        "conv_stride": [s for _, _, s in cfg.conv_layers], "conv_bias": cfg.conv_bias,
        "num_conv_pos_embedding_groups": cfg.conv_pos_groups, "hidden_dropout": cfg.dropout,
        "attention_dropout": cfg.attention_dropout, "activation_dropout": cfg.activation_dropout,
        "feat_proj_dropout": cfg.dropout_input, "layerdrop": cfg.encoder_layerdrop, "do_stable_layer_norm": False,
    }
    if paradigm == "music2vec":
        if cfg.extractor_mode != "layer_norm" or cfg.pos_conv_depth < 2:
            raise ValueError("Data2VecAudioModel needs extractor_mode=layer_norm and pos_conv_depth > 1")
        return common | {"num_conv_pos_embeddings": cfg.pos_conv_depth,
                         "conv_pos_kernel_size": max(3, cfg.conv_pos // cfg.pos_conv_depth)}
    if cfg.pos_conv_depth != 1:
        raise ValueError("HubertModel needs pos_conv_depth=1 (one weight-normed positional conv)")
    return common | {"feat_extract_norm": "group" if cfg.extractor_mode == "default" else "layer",
                     "num_conv_pos_embeddings": cfg.conv_pos, "feat_proj_layer_norm": True,
                     "conv_pos_batch_norm": False}


def export_hf(state: dict[str, torch.Tensor], cfg: EncoderConfig, paradigm: str, out_dir: Path) -> Path:
    """Write an SSLEncoder state dict as a Hugging Face model directory."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for key, value in state.items():
        hf = to_hf_key(key)
        if hf is None:
            raise KeyError(f"no Hugging Face key for encoder weight {key!r}")
        tensors[hf] = value.detach().cpu().contiguous()
    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    (out_dir / "config.json").write_text(json.dumps(hf_config(cfg, paradigm), indent=2))
    return out_dir


def encoder_config_from_hf(hf: dict[str, Any]) -> tuple[EncoderConfig, str]:
    """HF config dict -> (EncoderConfig, paradigm)."""
    model_type = hf.get("model_type")
    if hf.get("do_stable_layer_norm"):
        raise ValueError("pre-LN (do_stable_layer_norm=true, e.g. *-large models) is not supported: "
                         "musicssl implements the post-LN base architecture")
    if hf.get("conv_pos_batch_norm"):
        raise ValueError("conv_pos_batch_norm=true is not supported")
    conv = tuple(zip(hf.get("conv_dim", (512,) * 7), hf.get("conv_kernel", (10, 3, 3, 3, 3, 2, 2)),
                     hf.get("conv_stride", (5, 2, 2, 2, 2, 2, 2)), strict=True))
    common = dict(conv_layers=conv, conv_bias=hf.get("conv_bias", False), embed_dim=hf.get("hidden_size", 768),
                  num_layers=hf.get("num_hidden_layers", 12), num_heads=hf.get("num_attention_heads", 12),
                  ffn_dim=hf.get("intermediate_size", 3072), conv_pos_groups=hf.get("num_conv_pos_embedding_groups", 16))
    if model_type == "data2vec-audio":
        depth, k = hf.get("num_conv_pos_embeddings", 5), hf.get("conv_pos_kernel_size", 19)
        return EncoderConfig(extractor_mode="layer_norm", pos_conv_depth=depth, conv_pos=k * depth, **common), "music2vec"
    if model_type in ("hubert", "wav2vec2"):
        mode = "default" if hf.get("feat_extract_norm", "group") == "group" else "layer_norm"
        return EncoderConfig(extractor_mode=mode, pos_conv_depth=1, conv_pos=hf.get("num_conv_pos_embeddings", 128),
                             **common), "musichubert"
    raise ValueError(f"unsupported Hugging Face model_type {model_type!r}; known: data2vec-audio, hubert, wav2vec2")


def import_hf(model_dir: Path) -> tuple[EncoderConfig, str, dict[str, torch.Tensor]]:
    """A local HF model directory -> (EncoderConfig, paradigm, SSLEncoder state dict)."""
    cfg_path = model_dir / "config.json"
    if not cfg_path.exists():
        raise FileNotFoundError(f"{model_dir}: not a Hugging Face model directory (no config.json)")
    cfg, paradigm = encoder_config_from_hf(json.loads(cfg_path.read_text()))
    if (model_dir / "model.safetensors").exists():
        hf_state = load_file(str(model_dir / "model.safetensors"))
    elif (model_dir / "pytorch_model.bin").exists():
        hf_state = torch.load(model_dir / "pytorch_model.bin", map_location="cpu", weights_only=True)
    else:
        raise FileNotFoundError(f"{model_dir}: no model.safetensors or pytorch_model.bin")
    return cfg, paradigm, _from_hf_state(hf_state, cfg)


def _from_hf_state(hf_state: dict[str, torch.Tensor], cfg: EncoderConfig) -> dict[str, torch.Tensor]:
    from musicssl.models.encoder import SSLEncoder

    prefix = re.compile(r"^(hubert|data2vec_audio|wav2vec2)\.")
    hf_state = {prefix.sub("", k).replace(".weight_g", ".parametrizations.weight.original0")
                .replace(".weight_v", ".parametrizations.weight.original1"): v for k, v in hf_state.items()}
    ours = SSLEncoder(cfg).state_dict()
    out, missing = {}, []
    for key, ref in ours.items():
        hf = to_hf_key(key)
        if hf in hf_state:
            out[key] = hf_state[hf]
        elif key == "mask_emb":
            out[key] = ref  # inference-only checkpoints may lack it; probing never uses it
        else:
            missing.append(f"{key} (HF {hf})")
    if missing:
        raise KeyError(f"Hugging Face checkpoint lacks {len(missing)} encoder weights, e.g. {missing[:3]}")
    return out


# --------------------------------------------------------------------------------------------------
# fairseq


class _Inert:
    """Stands in for any class a checkpoint names that is not on the allow list; keeps its data only."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._args, self._kwargs = args, kwargs

    def __setstate__(self, state: Any) -> None:
        self._state = state

    def __call__(self, *args: Any, **kwargs: Any) -> _Inert:
        return _Inert(*args, **kwargs)


_ALLOWED = {
    ("collections", "OrderedDict"), ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "slice"),
    ("builtins", "complex"), ("builtins", "bytearray"), ("torch", "Size"), ("torch", "device"), ("torch", "dtype"),
    ("numpy.core.multiarray", "scalar"), ("numpy", "dtype"), ("numpy._core.multiarray", "scalar"),
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED or (module == "torch._utils" and name.startswith("_rebuild_")) or (
                module == "torch" and name.endswith(("Storage", "dtype")) or module == "torch" and name in (
                    "float32", "float16", "bfloat16", "int64")):
            return super().find_class(module, name)
        return type(name, (_Inert,), {"__module__": "musicssl.inert." + module})


class _SafePickle:
    Unpickler = _SafeUnpickler
    load = staticmethod(lambda f, **kw: _SafeUnpickler(f, **kw).load())


def plain(obj: Any) -> Any:
    """Turn inert stand-ins (omegaconf DictConfig/ListConfig nodes, Namespace) into plain dicts and lists."""
    if isinstance(obj, _Inert):
        state = getattr(obj, "_state", None)
        if isinstance(state, dict):
            content = state.get("_content", state.get("__dict__", state))
            if "_val" in state and "_content" not in state:
                return plain(state["_val"])
            return plain(content)
        if state is not None:
            return plain(state)
        return plain(obj._args[0]) if obj._args else None
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return obj


def load_fairseq(path: Path) -> dict[str, Any]:
    """Read a fairseq checkpoint safely: {"model": state dict, "cfg": plain nested dict (or {})}."""
    raw = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_SafePickle)  # type: ignore[arg-type]
    if not isinstance(raw, dict) or "model" not in raw:
        raise ValueError(f"{path}: not a fairseq checkpoint (no 'model' state dict)")
    cfg = plain(raw.get("cfg")) or {}
    if not cfg and raw.get("args") is not None:  # pre-hydra checkpoints store an argparse Namespace
        cfg = {"model": plain(raw["args"]), "task": plain(raw["args"])}
    return {"model": raw["model"], "cfg": cfg}


def parse_conv_layers(spec: str) -> tuple[tuple[int, int, int], ...]:
    """fairseq's `conv_feature_layers` string, e.g. "[(512,10,5)] + [(512,3,2)] * 4", evaluated without eval()."""

    def ev(node: ast.AST) -> Any:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, (ast.List, ast.Tuple)):
            return [ev(e) for e in node.elts]
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
            left, right = ev(node.left), ev(node.right)
            return left + right if isinstance(node.op, ast.Add) else left * right
        raise ValueError(f"unsupported conv_feature_layers expression: {spec!r}")

    return tuple(tuple(layer) for layer in ev(ast.parse(spec, mode="eval")))


def import_fairseq(path: Path) -> tuple[ModelConfig, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A fairseq data2vec_audio or hubert checkpoint -> (ModelConfig, SSLEncoder state, objective-head state)."""
    ckpt = load_fairseq(path)
    m = ckpt["cfg"].get("model", {})
    name = m.get("_name") or m.get("arch", "")
    state = {k: v for k, v in ckpt["model"].items()}
    if m.get("layer_norm_first"):
        raise ValueError(f"{path}: layer_norm_first=True (pre-LN, large models) is not supported")
    enc = EncoderConfig(
        extractor_mode=m.get("extractor_mode", "default"),
        conv_layers=parse_conv_layers(m.get("conv_feature_layers", "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2")),
        conv_bias=bool(m.get("conv_bias", False)), embed_dim=m.get("encoder_embed_dim", 768),
        num_layers=m.get("encoder_layers", 12), num_heads=m.get("encoder_attention_heads", 12),
        ffn_dim=m.get("encoder_ffn_embed_dim", 3072), conv_pos=m.get("conv_pos", 128),
        pos_conv_depth=m.get("pos_conv_depth", 1), conv_pos_groups=m.get("conv_pos_groups", 16),
        dropout=m.get("dropout", 0.1), attention_dropout=m.get("attention_dropout", 0.1),
        activation_dropout=m.get("activation_dropout", 0.0), encoder_layerdrop=m.get("encoder_layerdrop", 0.05),
        dropout_input=m.get("dropout_input", 0.0), feature_grad_mult=m.get("feature_grad_mult", 1.0),
        required_seq_len_multiple=m.get("required_seq_len_multiple", 2),
    )
    masking = dict(mask_prob=m.get("mask_prob", 0.65), mask_length=m.get("mask_length", 10),
                   require_same_masks=m.get("require_same_masks", True))
    if "data2vec" in name:
        model = ModelConfig(paradigm="music2vec", encoder=enc, mask_min_masks=1, **masking, music2vec=Music2VecConfig(
            average_top_k_layers=m.get("average_top_k_layers", 8), loss_beta=m.get("loss_beta", 0.0),
            loss_scale=m.get("loss_scale"), ema_decay=m.get("ema_decay", 0.999),
            ema_end_decay=m.get("ema_end_decay", 0.9999), ema_anneal_end_step=m.get("ema_anneal_end_step", 30000) or 30000))
    elif "hubert" in name:
        rows = state["label_embs_concat"].shape[0] if "label_embs_concat" in state else 504
        model = ModelConfig(paradigm="musichubert", encoder=enc, mask_min_masks=2, **masking, hubert=MusicHubertConfig(
            num_clusters=rows - 4, dictionary_specials=True, final_dim=m.get("final_dim", 256),
            label_rate=float(m.get("label_rate", 100)), logit_temp=m.get("logit_temp", 0.1),
            untie_final_proj=m.get("untie_final_proj", True)))
    else:
        raise ValueError(f"{path}: unsupported fairseq model {name!r}; known: data2vec_audio, hubert")
    encoder_state, head_state = _fairseq_to_ours(state, enc)
    return model, encoder_state, head_state


def _fairseq_to_ours(state: dict[str, torch.Tensor], enc: EncoderConfig) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """fairseq keys are ours at the top level; weight-norm g/v become parametrizations; models.0. is a wrapper."""
    from musicssl.models.encoder import SSLEncoder

    renamed = {}
    for key, value in state.items():
        key = key.removeprefix("models.0.").replace("final_proj.0.", "final_proj.")
        key = key.replace("pos_conv.0.weight_g", "pos_conv.0.parametrizations.weight.original0")
        key = key.replace("pos_conv.0.weight_v", "pos_conv.0.parametrizations.weight.original1")
        renamed[key] = value
    wanted = SSLEncoder(enc).state_dict()
    missing = [k for k in wanted if k not in renamed]
    if missing:
        raise KeyError(f"fairseq checkpoint lacks {len(missing)} encoder weights, e.g. {missing[:3]}")
    head_keys = ("final_proj.weight", "final_proj.bias", "label_embs_concat")
    return {k: renamed[k] for k in wanted}, {k: renamed[k] for k in head_keys if k in renamed}


def load_any_encoder(path: Path) -> tuple[EncoderConfig, dict[str, torch.Tensor], str, bool]:
    """Any checkpoint a probe can read -> (EncoderConfig, SSLEncoder state, content hash, normalize waveforms?).

    - a musicssl checkpoint folder (`encoder.safetensors` + `config.json`): its own `data.normalize`;
    - a Hugging Face model folder (`config.json` with `model_type`): normalised, as MARBLE's processor does;
    - a fairseq `.pt` file: the task's `normalize` (data2vec: true, HuBERT: false).
    """
    path = Path(path)
    if path.is_dir() and (path / ENCODER_FILE).exists():
        exp, state, digest = load_encoder_checkpoint(path)
        return exp.model.encoder, state, digest, exp.data.normalize
    if path.is_dir() and (path / "config.json").exists():
        cfg, _, state = import_hf(path)
        weights = next(p for p in (path / "model.safetensors", path / "pytorch_model.bin") if p.exists())
        return cfg, state, file_sha256(weights), True
    if path.is_file():
        ckpt_cfg = load_fairseq(path)["cfg"]
        model_cfg, state, _ = import_fairseq(path)
        normalize = bool(ckpt_cfg.get("task", {}).get("normalize", model_cfg.paradigm == "music2vec"))
        return model_cfg.encoder, state, file_sha256(path), normalize
    raise FileNotFoundError(f"{path}: not a musicssl checkpoint folder, a Hugging Face model folder or a fairseq .pt file")
