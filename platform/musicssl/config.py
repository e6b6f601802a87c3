"""Typed, validated configuration: one pydantic model per concern, and the named model presets.

Every field has a docstring and its default is the published base setting (data2vec-audio base for
Music2Vec). Reading configs from YAML files and KEY=VALUE overrides, with every error reported at once by
dotted path, is `musicssl.config_io`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

ConvLayers = tuple[tuple[int, int, int], ...]
BASE_CONV_LAYERS: ConvLayers = ((512, 10, 5),) + ((512, 3, 2),) * 4 + ((512, 2, 2),) * 2


class _Cfg(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class EncoderConfig(_Cfg):
    """The wav2vec2-style encoder shared by Music2Vec and MusicHuBERT."""

    extractor_mode: Literal["default", "layer_norm"] = "layer_norm"
    """Conv extractor normalisation: `default` = GroupNorm on the first block (HuBERT), `layer_norm` = LayerNorm on every block (data2vec)."""
    conv_layers: ConvLayers = BASE_CONV_LAYERS
    """(channels, kernel, stride) per conv block; the base stack maps 16 kHz audio to 50 Hz frames."""
    conv_bias: bool = False
    """Bias in the conv extractor."""
    embed_dim: int = Field(768, ge=8)
    """Transformer width."""
    num_layers: int = Field(12, ge=1)
    """Number of transformer layers."""
    num_heads: int = Field(12, ge=1)
    """Attention heads per layer; must divide `embed_dim`."""
    ffn_dim: int = Field(3072, ge=8)
    """Hidden size of the feed-forward block."""
    conv_pos: int = Field(95, ge=2)
    """Positional conv kernel. With `pos_conv_depth` > 1 each layer uses max(3, conv_pos // depth) (data2vec: 95 -> 19)."""
    pos_conv_depth: int = Field(5, ge=1)
    """1 = one weight-normed conv (HuBERT, kernel 128); >1 = a stack of convs with non-affine LayerNorm (data2vec: 5)."""
    conv_pos_groups: int = Field(16, ge=1)
    """Groups of the positional conv; must divide `embed_dim`."""
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    """Dropout on the encoder input and after attention / FFN."""
    attention_dropout: float = Field(0.1, ge=0.0, lt=1.0)
    """Dropout on attention weights."""
    activation_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    """Dropout after the FFN activation."""
    encoder_layerdrop: float = Field(0.05, ge=0.0, lt=1.0)
    """Probability of skipping a whole transformer layer in training."""
    dropout_input: float = Field(0.0, ge=0.0, lt=1.0)
    """Dropout on the projected features before masking (HuBERT 0.1)."""
    feature_grad_mult: float = Field(1.0, ge=0.0)
    """Gradient scale into the conv extractor (HuBERT 0.1; 0 freezes it)."""
    required_seq_len_multiple: int = Field(2, ge=1)
    """Pad the frame sequence to a multiple of this before the transformer."""

    @model_validator(mode="after")
    def _divisible(self) -> EncoderConfig:
        problems = []
        if self.embed_dim % self.num_heads:
            problems.append(f"num_heads ({self.num_heads}) must divide embed_dim ({self.embed_dim})")
        if self.embed_dim % self.conv_pos_groups:
            problems.append(f"conv_pos_groups ({self.conv_pos_groups}) must divide embed_dim ({self.embed_dim})")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class Music2VecConfig(_Cfg):
    """data2vec-1.0 objective: regress the EMA teacher's averaged top-K layer targets at masked frames."""

    average_top_k_layers: int = Field(8, ge=1)
    """K: targets are the mean of the teacher's top-K layers' FFN outputs (paper ablation: 8 vs 12)."""
    instance_norm_target_layer: bool = True
    """Instance-normalise each target layer over time before averaging."""
    loss_beta: float = Field(0.0, ge=0.0)
    """0 = L2 loss; >0 = smooth-L1 with this beta."""
    loss_scale: float | None = None
    """Loss scale; None = 1/sqrt(embed_dim)."""
    ema_decay: float = Field(0.999, gt=0.0, lt=1.0)
    """Teacher EMA decay at step 0."""
    ema_end_decay: float = Field(0.9999, gt=0.0, le=1.0)
    """Teacher EMA decay after `ema_anneal_end_step` (linear ramp in between)."""
    ema_anneal_end_step: int = Field(30000, ge=1)
    """Step at which the EMA decay reaches `ema_end_decay`."""
    min_target_var: float = Field(0.1, ge=0.0)
    """Stop the trial if the target std falls below this (collapse), checked after `var_check_after` steps."""
    min_pred_var: float = Field(0.01, ge=0.0)
    """Stop the trial if the prediction std falls below this, checked after `var_check_after` steps."""
    var_check_after: int = Field(5000, ge=0)
    """Updates before the collapse checks start (fairseq: 5000)."""


class MusicHubertConfig(_Cfg):
    """HuBERT objective: predict k-means labels of masked frames (fairseq `HubertModel` + `hubert` criterion)."""

    num_clusters: int = Field(500, ge=2)
    """k of the k-means labels (paper ablation: 500 vs 2000)."""
    label_source: Literal["mfcc", "model"] = "mfcc"
    """Iteration 1 clusters MFCC frames (100 Hz); iteration 2 clusters a trained model's layer (50 Hz)."""
    mfcc_ceps: Literal[13, 20] = 13
    """Cepstra per MFCC frame: 13 -> 39-dim with deltas (HuBERT), 20 -> 60-dim (the paper's k=500 variant)."""
    label_model: str | None = None
    """Iteration 2: the checkpoint whose layer features are clustered (musicssl folder, HF folder or fairseq .pt)."""
    label_layer: int = Field(6, ge=1)
    """Iteration 2: 1-based transformer layer of `label_model` to cluster (HuBERT base: 6)."""
    kmeans_fraction: float = Field(0.1, gt=0, le=1)
    """Fraction of utterances whose frames fit the k-means (fairseq `--percent`); all frames are then labelled."""
    label_rate: float = Field(100.0, gt=0)
    """Labels per second; 100 (MFCC) uses every 2nd label at the 50 Hz frame rate."""
    dictionary_specials: bool = True
    """Keep fairseq's 4 Dictionary specials (<s>, <pad>, </s>, <unk>): k+4 embedding rows, cluster c at row c+4.
    The specials are never targets but sit in the softmax denominator, exactly as in fairseq checkpoints."""
    final_dim: int = Field(256, ge=1)
    """Dimension of the projection compared with the label embeddings."""
    untie_final_proj: bool = True
    """One projection per label set (fairseq base: true)."""
    logit_temp: float = Field(0.1, gt=0)
    """Temperature of the cosine-similarity logits."""
    pred_masked_weight: float = Field(1.0, ge=0)
    """Weight of the loss on masked frames."""
    pred_nomask_weight: float = Field(0.0, ge=0)
    """Weight of the loss on unmasked frames (base: 0; accuracy is still logged). When > 0 the unmasked frames
    join the sample size (the loss and gradient divisor) and so scale the feature penalty, as in fairseq."""
    feature_pen_weight: float = Field(10.0, ge=0)
    """Weight of the conv-feature L2 penalty, multiplied by the sample size (fairseq's `loss_weights: [10]`)."""

    @model_validator(mode="after")
    def _some_loss(self) -> MusicHubertConfig:
        if self.pred_masked_weight == 0 and self.pred_nomask_weight == 0:
            raise ValueError("pred_masked_weight and pred_nomask_weight are both 0: there is nothing to train "
                             "(the sample size would be 0); HuBERT base uses 1.0 and 0.0")
        return self


class ModelConfig(_Cfg):
    """Which SSL paradigm, its encoder and its masking. `preset: NAME` in YAML starts from a named preset."""

    paradigm: Literal["music2vec", "musichubert"] = "music2vec"
    """SSL paradigm: continuous EMA-teacher targets (Music2Vec) or discrete k-means labels (MusicHuBERT)."""
    encoder: EncoderConfig = EncoderConfig()
    """The shared encoder."""
    mask_prob: float = Field(0.65, ge=0.0, le=1.0)
    """Probability of each frame starting a masked span (not the masked fraction; see docs)."""
    mask_length: int = Field(10, ge=1)
    """Mask span length in frames."""
    mask_min_masks: int = Field(1, ge=0)
    """Minimum number of spans per example (data2vec 1, HuBERT 2)."""
    require_same_masks: bool = True
    """Trim every example to the batch's smallest masked count (fairseq default)."""
    music2vec: Music2VecConfig = Music2VecConfig()
    """Music2Vec objective settings (used when paradigm = music2vec)."""
    hubert: MusicHubertConfig = MusicHubertConfig()
    """MusicHuBERT objective settings (used when paradigm = musichubert)."""

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        if not isinstance(data, Mapping) or "preset" not in data:
            return data
        data = dict(data)
        name = data.pop("preset")
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; known: {', '.join(sorted(PRESETS))}")
        return deep_merge(PRESETS[name]().model_dump(), data)


# --------------------------------------------------------------------------------------------------
# Named model presets: plain functions returning a validated ModelConfig (`model.preset` in a file)

TINY_CONV = ((32, 10, 5),) + ((32, 3, 2),) * 4 + ((32, 2, 2),) * 2


def music2vec_base() -> ModelConfig:
    """The paper's Music2Vec: data2vec-audio base (95M), mask 0.65 x 10, top-8 targets."""
    return ModelConfig()


def musichubert_base() -> ModelConfig:
    """The paper's MusicHuBERT: HuBERT base (95M), GroupNorm extractor, one weight-normed pos conv, mask 0.8 x 10."""
    return ModelConfig(
        paradigm="musichubert",
        encoder=EncoderConfig(extractor_mode="default", conv_layers=BASE_CONV_LAYERS, conv_pos=128, pos_conv_depth=1,
                              dropout_input=0.1, feature_grad_mult=0.1),
        mask_prob=0.8, mask_length=10, mask_min_masks=2,
        hubert=MusicHubertConfig(),
    )


def tiny_hubert() -> ModelConfig:
    """A CPU-sized MusicHuBERT for tests and laptops (k=50 clusters)."""
    return ModelConfig(
        paradigm="musichubert",
        encoder=EncoderConfig(
            extractor_mode="default", conv_layers=TINY_CONV, embed_dim=64, num_layers=4, num_heads=4, ffn_dim=128,
            conv_pos=16, pos_conv_depth=1, conv_pos_groups=4, encoder_layerdrop=0.0, dropout_input=0.1,
            feature_grad_mult=0.1,
        ),
        mask_prob=0.8, mask_length=10, mask_min_masks=2,
        hubert=MusicHubertConfig(num_clusters=50, final_dim=32),
    )


def tiny() -> ModelConfig:
    """A CPU-sized Music2Vec (about 0.2M parameters) for tests, the demo and laptops."""
    return ModelConfig(
        encoder=EncoderConfig(
            conv_layers=TINY_CONV,
            embed_dim=64, num_layers=4, num_heads=4, ffn_dim=128,
            conv_pos=16, pos_conv_depth=2, conv_pos_groups=4, encoder_layerdrop=0.0,
        ),
        music2vec=Music2VecConfig(average_top_k_layers=3, ema_anneal_end_step=1000, var_check_after=10**9),
    )


PRESETS: dict[str, Callable[[], ModelConfig]] = {
    "music2vec_base": music2vec_base, "musichubert_base": musichubert_base, "tiny": tiny, "tiny_hubert": tiny_hubert,
}


class SyntheticCorpusConfig(_Cfg):
    """The embedded synthetic music corpus (generated, cached under the state folder)."""

    seed: int = 0
    """Seed of the generator: the same seed gives byte-identical audio."""
    num_pieces: int = Field(64, ge=2)
    """Polyphonic pieces for pretraining."""
    piece_seconds: float = Field(6.0, gt=0.5)
    """Length of each pretraining piece."""
    probe_clips: int = Field(240, ge=12)
    """Labelled clips per probe task."""
    clip_seconds: float = Field(2.0, gt=0.25)
    """Length of each probe clip."""


class DataConfig(_Cfg):
    """Pretraining data and batching (fairseq `audio_pretraining` semantics)."""

    manifest: str | None = None
    """fairseq `.tsv` manifest of the pretraining audio; None = the synthetic corpus."""
    synthetic: SyntheticCorpusConfig = SyntheticCorpusConfig()
    """Settings of the synthetic corpus, used when `manifest` is None."""
    max_sample_size: int = Field(480000, ge=400)
    """Crop length in samples (30 s = 480000; the crop5s ablation is 80000)."""
    min_sample_size: int = Field(32000, ge=400)
    """Skip files shorter than this (samples)."""
    max_tokens: int = Field(3800000, ge=400)
    """Audio samples per batch (per GPU)."""
    normalize: bool = True
    """Layer-normalise each waveform (data2vec: true; HuBERT: false)."""
    labels: str | None = None
    """MusicHuBERT: a fairseq `.km` label file aligned line by line with `manifest` (`dict.km.txt` beside it);
    None = make k-means labels as `model.hubert` says (cached in the state folder)."""
    num_workers: int | None = Field(None, ge=0)
    """DataLoader worker processes that decode and crop the audio ahead of the training step (pinned memory on a
    GPU); None = up to 4 when training on a GPU (the cores this process may use, less one), 0 (in the training
    process) on the CPU, whose cores train; 0 = none."""
    prefetch_batches: int = Field(4, ge=1)
    """Batches each worker prepares ahead."""

    @model_validator(mode="after")
    def _sizes(self) -> DataConfig:
        if self.max_tokens < self.max_sample_size:
            raise ValueError(f"max_tokens ({self.max_tokens}) must be >= max_sample_size ({self.max_sample_size}), "
                             "or no batch could hold one full-length crop")
        if self.min_sample_size > self.max_sample_size:
            raise ValueError(f"min_sample_size ({self.min_sample_size}) must be <= max_sample_size ({self.max_sample_size})")
        return self


class PretrainConfig(_Cfg):
    """Optimisation and run length (fairseq Adam = AdamW with decoupled weight decay on all parameters)."""

    max_steps: int = Field(400000, ge=1)
    """Updates to train (the LR schedule spans them)."""
    max_time_s: float | None = Field(None, gt=0)
    """Stop (with a checkpoint) after this much training time; None = no limit. The schedule still assumes max_steps."""
    lr: float = Field(5e-4, gt=0.0)
    """Peak learning rate."""
    betas: tuple[float, float] = (0.9, 0.98)
    """Adam betas."""
    eps: float = Field(1e-6, gt=0.0)
    """Adam epsilon."""
    weight_decay: float = Field(0.01, ge=0.0)
    """Decoupled weight decay."""
    scheduler: Literal["tri_stage", "polynomial"] = "tri_stage"
    """LR schedule: tri-stage (Music2Vec) or warm-up + polynomial decay (HuBERT)."""
    phase_ratio: tuple[float, float, float] = (0.03, 0.9, 0.07)
    """Tri-stage warm-up / hold / decay fractions of `max_steps`."""
    warmup_steps: int = Field(32000, ge=0)
    """Warm-up updates of the polynomial schedule."""
    clip_norm: float = Field(0.0, ge=0.0)
    """Gradient-norm clip; 0 = none (data2vec base)."""
    update_freq: int = Field(1, ge=1)
    """Gradient accumulation steps per update (emulates more GPUs)."""
    checkpoint_every: int = Field(25000, ge=1)
    """Write a checkpoint every this many updates (and at the end)."""
    log_every: int = Field(200, ge=1)
    """Log metrics every this many updates."""
    keep_last: int = Field(2, ge=1)
    """Newest checkpoints kept on disk (oldest deleted first), plus the best: lowest mean training loss since the
    previous checkpoint (a rough guide for Music2Vec, whose moving targets make its loss rise late in training)."""
    max_bad_updates_in_a_row: int = Field(10, ge=1)
    """Non-finite loss or gradient updates are skipped; this many in a row stops the trial."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to train; auto = CUDA when available."""
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    """Autocast precision of the forward pass (weights, optimiser and EMA teacher stay fp32): auto = bf16 on a GPU,
    fp32 on the CPU."""
    compile: bool = False
    """`torch.compile` the student and the teacher (conv extractor and transformer): slower first steps (the compile
    time is logged as pretrain/compile_s), faster after; one graph per crop length."""

    @model_validator(mode="after")
    def _ratios(self) -> PretrainConfig:
        if abs(sum(self.phase_ratio) - 1.0) > 1e-6:
            raise ValueError(f"phase_ratio must sum to 1, got {sum(self.phase_ratio):.4g}")
        return self


class ProbeConfig(_Cfg):
    """Frozen-feature probing (MARBLE v1 protocol): learned layer weights + one-hidden-layer MLP."""

    tasks: tuple[str, ...] = ("synth_pitch", "synth_key")
    """Probe tasks by registry name."""
    layers: Literal["all", "transformer"] | int = "all"
    """`all` = the 13 hidden states (paper text), `transformer` = 12 layers only (MARBLE code), int = one state."""
    data_roots: dict[str, str] = {}
    """Dataset root folder per real task (e.g. {gtzan_genre: /data/GTZAN}, `~` expanded); synthetic tasks need none."""

    @field_validator("data_roots")
    @classmethod
    def _expand_home(cls, v: dict[str, str]) -> dict[str, str]:
        return {task: os.path.expanduser(root) for task, root in v.items()}

    window_seconds: float = Field(30.0, gt=0.0)
    """Sliding-window length for feature extraction."""
    protocol: Literal["music2vec", "mert_base"] = "music2vec"
    """Which MARBLE v1 windowing to follow. `music2vec`: configs/music2vec/*.yaml (the paper's Music2Vec runs),
    window_seconds for every task and no crop. `mert_base`: the task base configs (MERT-v1 runs), whose EMO and
    VocalSet windows are 5 s over the first 30 s of each clip; other tasks use window_seconds."""
    hidden_dim: int = Field(512, ge=1)
    """MLP hidden units."""
    dropout: float = Field(0.2, ge=0.0, lt=1.0)
    """MLP dropout."""
    lr: float = Field(1e-3, gt=0.0)
    """Adam learning rate."""
    weight_decay: float = Field(0.0, ge=0.0)
    """Adam L2 weight decay."""
    batch_size: int = Field(64, ge=1)
    """Clips per probe minibatch, each with all its windows (MARBLE: 64 clips); an epoch is ceil(clips / this) steps."""
    max_epochs: int = Field(100, ge=1)
    """Epoch cap."""
    early_stop_patience: int = Field(10, ge=1)
    """Epochs without validation improvement before stopping."""
    lr_patience: int = Field(3, ge=1)
    """ReduceLROnPlateau patience (factor 0.5)."""
    beat_tolerance: float = Field(0.07, gt=0)
    """Beat-matching window in seconds: 0.07 as MARBLE's code evaluates (the MARBLE paper's text says 20 ms)."""
    standardize: bool = True
    """Z-score every feature dimension of every state with train-split statistics before the probe. On by default,
    chosen by measurement (README, "Faithfulness notes"): raw features of briefly trained encoders leave the probe
    at chance, z-scored ones do not, and on longer-trained encoders it does not hurt. MARBLE feeds raw features:
    `false` reproduces it."""
    seed: int = 1234
    """Probe seed (MARBLE: 1234)."""


MUSICHUBERT_RUN_DEFAULTS: dict[str, dict[str, Any]] = {
    "data": {"max_sample_size": 250000, "min_sample_size": 32000, "max_tokens": 1400000, "normalize": False},
    "pretrain": {"max_steps": 400000, "lr": 5e-4, "betas": (0.9, 0.98), "eps": 1e-6, "weight_decay": 0.01,
                 "scheduler": "polynomial", "warmup_steps": 32000, "clip_norm": 10.0},
}
"""The data and optimisation defaults of a MusicHuBERT run: fairseq's `hubert_base_librispeech.yaml` (15.6 s crops,
1.4M-sample batches, raw waveforms, polynomial decay after 32k warm-up updates, clip norm 10). The field defaults
above are data2vec's; a MusicHuBERT run takes these instead wherever its config does not set the field."""


def _paradigm_of(model: Any) -> str | None:
    """The paradigm that raw `model` data resolve to (a preset included); None if they do not validate."""
    if isinstance(model, ModelConfig):
        return model.paradigm
    try:
        return ModelConfig.model_validate({} if model is None else model).paradigm
    except ValidationError:
        return None  # ExperimentConfig's own validation reports the problem, with its path


class ExperimentConfig(_Cfg):
    """One pretraining run and the probes of its checkpoints: the unit a sweep varies.

    A MusicHuBERT run's `data` and `pretrain` fields that are not set (by the file, a sweep or the command line)
    take HuBERT base's values (`MUSICHUBERT_RUN_DEFAULTS`), not the data2vec defaults of the field declarations.
    """

    seed: int = 0
    """Pretraining seed."""
    model: ModelConfig = ModelConfig()
    """Model and objective."""
    data: DataConfig = DataConfig()
    """Pretraining data."""
    pretrain: PretrainConfig = PretrainConfig()
    """Optimisation."""
    probe: ProbeConfig = ProbeConfig()
    """Downstream probes."""

    @model_validator(mode="before")
    @classmethod
    def _paradigm_defaults(cls, data: Any) -> Any:
        if not isinstance(data, Mapping) or _paradigm_of(data.get("model")) != "musichubert":
            return data
        data = dict(data)
        for section, defaults in MUSICHUBERT_RUN_DEFAULTS.items():
            given = data.get(section, {})
            if isinstance(given, BaseModel):  # a config object: only the fields it was given count as set
                given = given.model_dump(include=given.model_fields_set)
            if isinstance(given, Mapping):  # anything else is left for validation to report
                data[section] = {**defaults, **given}
        return data

    @model_validator(mode="after")
    def _paradigm_fits(self) -> ExperimentConfig:
        h = self.model.hubert
        if self.model.paradigm == "musichubert":
            if h.label_source == "model" and h.label_model is None and self.data.labels is None:
                raise ValueError("model.hubert.label_model: label_source=model needs the iteration-1 checkpoint "
                                 "(or ready-made data.labels)")
            if h.label_source == "mfcc" and h.label_rate != 100 and self.data.labels is None:
                raise ValueError(f"model.hubert.label_rate: MFCC labels are 100 Hz, got {h.label_rate:g}")
            if h.label_source == "model" and h.label_rate != 50 and self.data.labels is None:
                raise ValueError(f"model.hubert.label_rate: model-feature labels are 50 Hz, got {h.label_rate:g}")
        return self


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Recursively merge `override` into a copy of `base` (mappings merge, everything else replaces)."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out
