"""Music2Vec (data2vec-1.0): EMA teacher, targets, loss, collapse guard, and the post-LN layer's FFN output."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from musicssl.config import tiny
from musicssl.models.encoder import TransformerLayer
from musicssl.models.masking import compute_mask
from musicssl.models.music2vec import Music2Vec, TargetCollapseError


@pytest.fixture
def model() -> Music2Vec:
    torch.set_num_threads(2)
    torch.manual_seed(0)
    return Music2Vec(tiny())


def waves(batch: int = 2, samples: int = 16000, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, samples, generator=torch.Generator().manual_seed(seed))


def test_ema_decay_ramp(model: Music2Vec) -> None:
    c = model.cfg.music2vec
    assert (c.ema_decay, c.ema_end_decay, c.ema_anneal_end_step) == (0.999, 0.9999, 1000)
    assert model.ema_decay(0) == pytest.approx(0.999, abs=1e-12)
    assert model.ema_decay(500) == pytest.approx(0.99945, abs=1e-12)
    assert model.ema_decay(250) == pytest.approx(0.999225, abs=1e-12)
    assert model.ema_decay(1000) == 0.9999
    assert model.ema_decay(10**6) == 0.9999


def test_ema_step_copies_pos_conv_and_averages_the_rest(model: Music2Vec) -> None:
    with torch.no_grad():  # move the student away from the teacher (they start as copies)
        for p in model.student.encoder.parameters():
            p.add_(0.1 * torch.randn_like(p))
    teacher0 = {n: p.detach().clone().double() for n, p in model.teacher.named_parameters()}
    student = {n: p.detach().clone().double() for n, p in model.student.encoder.named_parameters()}
    assert teacher0.keys() == student.keys()
    model.ema_step(500)
    d = model.ema_decay(500)
    pos_conv = [n for n in teacher0 if n.startswith("pos_conv.")]
    assert len(pos_conv) == 4  # 2 convs x (weight, bias) in the tiny preset
    for name, t in model.teacher.named_parameters():
        assert t.dtype == torch.float32 and not t.requires_grad, name
        assert not torch.equal(teacher0[name], student[name]), name
        if name in pos_conv:
            assert torch.equal(t, model.student.encoder.get_parameter(name)), name
        else:
            expected = d * teacher0[name] + (1 - d) * student[name]
            torch.testing.assert_close(t.double(), expected, atol=1e-7, rtol=0, msg=name)
    assert model.num_updates == 500


def test_teacher_gets_no_gradient(model: Music2Vec) -> None:
    out = model(waves(), torch.Generator().manual_seed(0))
    out.loss_sum.backward()
    assert all(p.grad is None for p in model.teacher.parameters())
    assert all(p.grad is not None for p in model.final_proj.parameters())
    assert model.student.encoder.layers[0].fc1.weight.grad.abs().sum() > 0
    teacher_names = {f"teacher.{n}" for n, _ in model.teacher.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if any(p is q for q in model.trainable_parameters())}
    assert not trainable & teacher_names and "final_proj.weight" in trainable and "student.mask_emb" in trainable


def manual_teacher_ffn(model: Music2Vec, x: torch.Tensor) -> list[torch.Tensor]:
    """The teacher's per-layer FFN outputs (before the residual), written out from its modules (T even)."""
    t = model.teacher
    h = t.layer_norm(x + t.pos_conv(x.transpose(1, 2)).transpose(1, 2))
    ffns = []
    for layer in t.layers:
        a = layer.self_attn_layer_norm(h + layer.self_attn(h, None))
        ffn = layer.fc2(F.gelu(layer.fc1(a)))
        h = layer.final_layer_norm(a + ffn)
        ffns.append(ffn)
    return ffns


def instance_norm_over_time(y: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """(B, T, C): every channel of every example to zero mean, unit (biased) variance over time."""
    mean = y.mean(1, keepdim=True)
    var = ((y - mean) ** 2).mean(1, keepdim=True)
    return (y - mean) / torch.sqrt(var + eps)


def test_targets_and_loss_from_the_pieces(model: Music2Vec) -> None:
    """Targets = mean over the top-K teacher layers of instance-normed FFN outputs; loss = sum of squares / sqrt(D)."""
    model.eval()  # no dropout in the student: the forward pass is a function of the mask generator alone
    with torch.no_grad():  # make teacher != student, so targets taken from the wrong network would show
        for p in model.student.encoder.parameters():
            p.add_(0.2 * torch.randn_like(p))
    model.ema_step(3)
    assert (model.teacher.layers[3].fc2.weight - model.student.encoder.layers[3].fc2.weight).abs().max() > 0.1
    source = waves(samples=16320)  # 50 frames: even, so no sequence padding inside the encoder
    out = model(source, torch.Generator().manual_seed(5))

    with torch.no_grad():
        enc = model.student
        x = enc.project(enc.conv_features(source))  # (B, T, D)
        B, T, D = x.shape
        assert (T, D) == (50, 64)
        K, L = model.cfg.music2vec.average_top_k_layers, model.cfg.encoder.num_layers
        ffns = manual_teacher_ffn(model, x)
        pieces = model.teacher(x, min_layer=L - K).layer_results
        assert len(pieces) == K == 3
        for mine, theirs in zip(ffns[L - K:], pieces, strict=True):
            torch.testing.assert_close(theirs, mine, atol=1e-5, rtol=0)
        y = torch.stack([instance_norm_over_time(f) for f in ffns[L - K:]]).mean(0)  # (B, T, D)
        torch.testing.assert_close(model._targets(pieces), y, atol=1e-5, rtol=0)

        mask = compute_mask(torch.full((B,), T), T, 0.65, 10, min_masks=1, require_same_masks=True,
                            batch_rounding=True, generator=torch.Generator().manual_seed(5))
        student = enc.encoder(torch.where(mask[..., None], enc.mask_emb, x)).x
        pred = model.final_proj(student[mask])
        expected = ((pred - y[mask]) ** 2).sum() / math.sqrt(D)
    assert out.sample_size == int(mask.sum()) > 0
    assert out.loss_sum.item() == pytest.approx(expected.item(), rel=1e-5)
    assert out.logs["masked_frac"] == pytest.approx(mask.float().mean().item())
    assert out.logs["target_var"] == pytest.approx(torch.sqrt(y[mask].var(0) + 1e-6).mean().item(), rel=1e-5)


def with_music2vec(**update: float) -> Music2Vec:
    torch.manual_seed(0)
    cfg = tiny()
    return Music2Vec(cfg.model_copy(update={"music2vec": cfg.music2vec.model_copy(update=update)})).eval()


def test_explicit_loss_scale_replaces_one_over_sqrt_d() -> None:
    torch.set_num_threads(2)
    default = with_music2vec()(waves(), torch.Generator().manual_seed(1))
    scaled = with_music2vec(loss_scale=0.5)(waves(), torch.Generator().manual_seed(1))
    assert scaled.sample_size == default.sample_size
    assert scaled.loss_sum.item() == pytest.approx(default.loss_sum.item() * 0.5 * math.sqrt(64), rel=1e-5)


def test_l2_and_smooth_l1_per_frame_losses() -> None:
    g = torch.Generator().manual_seed(0)
    pred, y = torch.randn(5, 64, generator=g), torch.randn(5, 64, generator=g)
    e = pred - y
    torch.testing.assert_close(with_music2vec()._loss(pred, y), (e**2).sum(-1))
    beta = 0.25
    smooth = torch.where(e.abs() < beta, 0.5 * e**2 / beta, e.abs() - 0.5 * beta).sum(-1)
    torch.testing.assert_close(with_music2vec(loss_beta=beta)._loss(pred, y), smooth)


def test_fixed_seed_regression(model: Music2Vec) -> None:
    """Guards against accidental changes to init, masking, targets or loss: the value was computed once."""
    model.eval()
    out = model(waves(batch=3, samples=16000, seed=11), torch.Generator().manual_seed(0))
    assert out.sample_size == 78  # 3 rows x 26 masked frames of 49
    assert out.loss_sum.item() / out.sample_size == pytest.approx(4.786007220928486, rel=1e-5)


def test_check_collapse_after_var_check_after() -> None:
    cfg = tiny()
    cfg = cfg.model_copy(update={"music2vec": cfg.music2vec.model_copy(update={"var_check_after": 10})})
    torch.manual_seed(0)
    model = Music2Vec(cfg)
    logs = model(waves(), torch.Generator().manual_seed(0)).logs
    assert logs["target_var"] > 0.1 and logs["pred_var"] > 0.01  # a fresh model is healthy
    model.check_collapse(logs, 10**6)
    collapsed = logs | {"target_var": 0.05}
    model.check_collapse(collapsed, 9)  # not checked yet
    with pytest.raises(TargetCollapseError, match=r"target std 0\.05 < min_target_var 0\.1 at update 10"):
        model.check_collapse(collapsed, 10)
    with pytest.raises(TargetCollapseError, match="min_pred_var"):
        model.check_collapse(logs | {"pred_var": 0.001}, 11)


def test_post_ln_layer_returns_ffn_output_before_the_residual() -> None:
    torch.manual_seed(0)
    layer = TransformerLayer(tiny().encoder).eval()
    x = torch.randn(2, 7, 64)
    with torch.no_grad():
        out, ffn = layer(x, None)
        B, T, C, H = 2, 7, 64, 4
        att = layer.self_attn
        q, k, v = (p(x).view(B, T, H, C // H).transpose(1, 2) for p in (att.q_proj, att.k_proj, att.v_proj))
        w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(C // H), dim=-1)  # (B, H, T, T)
        a = layer.self_attn_layer_norm(x + att.out_proj((w @ v).transpose(1, 2).reshape(B, T, C)))
        expected_ffn = layer.fc2(F.gelu(layer.fc1(a)))
        expected_out = layer.final_layer_norm(a + expected_ffn)
    torch.testing.assert_close(ffn, expected_ffn, atol=1e-5, rtol=0)
    torch.testing.assert_close(out, expected_out, atol=1e-5, rtol=0)
    assert (ffn - out).abs().max() > 0.1  # the target is not the layer output
