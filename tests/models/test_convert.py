"""Checkpoint interchange: HF export loads in transformers with identical hidden states; HF and fairseq imports."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from musicssl.config import EncoderConfig, tiny, tiny_hubert
from musicssl.models.convert import export_hf, import_fairseq, import_hf, parse_conv_layers
from musicssl.models.encoder import SSLEncoder

transformers = pytest.importorskip("transformers")


def _random_encoder(cfg: EncoderConfig, seed: int) -> SSLEncoder:
    torch.manual_seed(seed)
    enc = SSLEncoder(cfg).eval()
    with torch.no_grad():  # perturb every weight so that no default init (ones/zeros) hides a wrong mapping
        for p in enc.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return enc


CASES = {
    "music2vec": (lambda: tiny().encoder, "Data2VecAudioModel"),
    "musichubert": (lambda: tiny_hubert().encoder, "HubertModel"),
    "music2vec-odd": (lambda: tiny().encoder.model_copy(update={"num_layers": 3, "conv_pos": 21, "pos_conv_depth": 3}),
                      "Data2VecAudioModel"),
    "hubert-layernorm": (lambda: tiny_hubert().encoder.model_copy(update={"extractor_mode": "layer_norm",
                                                                          "conv_bias": True}), "HubertModel"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_export_loads_in_transformers_with_equal_hidden_states(case: str, tmp_path: Path) -> None:
    make_cfg, arch = CASES[case]
    cfg = make_cfg()
    paradigm = "music2vec" if arch == "Data2VecAudioModel" else "musichubert"
    enc = _random_encoder(cfg, seed=len(case))
    export_hf(enc.state_dict(), cfg, paradigm, tmp_path / "hf")
    hf = getattr(transformers, arch).from_pretrained(tmp_path / "hf").eval()
    audio = torch.randn(2, 16000 + 123)
    with torch.no_grad():
        ours = enc(audio)
        theirs = hf(audio, output_hidden_states=True).hidden_states
    assert len(ours) == len(theirs) == cfg.num_layers + 1
    for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0, msg=f"hidden state {i}")

    # and back: import the HF directory, rebuild, same states
    cfg2, paradigm2, state2 = import_hf(tmp_path / "hf")
    assert (cfg2.model_dump(include={"extractor_mode", "conv_layers", "embed_dim", "num_layers", "pos_conv_depth"})
            == cfg.model_dump(include={"extractor_mode", "conv_layers", "embed_dim", "num_layers", "pos_conv_depth"}))
    assert paradigm2 == paradigm
    enc2 = SSLEncoder(cfg2).eval()
    enc2.load_state_dict(state2)
    with torch.no_grad():
        for a, b in zip(enc2(audio), theirs, strict=True):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


def test_import_of_a_transformers_saved_model(tmp_path: Path) -> None:
    """A directory written by transformers itself (as a downloaded public model would be)."""
    hf_cfg = transformers.HubertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                       intermediate_size=64, conv_dim=(16,) * 7, num_conv_pos_embeddings=12,
                                       num_conv_pos_embedding_groups=2)
    torch.manual_seed(0)
    model = transformers.HubertModel(hf_cfg).eval()
    model.save_pretrained(tmp_path / "hub")
    cfg, paradigm, state = import_hf(tmp_path / "hub")
    assert paradigm == "musichubert" and cfg.conv_pos == 12 and cfg.extractor_mode == "default"
    enc = SSLEncoder(cfg).eval()
    enc.load_state_dict(state)
    audio = torch.randn(1, 8000)
    with torch.no_grad():
        for a, b in zip(enc(audio), model(audio, output_hidden_states=True).hidden_states, strict=True):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


def test_import_rejects_what_it_cannot_represent(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "hubert", "do_stable_layer_norm": true}')
    with pytest.raises(ValueError, match="pre-LN"):
        import_hf(tmp_path)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        import_hf(tmp_path / "nothing")


def test_parse_conv_layers_without_eval() -> None:
    assert parse_conv_layers("[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2") == (
        (512, 10, 5), (512, 3, 2), (512, 3, 2), (512, 3, 2), (512, 3, 2), (512, 2, 2), (512, 2, 2))
    with pytest.raises(ValueError, match="unsupported"):
        parse_conv_layers("__import__('os').system('true')")


class Payload:
    """A class whose unpickling would run code: the safe loader must not call it."""

    ran = False

    def __reduce__(self):  # noqa: D105
        return (_mark_ran, ())


def _mark_ran() -> None:
    Payload.ran = True


def _fairseq_like_checkpoint(path: Path, paradigm: str, with_omegaconf: bool) -> tuple[SSLEncoder, int]:
    """A checkpoint laid out as fairseq writes it: top-level model keys, cfg as an omegaconf DictConfig."""
    mcfg = tiny_hubert() if paradigm == "hubert" else tiny()
    enc = _random_encoder(mcfg.encoder, seed=7)
    state = dict(enc.state_dict())
    for g_or_v, new in (("original0", "weight_g"), ("original1", "weight_v")):
        old = f"encoder.pos_conv.0.parametrizations.weight.{g_or_v}"
        if old in state:
            state[f"encoder.pos_conv.0.{new}"] = state.pop(old)
    k = 37
    if paradigm == "hubert":
        state["label_embs_concat"] = torch.rand(k + 4, mcfg.hubert.final_dim)
        state["final_proj.weight"] = torch.randn(mcfg.hubert.final_dim, mcfg.encoder.embed_dim)
    else:
        state["_ema"] = {"encoder.layer_norm.weight": torch.ones(mcfg.encoder.embed_dim)}
    e = mcfg.encoder
    model_cfg = {
        "_name": "hubert" if paradigm == "hubert" else "data2vec_audio", "extractor_mode": e.extractor_mode,
        "conv_feature_layers": "[(32,10,5)] + [(32,3,2)] * 4 + [(32,2,2)] * 2", "encoder_layers": e.num_layers,
        "encoder_embed_dim": e.embed_dim, "encoder_ffn_embed_dim": e.ffn_dim, "encoder_attention_heads": e.num_heads,
        "conv_pos": e.conv_pos, "conv_pos_groups": e.conv_pos_groups, "pos_conv_depth": e.pos_conv_depth,
        "mask_prob": 0.8 if paradigm == "hubert" else 0.65, "label_rate": 50, "final_dim": 32,
        "average_top_k_layers": 3, "layer_norm_first": False,
    }
    if with_omegaconf:
        omegaconf = pytest.importorskip("omegaconf")
        cfg = omegaconf.OmegaConf.create({"model": model_cfg, "task": {"_name": "hubert_pretraining"}})
        torch.save({"model": state, "cfg": cfg, "extra_state": Payload()}, path)
    else:  # pre-hydra: an argparse Namespace
        torch.save({"model": state, "args": argparse.Namespace(**model_cfg), "cfg": None}, path)
    return enc, k


@pytest.mark.parametrize("paradigm,with_omegaconf", [("hubert", True), ("data2vec", True), ("hubert", False)])
def test_fairseq_import_is_safe_and_exact(tmp_path: Path, paradigm: str, with_omegaconf: bool) -> None:
    path = tmp_path / "checkpoint_best.pt"
    enc, k = _fairseq_like_checkpoint(path, paradigm, with_omegaconf)
    Payload.ran = False
    model_cfg, state, head = import_fairseq(path)
    assert not Payload.ran, "loading a fairseq checkpoint must not run code from the file"
    assert model_cfg.paradigm == ("musichubert" if paradigm == "hubert" else "music2vec")
    if paradigm == "hubert":
        assert model_cfg.hubert.num_clusters == k and model_cfg.hubert.dictionary_specials
        assert model_cfg.hubert.label_rate == 50 and head["label_embs_concat"].shape[0] == k + 4
        assert model_cfg.mask_prob == 0.8
    else:
        assert model_cfg.music2vec.average_top_k_layers == 3
    loaded = SSLEncoder(model_cfg.encoder).eval()
    loaded.load_state_dict(state)
    audio = torch.randn(1, 8000)
    with torch.no_grad():
        for a, b in zip(loaded(audio), enc(audio), strict=True):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
