"""The wav2vec2-style encoder shared by Music2Vec and MusicHuBERT (fairseq v0.12.2 semantics).

Module names follow fairseq (`feature_extractor.conv_layers.{i}.{0,2}`, `layer_norm`, `post_extract_proj`,
`mask_emb`, `encoder.pos_conv`, `encoder.layers.{i}.self_attn.{q,k,v,out}_proj`, `fc1`, `fc2`,
`self_attn_layer_norm`, `final_layer_norm`) so checkpoints map one to one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from musicssl.config import EncoderConfig


class TransposeLast(nn.Module):
    """Swap the last two dims (so a LayerNorm can act on channels of a (B, C, T) tensor)."""

    def forward(self, x: Tensor) -> Tensor:
        return x.transpose(-2, -1)


class SamePad(nn.Module):
    """Drop the extra frame a symmetric-padded even-kernel conv produces."""

    def __init__(self, kernel_size: int) -> None:
        super().__init__()
        self.remove = 1 if kernel_size % 2 == 0 else 0

    def forward(self, x: Tensor) -> Tensor:
        return x[:, :, : -self.remove] if self.remove else x


class GradMultiply(torch.autograd.Function):
    """Identity forward, gradient scaled by `scale` backward."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:  # type: ignore[override]
        ctx.scale = scale
        return x.clone()

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return grad * ctx.scale, None


class ConvFeatureExtractor(nn.Module):
    """7-block conv stack; `layer_norm` mode normalises every block, `default` GroupNorms block 0 only.

    (B, S) waveform -> (B, C, T) features; parameters named `conv_layers.{i}.{0,2}` as fairseq names them.
    """

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        blocks = []
        in_ch = 1
        for i, (ch, k, stride) in enumerate(cfg.conv_layers):
            conv = nn.Conv1d(in_ch, ch, k, stride=stride, bias=cfg.conv_bias)
            nn.init.kaiming_normal_(conv.weight)
            if cfg.extractor_mode == "layer_norm":
                norm = nn.Sequential(TransposeLast(), nn.LayerNorm(ch), TransposeLast())
                blocks.append(nn.Sequential(conv, nn.Dropout(0.0), norm, nn.GELU()))
            elif i == 0:
                blocks.append(nn.Sequential(conv, nn.Dropout(0.0), nn.GroupNorm(ch, ch, affine=True), nn.GELU()))
            else:
                blocks.append(nn.Sequential(conv, nn.Dropout(0.0), nn.GELU()))
            in_ch = ch
        self.conv_layers = nn.ModuleList(blocks)

    def forward(self, source: Tensor) -> Tensor:
        x = source[:, None, :]
        for block in self.conv_layers:
            x = block(x)
        return x


def positional_conv(cfg: EncoderConfig) -> nn.Sequential:
    """HuBERT: one weight-normed conv (depth 1). data2vec: `depth` convs with non-affine LayerNorm."""
    dim, groups = cfg.embed_dim, cfg.conv_pos_groups
    if cfg.pos_conv_depth == 1:
        k = cfg.conv_pos
        conv = nn.Conv1d(dim, dim, k, padding=k // 2, groups=groups)
        nn.init.normal_(conv.weight, mean=0.0, std=(4.0 / (k * dim)) ** 0.5)
        assert conv.bias is not None  # Conv1d has a bias unless told otherwise
        nn.init.constant_(conv.bias, 0.0)
        conv = nn.utils.parametrizations.weight_norm(conv, name="weight", dim=2)
        return nn.Sequential(conv, SamePad(k), nn.GELU())
    k = max(3, cfg.conv_pos // cfg.pos_conv_depth)
    return nn.Sequential(*[
        nn.Sequential(
            nn.Conv1d(dim, dim, k, padding=k // 2, groups=groups), SamePad(k),
            TransposeLast(), nn.LayerNorm(dim, elementwise_affine=False), TransposeLast(), nn.GELU(),
        )
        for _ in range(cfg.pos_conv_depth)
    ])


class SelfAttention(nn.Module):
    """Multi-head self-attention through `F.scaled_dot_product_attention`."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        B, T, C = x.shape
        # one fused projection (the weights stay separate, as fairseq and HF name them)
        weight = torch.cat([self.q_proj.weight, self.k_proj.weight, self.v_proj.weight])
        bias = torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias])
        q, k, v = F.linear(x, weight, bias).view(B, T, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)  # (B, H, T, C/H)
        mask = None if key_padding_mask is None else ~key_padding_mask[:, None, None, :]  # True = attend
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.out_proj(y.transpose(1, 2).reshape(B, T, C))


class TransformerLayer(nn.Module):
    """fairseq's post-LN `TransformerSentenceEncoderLayer`; also returns the FFN output before the residual."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        d = cfg.embed_dim
        self.self_attn = SelfAttention(d, cfg.num_heads, cfg.attention_dropout)
        self.self_attn_layer_norm = nn.LayerNorm(d)
        self.fc1, self.fc2 = nn.Linear(d, cfg.ffn_dim), nn.Linear(cfg.ffn_dim, d)
        self.final_layer_norm = nn.LayerNorm(d)
        self.dropout1, self.dropout3 = nn.Dropout(cfg.dropout), nn.Dropout(cfg.dropout)
        self.dropout2 = nn.Dropout(cfg.activation_dropout)

    def forward(self, x: Tensor, padding_mask: Tensor | None) -> tuple[Tensor, Tensor]:
        x = self.self_attn_layer_norm(x + self.dropout1(self.self_attn(x, padding_mask)))
        ffn = self.fc2(self.dropout2(F.gelu(self.fc1(x))))  # (B, T, C): the data2vec target
        return self.final_layer_norm(x + self.dropout3(ffn)), ffn


@dataclass
class EncoderOutput:
    """What the transformer returns: the last layer, all hidden states, the FFN outputs of layers >= min_layer."""

    x: Tensor  # (B, T, C)
    hidden_states: list[Tensor]  # [(B, T, C)] * (num_layers + 1) when requested: the input, then each layer
    layer_results: list[Tensor]  # [(B, T, C)] FFN outputs (pre-residual) of the layers that ran, >= min_layer


class TransformerEncoder(nn.Module):
    """Positional conv, LayerNorm, post-LN layers with layerdrop (the part the data2vec teacher copies)."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.pos_conv = positional_conv(cfg)
        self.layer_norm = nn.LayerNorm(cfg.embed_dim)
        self.dropout = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(TransformerLayer(cfg) for _ in range(cfg.num_layers))
        self.apply(_init_bert_params)

    def forward(self, x: Tensor, padding_mask: Tensor | None = None, *, min_layer: int = 0,
                output_hidden_states: bool = False, max_layer: int | None = None) -> EncoderOutput:
        """x: (B, T, C) projected features; padding_mask: (B, T) True at padding; max_layer is 1-based."""
        if padding_mask is not None:
            x = x.masked_fill(padding_mask[..., None], 0.0)
        x = self.layer_norm(x + self.pos_conv(x.transpose(1, 2)).transpose(1, 2))
        T = x.shape[1]
        pad = -T % self.cfg.required_seq_len_multiple
        if pad:
            x = F.pad(x, (0, 0, 0, pad))
            if padding_mask is None:
                padding_mask = torch.zeros(x.shape[:2], dtype=torch.bool, device=x.device)
                padding_mask[:, T:] = True
            else:
                padding_mask = F.pad(padding_mask, (0, pad), value=True)
        x = self.dropout(x)
        hidden, results = [x[:, :T]] if output_hidden_states else [], []
        drop = self.cfg.encoder_layerdrop if self.training else 0.0
        # layerdrop in tensor ops (no host sync, one compiled graph whatever is dropped): every layer runs and a
        # dropped one passes its input through, so its parameters get a zero gradient, as fairseq's data-parallel
        # training gives them (it fills unused parameters' gradients with zeros before the all-reduce)
        keep = torch.rand(len(self.layers), device=x.device) >= drop if drop > 0.0 else None
        for i, layer in enumerate(self.layers):
            if max_layer is not None and i >= max_layer:
                break
            y, ffn = layer(x, padding_mask)
            if keep is not None:  # fairseq keeps a layer when random > layerdrop
                y = torch.where(keep[i], y, x)
                ffn = torch.where(keep[i], ffn, torch.zeros_like(ffn))
            x = y
            if i >= min_layer:
                results.append(ffn[:, :T])
            if output_hidden_states:
                hidden.append(x[:, :T])
        return EncoderOutput(x[:, :T], hidden, results)


def _init_bert_params(module: nn.Module) -> None:
    """fairseq `init_bert_params` for the encoder's Linear layers: N(0, 0.02), zero bias."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class SSLEncoder(nn.Module):
    """Audio -> projected 50 Hz features -> transformer. The frozen feature extractor that probes use."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        conv_dim = cfg.conv_layers[-1][0]
        self.feature_extractor = ConvFeatureExtractor(cfg)
        self.layer_norm = nn.LayerNorm(conv_dim)
        self.post_extract_proj = nn.Linear(conv_dim, cfg.embed_dim)
        self.dropout_input = nn.Dropout(cfg.dropout_input)
        self.mask_emb = nn.Parameter(torch.empty(cfg.embed_dim).uniform_())
        self.encoder = TransformerEncoder(cfg)

    @property
    def extractor_frozen(self) -> bool:
        """`feature_grad_mult` 0: the conv extractor runs under no_grad and is no trainable parameter."""
        return self.cfg.feature_grad_mult == 0

    def conv_features(self, source: Tensor) -> Tensor:
        """source (B, S) waveform -> (B, C, T) conv features, gradient-scaled by `feature_grad_mult`.

        As fairseq's wav2vec2 / HuBERT / data2vec: a multiplier of 0 runs the extractor under `no_grad` (its
        parameters get no gradient, so no optimiser step, weight decay included, touches them), not a zero gradient.
        """
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.extractor_frozen):
            x = self.feature_extractor(source)
        if self.cfg.feature_grad_mult not in (0.0, 1.0) and self.training:
            x = GradMultiply.apply(x, self.cfg.feature_grad_mult)
        return x

    def compile_parts(self, **options: Any) -> None:
        """`torch.compile` the conv extractor and the transformer in place (their parameter names, and so checkpoints,
        unchanged; `options` as torch.compile takes them). Each traces to one graph, so forward and backward compile
        whole; the graphs are built on the first call of each batch shape. Shapes are static (`dynamic=False`):
        torch's automatic dynamic shapes, which it switches on at the second shape, fail in inductor on this encoder
        (torch 2.13: `ValueRangeError: Invalid ranges [0:-1]`), and a training run sees few shapes (crops of
        max_sample_size, batch size fixed by max_tokens)."""
        options.setdefault("dynamic", False)
        self.feature_extractor.compile(**options)
        self.encoder.compile(**options)

    def trainable(self, name: str) -> bool:
        """Whether the parameter `name` (relative to this encoder) trains: all but a frozen extractor's."""
        return not (self.extractor_frozen and name.startswith("feature_extractor."))

    def project(self, conv: Tensor) -> Tensor:
        """(B, C, T) conv features -> (B, T, D) normalised, projected features."""
        return self.post_extract_proj(self.layer_norm(conv.transpose(1, 2)))

    def forward(self, source: Tensor, padding_mask: Tensor | None = None) -> list[Tensor]:
        """All hidden states for probing: [(B, T, D)] * (num_layers + 1), as HF `hidden_states`."""
        x = self.project(self.conv_features(source))
        if padding_mask is not None:
            padding_mask = frame_padding_mask(padding_mask, x.shape[1], self.cfg)
        return self.encoder(x, padding_mask, output_hidden_states=True).hidden_states


def num_frames(num_samples: int, cfg: EncoderConfig) -> int:
    """Frames the conv stack produces for `num_samples` samples (floor((L - k) / s) + 1 per block)."""
    n = num_samples
    for _, k, s in cfg.conv_layers:
        n = (n - k) // s + 1
    return max(n, 0)


def frame_padding_mask(sample_mask: Tensor, frames: int, cfg: EncoderConfig) -> Tensor:
    """(B, S) sample padding mask (True = padding) -> (B, frames) frame padding mask (tensor ops: no host sync)."""
    valid = (~sample_mask).sum(-1)
    for _, k, s in cfg.conv_layers:
        valid = torch.div(valid - k, s, rounding_mode="floor") + 1
    return torch.arange(frames, device=sample_mask.device)[None, :] >= valid.clamp(min=0)[:, None]
