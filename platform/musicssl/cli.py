"""`musicssl <command>`: demo, sweep, pretrain, probe (tune), data, corpus, dashboard, bench.

Bad input exits 2 with every problem listed, before anything starts.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from musicssl.config_io import ConfigError
from musicssl.paths import default_report, default_state_dir

if TYPE_CHECKING:
    from musicssl.sweep.spec import Sweep


def demo_sweep_path() -> Path:
    """`sweeps/demo.yaml`: the repository copy, else the one packaged in the wheel."""
    repo = Path(__file__).resolve().parents[2] / "sweeps" / "demo.yaml"
    if repo.exists():
        return repo
    return Path(str(resources.files("musicssl") / "sweeps" / "demo.yaml"))


def _sweep_status(file: str, overrides: list[str], smoke: bool, state_dir: Path) -> int:
    from musicssl.sweep.spec import load_sweep
    from musicssl.sweep.status import format_status, sweep_status

    try:
        print(format_status(*sweep_status(load_sweep(file, overrides, smoke=smoke), state_dir)))
    except FileNotFoundError as e:
        print(f"musicssl sweep status: {e}", file=sys.stderr)
        return 2
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from musicssl.sweep.checks import load_checked
    from musicssl.sweep.tune import run_sweep

    state_dir = Path(args.state_dir).resolve() if args.state_dir else default_state_dir()
    if args.file == "status" and args.overrides and not Path("status").exists():  # `musicssl sweep status FILE`
        return _sweep_status(args.overrides[0], args.overrides[1:], args.smoke, state_dir)
    # every problem of every stage fails here, before Ray, data preparation or MLflow start
    sweep = load_checked(args.file, args.overrides, smoke=args.smoke, state_dir=state_dir)
    if args.check:
        print(describe(sweep))
        return 0
    from musicssl.sweep.recovery import SweepStateError

    report = Path(args.report) if args.report else default_report(sweep.cfg.name, state_dir)
    t0 = time.perf_counter()
    try:
        result = run_sweep(sweep, state_dir, report_path=report.resolve(), num_cpus=args.num_cpus, mode=args.mode)
    except SweepStateError as e:
        print(f"musicssl sweep {args.file}: {e}", file=sys.stderr)
        return 2
    minutes = (time.perf_counter() - t0) / 60
    if result.already_ran:
        done = result.already_ran
        print(f"[musicssl] sweep {result.name!r} already ran to its end: parent run {done.parent_run_id} is "
              f"{done.status} ({done.failed} failed trials / probe jobs). Nothing was run again.\n"
              f"  dashboard    : {result.report} (rebuilt)\n"
              f"  --rerun-failed reruns only its failed trials and probe jobs under the same parent run;\n"
              f"  --fresh starts the whole sweep again under a new parent run.")
        return 0
    if result.interrupted:
        from musicssl.sweep.recovery import exit_interrupted

        print(f"\n[musicssl] sweep {result.name!r} interrupted after {minutes:.1f} min; cut short: "
              f"{', '.join(result.interrupted)}.\n  Nothing is lost: run the same command again to resume it (same "
              f"MLflow parent run {result.parent_run_id}, each trial from its latest checkpoint).")
        exit_interrupted()  # exits 130
    print(f"\n[musicssl] sweep {result.name!r}: {result.num_trials - len(result.errors)}/{result.num_trials} "
          f"trials finished in {minutes:.1f} min")
    for err in result.errors:
        print(f"  FAILED {err}")
    for err in result.probe_failures:
        print(f"  PROBE FAILED {err}")
    print(f"  MLflow store : {result.tracking_uri}  (parent run {result.parent_run_id})")
    if result.tracking_uri.startswith("sqlite:"):
        print(f"  MLflow UI    : mlflow ui --backend-store-uri {result.tracking_uri}")
    print(f"  dashboard    : {result.report}")
    print(f"  checkpoints  : {result.trials_dir}")
    return 1 if result.errors or result.probe_failures else 0


def describe(sweep: Sweep) -> str:
    """What `--check` prints: the trials, their variants and the probe schedule."""
    cfg = sweep.cfg
    variants = len({t.variant for t in sweep.trials})
    lines = [f"{sweep.source}: OK{' (--smoke)' if sweep.smoke else ''}, {len(sweep.trials)} trials "
             f"({variants} variants x {len(cfg.seeds)} seeds), sweep name {cfg.name!r}"]
    for t in sweep.trials:
        what = f"checkpoint {t.checkpoint}" if t.checkpoint else f"{t.experiment.pretrain.max_steps} steps"
        mark = "  (baseline)" if t.baseline else ""
        lines.append(f"  {t.key}  {t.variant}  seed={t.seed}  {what}, probed at {list(t.probe_steps) or 'import'}{mark}")
    tasks = sweep.trials[0].experiment.probe.tasks if sweep.trials else ()
    lines.append(f"  probe tasks: {', '.join(tasks)}; jobs of {cfg.probe.cpus:g} CPU / {cfg.probe.gpus:g} GPU, "
                 f"at most {cfg.probe.max_concurrent} at once, {cfg.probe.max_retries} retries")
    if cfg.scheduler.type != "none":
        lines.append(f"  scheduler: {cfg.scheduler.type} on {cfg.scheduler.metric}, grace {cfg.scheduler.grace_steps} "
                     f"steps, reduction factor {cfg.scheduler.reduction_factor:g}")
    return "\n".join(lines)


def _cmd_demo(args: argparse.Namespace) -> int:
    args.file, args.check = str(demo_sweep_path()), False
    return _cmd_sweep(args)


def _cmd_dashboard(args: argparse.Namespace) -> int:
    from musicssl.dashboards.command import run

    return run(args)


def _cmd_corpus(args: argparse.Namespace) -> int:
    from musicssl.config import SyntheticCorpusConfig
    from musicssl.config_io import parse, parse_overrides
    from musicssl.data.corpus import generate_corpus

    cfg = parse(SyntheticCorpusConfig, parse_overrides(args.overrides), "musicssl corpus")
    root = Path(args.out) if args.out else default_state_dir() / "corpus"
    print(f"corpus: {generate_corpus(cfg, root)}")
    return 0


class _PrintSink:
    def log(self, metrics: dict[str, float], step: int) -> None:
        shown = "  ".join(f"{k.removeprefix('pretrain/')}={v:.4g}" for k, v in metrics.items())
        print(f"step {step:>7d}  {shown}", flush=True)


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from musicssl.config_io import load_experiment
    from musicssl.data.manifest import read_manifest
    from musicssl.pretrain.loop import pretrain
    from musicssl.pretrain.prepare import prepare

    if args.config and "=" in args.config and not args.config.endswith((".yaml", ".yml")):
        args.overrides, args.config = [args.config, *args.overrides], None
    exp = load_experiment(args.config, args.overrides)  # fails here, before anything starts
    state_dir = Path(args.state_dir).resolve() if args.state_dir else default_state_dir()
    data = prepare(exp, state_dir)
    out = Path(args.out).resolve()
    final = pretrain(exp, out, read_manifest(data.manifest), sink=_PrintSink(), labels=data.labels)
    print(f"final checkpoint: {final}")
    return 0


def _cmd_data_manifest(args: argparse.Namespace) -> int:
    from musicssl.data.scan import scan_to_manifest

    r = scan_to_manifest(Path(args.dir), Path(args.out), valid_percent=args.valid_percent, seed=args.seed,
                         min_seconds=args.min_seconds, workers=args.workers)
    print(f"{r.num_train} train + {r.num_valid} valid files ({r.hours:.2f} h) -> {r.train}, {r.valid}")
    if r.num_rejected:
        print(f"{r.num_rejected} files rejected, with reasons: {r.rejected}")
    return 0


def _cmd_data_labels(args: argparse.Namespace) -> int:
    from musicssl.config import MusicHubertConfig
    from musicssl.config_io import parse
    from musicssl.pretrain.prepare import make_labels

    fields = {"num_clusters": args.k, "kmeans_fraction": args.fraction}
    if args.model:
        fields |= {"label_source": "model", "label_model": args.model, "label_layer": args.layer, "label_rate": 50.0}
    else:
        fields |= {"mfcc_ceps": args.ceps}
    cfg = parse(MusicHubertConfig, fields, "musicssl data labels")
    km = make_labels(Path(args.manifest), cfg, Path(args.out), seed=args.seed)
    print(f"labels: {km} (dictionary {km.parent / 'dict.km.txt'})")
    return 0


def split_task_arguments(items: list[str]) -> tuple[list[str], list[str]]:
    """What `--tasks` took, split into task names and `KEY=VALUE` overrides (an option must not eat those)."""
    return [i for i in items if "=" not in i], [i for i in items if "=" in i]


def _cmd_probe(args: argparse.Namespace) -> int:
    from musicssl.config import SyntheticCorpusConfig
    from musicssl.data.corpus import generate_corpus
    from musicssl.probe.run import probe_checkpoint, probe_settings
    from musicssl.probe.tasks import TASKS

    tasks, extra = split_task_arguments(args.tasks or [])
    if args.checkpoint is None:  # `--tasks a b CHECKPOINT`: the last name that is no task is the checkpoint
        if not tasks or tasks[-1] in TASKS:
            raise FileNotFoundError("musicssl probe: give the checkpoint to probe (a musicssl checkpoint folder, "
                                    "a Hugging Face model folder or a fairseq .pt)")
        args.checkpoint = tasks.pop()
    cfg = probe_settings(Path(args.checkpoint), [*args.overrides, *extra], "musicssl probe", tasks)
    state = default_state_dir()
    corpus = generate_corpus(SyntheticCorpusConfig(), state / "corpus")
    results, average = probe_checkpoint(Path(args.checkpoint), cfg, synthetic_root=corpus,
                                        cache_dir=state / "features")
    for name, res in results.items():
        print(f"{name:20s} score {100 * res.score:5.1f}  " + "  ".join(f"{k}={v:.4f}" for k, v in res.test.items()))
    print(f"{'average':20s} score {100 * average:5.1f}")
    return 0


def _ratio_text(ratio: float, bounds: tuple[float, float]) -> str:
    """`1.07 [1.03-1.10]`: a paired speed-up and its per-round range."""
    return f"{ratio:.2f} [{bounds[0]:.2f}-{bounds[1]:.2f}]"


def _cmd_bench_model(args: argparse.Namespace) -> int:
    from musicssl.bench import bench_model

    for preset in args.preset:
        r = bench_model(preset, args.batch, args.seconds, args.steps, args.warmup, args.device, args.threads,
                        compile=args.compile, precision=args.precision)
        print(f"{preset} ({r['paradigm']}, {r['params_m']:.1f}M encoder params) on {r['device']} in {r['precision']}, "
              f"{r['threads']} threads, batch {r['batch']} x {r['seconds']:g} s = {r['frames_per_step']} frames/step")
        spread = f"per-round range over {r['rounds']} rounds"
        print(f"  forward+backward frames/s: musicssl {r['musicssl_frames_per_s']:.0f}   "
              f"transformers {r['transformers_frames_per_s']:.0f}   ratio {_ratio_text(r['ratio'], r['ratio_range'])}"
              f" ({spread})")
        if args.compile:
            print(f"  compiled musicssl: {r['compiled_frames_per_s']:.0f} frames/s, "
                  f"{_ratio_text(r['compiled_ratio'], r['compiled_ratio_range'])} x transformers "
                  f"(compile: {r['compile_s']:.1f} s on the first step)")
        print(f"  full {r['paradigm']} objective step: {r['objective_frames_per_s']:.0f} frames/s"
              + (f"; compiled {r['compiled_objective_frames_per_s']:.0f} frames/s (compile: "
                 f"{r['objective_compile_s']:.1f} s)" if args.compile else ""))
        if "mfu" in r:
            mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a (unknown GPU peak)"
            print(f"  {r['gpu']}: {r['encoder_tflops']:.1f} TFLOP/s, MFU {mfu}")
        if "bound_ratio" in r:
            achieved = "   ".join(f"{k} {v:.0f}" for k, v in r["gflops_per_s"].items())
            print(f"  roofline: GFLOP/s {achieved}, against a matrix product's {r['matmul_gflops']:.0f}: at most "
                  f"{r['bound_ratio']:.2f}x transformers for any implementation at this precision")
    return 0


def _cmd_bench_data(args: argparse.Namespace) -> int:
    from musicssl.bench import bench_data

    for preset in args.preset:
        r = bench_data(preset, tuple(args.workers), args.batches, args.files, args.seconds, args.sample_rate,
                       args.threads)
        print(f"data path of {preset}: crops of {r['crop']} samples, {r['batch_samples']} samples per batch, "
              f"{r['sample_rate']} Hz WAV files{' (resampled to 16 kHz)' if r['sample_rate'] != 16000 else ''}, "
              f"normalize={r['normalize']}, {r['threads']} torch threads")
        for row in r["rows"]:
            print(f"  {row['workers']} DataLoader workers: {row['samples_per_s'] / 1e6:6.2f} M samples/s "
                  f"({row['batches_per_s']:.2f} batches/s)")
        need = ", ".join(f"{v / 1e6:.2f} M at {k} MFU" for k, v in r["gpu_need"].items())
        print(f"  one H100 training {preset} would consume (estimate from the FLOPs per frame): {need}")
    return 0


def _bench_kmeans(args: argparse.Namespace) -> int:
    from musicssl.data.kmeans_bench import main as kmeans_bench

    kmeans_bench(["--n", str(args.n), "--repeats", str(args.repeats), "--ks", *map(str, args.ks)])
    return 0


def _cmd_bench_extract(args: argparse.Namespace) -> int:
    from musicssl.bench import bench_extract

    for preset in args.preset:
        r = bench_extract(preset, args.clips, args.clip_seconds, args.window, args.device, args.threads)
        print(f"{preset} on {r['device']} ({r['threads']} threads): {r['audio_s']:.0f} s of audio in {r['wall_s']:.2f} s "
              f"= {r['audio_s_per_s']:.1f} s of audio per second ({r['windows']} windows x {r['states']} states)")
    return 0


def _cmd_bench_probe(args: argparse.Namespace) -> int:
    from musicssl.bench import bench_probe
    from musicssl.config import SyntheticCorpusConfig
    from musicssl.data.corpus import generate_corpus

    state = default_state_dir()
    corpus = generate_corpus(SyntheticCorpusConfig(), state / "corpus")
    r = bench_probe(Path(args.checkpoint), tuple(args.tasks), corpus, Path(args.cache or state / "features"),
                    window_seconds=2.0, standardize=True, lr=5e-3, max_epochs=200, early_stop_patience=20)
    print(f"probing {', '.join(r['tasks'])}: first call (features + probes) {r['first_s']:.1f} s, "
          f"from cached features {r['cached_s']:.1f} s; average score {100 * r['average']:.1f}")
    for name, score in r["scores"].items():
        print(f"  {name:18s} {100 * score:5.1f}")
    return 0


def _cmd_bench_standardize(args: argparse.Namespace) -> int:
    from musicssl.bench import bench_standardize
    from musicssl.config import SyntheticCorpusConfig
    from musicssl.data.corpus import generate_corpus

    state = default_state_dir()
    corpus = generate_corpus(SyntheticCorpusConfig(), state / "corpus")
    rows = bench_standardize([Path(c) for c in args.checkpoints], tuple(args.tasks), corpus, state / "features",
                             args.overrides)
    print(f"{'checkpoint':60s} {'standardize':>11s} " + " ".join(f"{t:>16s}" for t in args.tasks) + "  average")
    for r in rows:
        print(f"{r['checkpoint'][-60:]:60s} {str(r['standardize']):>11s} "
              + " ".join(f"{100 * r['scores'][t]:16.1f}" for t in args.tasks) + f"  {100 * r['average']:7.1f}")
    return 0


def _cmd_bench_asha(args: argparse.Namespace) -> int:
    from musicssl.sweep.bench_asha import bench_asha, format_report

    state = Path(args.state_dir or ".musicssl/bench-asha").resolve()
    print(format_report(bench_asha(state, args.variants, args.seeds, args.steps, args.every, args.num_cpus)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also used by the docs test)."""
    p = argparse.ArgumentParser(prog="musicssl", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def sweep_options(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--state-dir", help="state folder (corpus, MLflow DB, checkpoints); default ./.musicssl")
        sp.add_argument("--report", help="dashboard HTML path; default dashboards/<sweep name>.html")
        sp.add_argument("--num-cpus", type=int, help="CPUs for in-process Ray (default: all)")
        sp.add_argument("--smoke", action="store_true",
                        help="shrink the sweep to a CPU run of a few minutes (tiny model, synthetic corpus and "
                             "stand-in tasks, few steps), keeping its variants, grid and seeds")
        modes = sp.add_mutually_exclusive_group()
        modes.add_argument("--resume", dest="mode", action="store_const", const="resume", default="auto",
                           help="resume the interrupted run of this sweep; fail if there is none (running the "
                                "same command again resumes too)")
        modes.add_argument("--rerun-failed", dest="mode", action="store_const", const="rerun-failed",
                           help="rerun only the failed trials and probe jobs of the sweep's latest run, from their "
                                "latest checkpoints, under the same parent run")
        modes.add_argument("--fresh", dest="mode", action="store_const", const="fresh",
                           help="start the sweep again from scratch under a new parent run, even if it ran before")
        sp.add_argument("overrides", nargs="*", help="sweep-file overrides, e.g. base.pretrain.max_steps=50")

    d = sub.add_parser("demo", help="run sweeps/demo.yaml on the synthetic corpus (the main job)")
    sweep_options(d)
    d.set_defaults(func=_cmd_demo)
    s = sub.add_parser("sweep", help="run a sweep file through Ray Tune, tracked in MLflow "
                                     "(`musicssl sweep status FILE`: where each trial of its latest run stands)")
    s.add_argument("file", help="sweep YAML, e.g. sweeps/music2vec_mask.yaml")
    s.add_argument("--check", action="store_true", help="validate everything and list the trials, run nothing")
    sweep_options(s)
    s.set_defaults(func=_cmd_sweep)
    b = sub.add_parser("dashboard", help="(re)build a sweep's report (HTML) or its table (CSV, LaTeX) from MLflow")
    from musicssl.dashboards.command import add_arguments

    add_arguments(b)
    b.set_defaults(func=_cmd_dashboard)
    c = sub.add_parser("corpus", help="generate (or find cached) the synthetic music corpus")
    c.add_argument("--out", help="root folder; default <state>/corpus")
    c.add_argument("overrides", nargs="*", help="e.g. num_pieces=128 seed=1")
    c.set_defaults(func=_cmd_corpus)
    pt = sub.add_parser("pretrain", help="one pretraining run (no Ray, no MLflow), e.g. a MusicHuBERT iteration")
    pt.add_argument("config", nargs="?", help="experiment YAML (overrides of the defaults)")
    pt.add_argument("--out", required=True, help="run folder (checkpoints; an existing run resumes)")
    pt.add_argument("--state-dir", help="state folder (corpus, labels); default ./.musicssl")
    pt.add_argument("overrides", nargs="*", help="e.g. model.preset=tiny_hubert pretrain.max_steps=100")
    pt.set_defaults(func=_cmd_pretrain)
    data = sub.add_parser("data", help="data preparation")
    dsub = data.add_subparsers(dest="data", required=True)
    dm = dsub.add_parser("manifest", help="validate a folder of audio and write fairseq train/valid manifests")
    dm.add_argument("dir", help="folder of audio (wav, flac, ogg, mp3), searched recursively")
    dm.add_argument("-o", "--out", required=True, help="output folder for train.tsv, valid.tsv, rejected.tsv")
    dm.add_argument("--valid-percent", type=float, default=0.01)
    dm.add_argument("--seed", type=int, default=42)
    dm.add_argument("--min-seconds", type=float, default=2.0, help="shorter files are rejected (fairseq: 2 s)")
    dm.add_argument("--workers", type=int, help="decoding processes (default: all cores)")
    dm.set_defaults(func=_cmd_data_manifest)
    dl = dsub.add_parser("labels", help="k-means labels for MusicHuBERT: MFCC (iteration 1) or a model layer (2)")
    dl.add_argument("manifest", help="fairseq .tsv manifest")
    dl.add_argument("-o", "--out", required=True, help="root folder; labels go to a subfolder keyed by the settings")
    dl.add_argument("--k", type=int, default=500, help="clusters")
    dl.add_argument("--ceps", type=int, default=13, choices=[13, 20], help="MFCC cepstra (39- or 60-dim features)")
    dl.add_argument("--model", help="iteration 2: checkpoint whose layer is clustered (50 Hz labels)")
    dl.add_argument("--layer", type=int, default=6, help="1-based transformer layer of --model")
    dl.add_argument("--fraction", type=float, default=0.1, help="fraction of utterances that fit the k-means")
    dl.add_argument("--seed", type=int, default=0)
    dl.set_defaults(func=_cmd_data_labels)
    pr = sub.add_parser("probe", help="probe a checkpoint on tasks; `musicssl probe tune --help` tunes a probe with Optuna")
    pr.add_argument("checkpoint", nargs="?",
                    help="musicssl checkpoint folder (probed with its own probe section), Hugging Face model folder, "
                         "or fairseq .pt")
    pr.add_argument("--tasks", nargs="+", help="task names (default: probe.tasks)")
    pr.add_argument("overrides", nargs="*",
                    help="probe settings, e.g. probe.lr=5e-3 probe.data_roots.gtzan_genre=/data/GTZAN")
    pr.set_defaults(func=_cmd_probe)
    bench = sub.add_parser("bench", help="benchmarks against a named reference, measured in the same run")
    bsub = bench.add_subparsers(dest="bench", required=True)
    bm = bsub.add_parser("model", help="training-step throughput: musicssl encoder vs transformers' equivalent")
    bm.add_argument("--preset", nargs="+", default=["tiny", "music2vec_base"], help="model presets")
    bm.add_argument("--batch", type=int, default=2)
    bm.add_argument("--seconds", type=float, default=5.0, help="audio seconds per item")
    bm.add_argument("--steps", type=int, default=5,
                    help="timed interleaved rounds, one step of each model per round (medians reported)")
    bm.add_argument("--warmup", type=int, default=2)
    bm.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    bm.add_argument("--threads", type=int, help="torch CPU threads")
    bm.add_argument("--compile", action="store_true",
                    help="also time musicssl compiled as pretrain.compile does (and report the compile time)")
    bm.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                    help="both sides in fp32 or under bf16 autocast (auto: bf16 on a GPU, fp32 on a CPU)")
    bm.set_defaults(func=_cmd_bench_model)
    bd = bsub.add_parser("data", help="the data path alone (decode + crop in DataLoader workers) against what a "
                                      "GPU would consume")
    bd.add_argument("--preset", nargs="+", default=["music2vec_base", "musichubert_base"])
    bd.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="DataLoader worker counts to time")
    bd.add_argument("--batches", type=int, default=12, help="timed batches per worker count")
    bd.add_argument("--files", type=int, default=16)
    bd.add_argument("--seconds", type=float, default=32.0, help="length of each generated file")
    bd.add_argument("--sample-rate", type=int, default=16000, help="rate of the files (not 16000: resampled)")
    bd.add_argument("--threads", type=int)
    bd.set_defaults(func=_cmd_bench_data)
    bk = bsub.add_parser("kmeans", help="k-means fit + assign vs fairseq's MiniBatchKMeans recipe (same data)")
    bk.add_argument("--n", type=int, default=500_000)
    bk.add_argument("--ks", type=int, nargs="+", default=[500, 2000])
    bk.add_argument("--repeats", type=int, default=3)
    bk.set_defaults(func=lambda a: _bench_kmeans(a))
    be = bsub.add_parser("extract", help="feature-extraction throughput (seconds of audio per second)")
    be.add_argument("--preset", nargs="+", default=["tiny", "music2vec_base"])
    be.add_argument("--clips", type=int, default=8)
    be.add_argument("--clip-seconds", type=float, default=30.0)
    be.add_argument("--window", type=float, default=30.0, help="window seconds (paper: 30)")
    be.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    be.add_argument("--threads", type=int)
    be.set_defaults(func=_cmd_bench_extract)
    bp = bsub.add_parser("probe", help="wall time of probing synthetic tasks for one checkpoint (cold, then cached)")
    bp.add_argument("checkpoint", help="checkpoint folder / HF folder / fairseq .pt")
    bp.add_argument("--tasks", nargs="+", default=["synth_pitch", "synth_key", "synth_instrument", "synth_tags",
                                                   "synth_tempo", "synth_beat"])
    bp.add_argument("--cache", help="feature cache folder (default <state>/features; use an empty one for a cold run)")
    bp.set_defaults(func=_cmd_bench_probe)
    bz = bsub.add_parser("standardize", help="probe scores with probe.standardize off and on, per checkpoint")
    bz.add_argument("checkpoints", nargs="+", help="checkpoint folders (each probed with its own probe section)")
    bz.add_argument("--tasks", nargs="+", default=["synth_pitch", "synth_key", "synth_instrument"])
    bz.add_argument("--set", dest="overrides", nargs="*", default=[], help="probe overrides, e.g. probe.max_epochs=50")
    bz.set_defaults(func=_cmd_bench_standardize)
    ba = bsub.add_parser("asha", help="ASHA on probe results vs every trial to the end: compute, ranking agreement")
    ba.add_argument("--variants", type=int, default=6, help="variants (of 8 built in)")
    ba.add_argument("--seeds", type=int, default=2)
    ba.add_argument("--steps", type=int, default=80, help="pretraining steps per trial")
    ba.add_argument("--every", type=int, default=20, help="probe every this many steps (also ASHA's grace period)")
    ba.add_argument("--num-cpus", type=int, default=2)
    ba.add_argument("--state-dir", help="default .musicssl/bench-asha (a fresh folder gives a fresh run)")
    ba.set_defaults(func=_cmd_bench_asha)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `musicssl` console script."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["probe", "tune"]:  # `musicssl probe tune CHECKPOINT ...`: its own parser
        from musicssl.probe.tune_cli import add_tune_parser

        parser = argparse.ArgumentParser(prog="musicssl probe")
        add_tune_parser(parser.add_subparsers(dest="probe_command", required=True))
        argv = argv[1:]
    else:
        parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # overrides given after an option (`sweep FILE --check a.b=1`) land here
        if not hasattr(args, "overrides") or any(e.startswith("-") or "=" not in e for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
