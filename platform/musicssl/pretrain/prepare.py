"""What a pretraining run needs on disk before it starts: the corpus, its manifest, and MusicHuBERT's labels.

Labels follow the HuBERT recipe: features of every manifest row (iteration 1: MFCC + deltas at 100 Hz;
iteration 2: a trained model's transformer layer at 50 Hz), k-means fitted on a fraction of the utterances,
every frame labelled, fairseq `.km` + `dict.km.txt` written. Results are cached under a key of everything
that determines them, and every stage resumes after an interruption.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from musicssl.config import ExperimentConfig, MusicHubertConfig
from musicssl.data.corpus import generate_corpus
from musicssl.data.mfcc import mfcc_features

MAX_CHUNK = 1_600_000  # samples per encoder call when featurising long files (fairseq: 100 s)


@dataclass(frozen=True)
class PreparedData:
    """Paths a pretraining run reads."""

    manifest: Path
    corpus_dir: Path  # the synthetic corpus (probe tasks live there even when pretraining on real audio)
    labels: Path | None  # MusicHuBERT `.km`


def prepare(exp: ExperimentConfig, state_dir: Path, echo: Callable[[str], object] = print) -> PreparedData:
    """Generate (or find cached) the corpus and, for MusicHuBERT, the labels of `exp`."""
    corpus = generate_corpus(exp.data.synthetic, state_dir / "corpus")
    prepare_real_music(exp, corpus)
    manifest = Path(exp.data.manifest) if exp.data.manifest else corpus / "pretrain" / "train.tsv"
    labels = None
    if exp.model.paradigm == "musichubert":
        labels = Path(exp.data.labels) if exp.data.labels else make_labels(manifest, exp.model.hubert,
                                                                            state_dir / "labels", echo=echo)
    return PreparedData(manifest, corpus, labels)


def prepare_probe_only(exp: ExperimentConfig, state_dir: Path) -> PreparedData:
    """A probe-only trial (an imported checkpoint) needs only the corpus, for the synthetic probe tasks."""
    corpus = generate_corpus(exp.data.synthetic, state_dir / "corpus")
    prepare_real_music(exp, corpus)
    return PreparedData(corpus / "pretrain" / "train.tsv", corpus, None)


def prepare_real_music(exp: ExperimentConfig, corpus: Path) -> None:
    """Build (or find cached) the real-music probe tasks beside the corpus when `exp` probes one, so the probe
    jobs read them instead of each building them."""
    from musicssl.data.realmusic import TASKS, build_realmusic

    if set(exp.probe.tasks) & set(TASKS):
        build_realmusic(corpus.parent)


def mfcc_featurizer(num_ceps: int) -> Callable[[np.ndarray], np.ndarray]:
    """Waveform -> (frames, 3 * num_ceps) MFCC + deltas at 100 Hz (39 or 60 dims)."""

    def featurize(wave: np.ndarray) -> np.ndarray:
        return mfcc_features(torch.from_numpy(wave), num_ceps=num_ceps).numpy()

    return featurize


def layer_featurizer(checkpoint: Path, layer: int, device: torch.device | None = None
                     ) -> Callable[[np.ndarray], np.ndarray]:
    """Waveform -> (frames, D) output of transformer layer `layer` (1-based) of a trained encoder, at 50 Hz."""
    from musicssl.data.audio import layer_norm
    from musicssl.models.convert import load_any_encoder
    from musicssl.models.encoder import SSLEncoder

    cfg, state, _, normalize = load_any_encoder(checkpoint)
    if not 1 <= layer <= cfg.num_layers:
        raise ValueError(f"model.hubert.label_layer={layer}: the model has layers 1..{cfg.num_layers}")
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    encoder = SSLEncoder(cfg)
    encoder.load_state_dict(state)
    encoder.eval().to(device)

    @torch.no_grad()
    def featurize(wave: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(layer_norm(wave) if normalize else wave).to(device)[None]
        parts = []
        for start in range(0, x.shape[1], MAX_CHUNK):
            chunk = x[:, start:start + MAX_CHUNK]
            feats = encoder.project(encoder.conv_features(chunk))
            parts.append(encoder.encoder(feats, max_layer=layer, output_hidden_states=True).hidden_states[-1][0])
        return torch.cat(parts).float().cpu().numpy()

    return featurize


def labels_key(manifest: Path, cfg: MusicHubertConfig) -> str:
    """Cache key of a label set: the manifest's content and every setting that changes the labels."""
    from musicssl.checkpoints import file_sha256

    parts = {"manifest": hashlib.sha256(manifest.read_bytes()).hexdigest(), "source": cfg.label_source,
             "k": cfg.num_clusters, "fraction": cfg.kmeans_fraction, "version": 1}
    if cfg.label_source == "mfcc":
        parts["ceps"] = cfg.mfcc_ceps
    else:
        model = Path(str(cfg.label_model))
        weights = model / "encoder.safetensors" if (model / "encoder.safetensors").exists() else model
        parts |= {"layer": cfg.label_layer, "model": file_sha256(weights) if weights.is_file() else str(model)}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def make_labels(manifest: Path, cfg: MusicHubertConfig, root: Path, *, seed: int = 0,
                echo: Callable[[str], object] = print) -> Path:
    """Features -> k-means -> fairseq labels for every row of `manifest`; returns the `.km` path (cached)."""
    from musicssl.data.feature_shards import dump_features
    from musicssl.data.labels import dump_labels, learn_kmeans

    out = root / f"{cfg.label_source}-k{cfg.num_clusters}-{labels_key(manifest, cfg)}"
    km = out / "train.km"
    if (out / "DONE").exists():
        return km
    echo(f"[musicssl] k-means labels ({cfg.label_source}, k={cfg.num_clusters}) for {manifest} -> {out}")
    if cfg.label_source == "mfcc":
        featurize = mfcc_featurizer(cfg.mfcc_ceps)
    else:
        featurize = layer_featurizer(Path(str(cfg.label_model)), cfg.label_layer)
    shard = dump_features(manifest, featurize, out / "features", "train")
    if not (out / "centroids.npy").exists():
        learn_kmeans([shard], cfg.num_clusters, out / "centroids.npy", percent=cfg.kmeans_fraction, seed=seed)
    dump_labels([shard], out / "centroids.npy", out, "train")
    (out / "DONE").write_text("ok\n")
    return km
