"""Data-parallel updates: 2 gloo workers with half batches each == 1 worker with the whole batch."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from musicssl.config import ExperimentConfig
from musicssl.data.dataset import Batch, DataPosition
from musicssl.pretrain.distributed import DistContext
from musicssl.pretrain.loop import build_model, train_update
from musicssl.pretrain.optim import build_optimizer

STEPS = 3


def _cfg(paradigm: str) -> ExperimentConfig:
    enc = {"dropout": 0.0, "attention_dropout": 0.0, "dropout_input": 0.0, "encoder_layerdrop": 0.0}
    preset = "tiny" if paradigm == "music2vec" else "tiny_hubert"
    return ExperimentConfig.model_validate({"model": {"preset": preset, "encoder": enc,
                                                      "hubert": {"num_clusters": 8, "label_rate": 50.0}},
                                            "data": {"labels": "unused.km"}, "pretrain": {"device": "cpu", "lr": 1e-3}})


def _data(paradigm: str) -> list[Batch]:
    """STEPS batches of 4 items with fixed masks (and labels), the same for every process."""
    gen = torch.Generator().manual_seed(123)
    out = []
    for _ in range(STEPS):
        audio = torch.randn(4, 8000, generator=gen)
        # equal masked counts per row: fairseq's HuBERT feature penalty is (per-worker mean) x (per-worker masked
        # frames), which equals the single-worker value only when the workers' masked counts are equal
        keys = torch.rand(4, 24, generator=gen)
        mask = keys <= keys.kthvalue(10, dim=1, keepdim=True).values
        labels = torch.randint(0, 8, (4, 24), generator=gen) if paradigm == "musichubert" else None
        out.append(Batch(DataPosition(), audio, labels, mask))
    return out


def _run(paradigm: str, rank: int, world: int) -> tuple[list[float], dict[str, torch.Tensor]]:
    torch.set_num_threads(1)
    cfg = _cfg(paradigm)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model).train()
    params = model.trainable_parameters()
    opt = build_optimizer(params, cfg.pretrain)
    ctx = DistContext(rank, world)
    losses = []
    for step, batch in enumerate(_data(paradigm)):
        share = slice(rank * 4 // world, (rank + 1) * 4 // world)
        mine = Batch(batch.position, batch.audio[share], None if batch.labels is None else batch.labels[share],
                     batch.mask[share])
        result = train_update(model, params, opt, [mine], cfg, torch.device("cpu"), torch.Generator(), ctx)
        opt.step()
        model.ema_step(step + 1)
        losses.append(float(result.loss))
    return losses, {k: v.detach().clone() for k, v in model.state_dict().items()}


def _worker(rank: int, world: int, port: int, paradigm: str, out: Path) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        losses, state = _run(paradigm, rank, world)
        torch.save({"losses": losses, "state": state}, out / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("paradigm", ["music2vec", "musichubert"])
def test_two_workers_equal_one_worker_with_the_whole_batch(paradigm: str, tmp_path: Path) -> None:
    single_losses, single_state = _run(paradigm, 0, 1)
    mp.spawn(_worker, args=(2, _free_port(), paradigm, tmp_path), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for r in ranks:
        assert r["losses"] == pytest.approx(single_losses, rel=1e-5, abs=1e-6)
        for key, value in single_state.items():
            torch.testing.assert_close(r["state"][key], value, atol=2e-6, rtol=1e-5, msg=key)
    # and the update did something: weights moved away from their initial values
    torch.manual_seed(0)
    initial = build_model(_cfg(paradigm).model).state_dict()
    assert any(not torch.equal(initial[k], single_state[k]) for k in initial)


def _pretrain_worker(rank: int, world: int, port: int, run_dir: Path, manifest_path: Path, die_at: int) -> None:
    """One of `world` gloo workers running the real pretraining loop; rank 0 dies (os._exit, no cleanup) right
    after writing the checkpoint at step `die_at` (0: never), as a crashed node would."""
    from musicssl.config import DataConfig, PretrainConfig, tiny
    from musicssl.data.manifest import read_manifest
    from musicssl.pretrain.loop import pretrain

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)

    def die(path: Path, step: int, metrics: dict[str, float]) -> None:
        if step == die_at:
            os._exit(17)

    cfg = ExperimentConfig(model=tiny(), data=DataConfig(max_sample_size=16000, min_sample_size=8000, max_tokens=32000),
                           pretrain=PretrainConfig(max_steps=6, checkpoint_every=3, device="cpu"))
    pretrain(cfg, run_dir, read_manifest(manifest_path),
             dist=DistContext(rank, world, torch.device("cpu")), on_checkpoint=die)
    dist.destroy_process_group()


def test_two_workers_resume_exactly_with_every_ranks_rng(tiny_corpus: Path, tmp_path: Path) -> None:
    """Dropout and masks draw from each rank's own RNG streams: a resumed 2-worker run equals the straight one bit
    for bit only when every rank's streams are saved in the checkpoint and restored."""
    from safetensors.torch import load_file

    from musicssl.pretrain.checkpoint import load_checkpoint_rng

    manifest = tiny_corpus / "pretrain" / "train.tsv"
    mp.spawn(_pretrain_worker, args=(2, _free_port(), tmp_path / "straight", manifest, 0), nprocs=2, join=True)
    with pytest.raises(mp.ProcessExitedException, match="exit code 17"):
        mp.spawn(_pretrain_worker, args=(2, _free_port(), tmp_path / "split", manifest, 3), nprocs=2, join=True)
    assert (tmp_path / "split" / "checkpoints" / "latest").read_text() == "step_000000003"
    rng = load_checkpoint_rng(tmp_path / "split" / "checkpoints" / "step_000000003")
    assert {"torch", "mask", "rank1.torch", "rank1.mask"} <= rng.keys()
    assert not torch.equal(rng["torch"], rng["rank1.torch"]), "the ranks draw different dropout"
    mp.spawn(_pretrain_worker, args=(2, _free_port(), tmp_path / "split", manifest, 0), nprocs=2, join=True)

    ends = [load_file(str(tmp_path / run / "checkpoints" / "step_000000006" / "model.safetensors"))
            for run in ("straight", "split")]
    assert ends[0].keys() == ends[1].keys()
    assert [k for k in ends[0] if not torch.equal(ends[0][k], ends[1][k])] == []
