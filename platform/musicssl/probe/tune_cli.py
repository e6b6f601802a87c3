"""`musicssl probe tune CHECKPOINT --task T --trials N --storage S`: the command line of `probe/tune.py`'s study,
and the optuna-dashboard command that opens it.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Any

from musicssl.paths import default_state_dir
from musicssl.probe.tasks import get_task
from musicssl.probe.tune import JOURNAL_SUFFIXES, tune_probe

DASHBOARD_EXTRA = "pip install 'musicssl[dashboard]'"


def dashboard_command(storage: str) -> str:
    """The command that opens optuna-dashboard (the `dashboard` extra) on `storage`, from any folder.

    A sqlite file or journal path is made absolute. A journal is named as one (`--storage-class`), so the
    dashboard can open it before its first write; it appends under the same `<path>.lock` file as our
    `JournalFileOpenLock`, so its notes and edits do not interleave with running trials.
    """
    if storage.startswith("sqlite:///") and storage != "sqlite:///:memory:":
        path = Path(storage.removeprefix("sqlite:///")).expanduser().resolve()
        return f"optuna-dashboard {shlex.quote(f'sqlite:///{path}')}"
    if "://" in storage:
        return f"optuna-dashboard {shlex.quote(storage)}"
    path = Path(storage).expanduser().resolve()
    return f"optuna-dashboard --storage-class JournalFileStorage {shlex.quote(str(path))}"


def add_tune_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add `tune CHECKPOINT --task T --trials N --storage S ...` to an argparse subparsers object."""
    p = subparsers.add_parser(
        "tune", help="tune a probe's hyperparameters on one task (Optuna study, MLflow runs)"
    )
    p.add_argument("checkpoint", help="musicssl checkpoint folder, Hugging Face model folder, or fairseq .pt")
    p.add_argument("--task", required=True, help="probe task name, e.g. synth_pitch")
    p.add_argument("--trials", type=int, required=True, help="trials to run now (more, if the study exists)")
    p.add_argument(
        "--storage",
        required=True,
        help="Optuna storage: sqlite:///probe.db, a database URL, or a journal file path (.journal/.log)",
    )
    p.add_argument(
        "--study", help="study name (default probe-<task>-<encoder hash>); an existing study resumes"
    )
    p.add_argument(
        "--tracking-uri", help="MLflow store (default $MLFLOW_TRACKING_URI, else sqlite in the state folder)"
    )
    p.add_argument("--parent-run", help="MLflow run id to put the study run under")
    p.add_argument("--seed", type=int, default=0, help="TPE seed (give each concurrent worker its own)")
    p.add_argument("--timeout", type=float, help="stop starting new trials after this many seconds")
    p.add_argument("--state-dir", help="state folder (corpus, feature cache, MLflow DB); default ./.musicssl")
    p.add_argument("--corpus", help="synthetic corpus folder (default: <state>/corpus, generated if missing)")
    p.add_argument("overrides", nargs="*",
                   help="probe settings the search starts from, over the checkpoint's own probe section, "
                        "e.g. probe.max_epochs=50")
    p.set_defaults(func=tune_cli)
    return p


def tune_cli(args: argparse.Namespace) -> int:
    """Run the study of `add_tune_parser`'s arguments and print the best trial."""
    from musicssl.config import SyntheticCorpusConfig
    from musicssl.config_io import ConfigError
    from musicssl.data.corpus import generate_corpus
    from musicssl.probe.run import probe_settings
    from musicssl.tracking.mlflow import resolve_tracking_uri

    # the checkpoint's own probe section, then the overrides: fails here, before anything starts
    base = probe_settings(Path(args.checkpoint), args.overrides, "musicssl probe tune", [args.task])
    problems = []
    if "://" not in args.storage and not args.storage.endswith(JOURNAL_SUFFIXES):
        problems.append(
            f"--storage {args.storage!r}: expected sqlite:///file.db, a database URL or a journal "
            f"file path ending in {' or '.join(JOURNAL_SUFFIXES)}"
        )
    try:
        task = get_task(args.task)
    except KeyError as exc:
        problems.append(f"--task: {exc.args[0]}")
    if problems:
        raise ConfigError("musicssl probe tune", problems)
    state = Path(args.state_dir).resolve() if args.state_dir else default_state_dir()
    corpus = None
    if task.synthetic:
        corpus = (
            Path(args.corpus) if args.corpus else generate_corpus(SyntheticCorpusConfig(), state / "corpus")
        )
    uri = resolve_tracking_uri(args.tracking_uri, state)
    r = tune_probe(
        Path(args.checkpoint),
        args.task,
        base,
        n_trials=args.trials,
        storage=args.storage,
        study_name=args.study,
        synthetic_root=corpus,
        cache_dir=state / "features",
        tracking_uri=uri,
        parent_run_id=args.parent_run,
        seed=args.seed,
        timeout=args.timeout,
    )
    for number, why in r.orphaned:
        print(f"trial {number} of an earlier run marked failed: {why}")
    print(f"study {r.study_name!r}: {r.n_complete} complete, {r.n_pruned} pruned, {r.n_failed} failed trials")
    if r.best_number < 0:
        print("no complete trial yet")
        return 0 if args.trials == 0 else 1
    print(
        f"best trial {r.best_number}: valid {r.metric}={r.best_value:.4f}  test "
        + "  ".join(f"{k}={v:.4f}" for k, v in r.best_test.items())
    )
    print(
        "  params: "
        + "  ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.best_params.items())
    )
    print(f"  MLflow      : {uri}  (study run {r.study_run_id})")
    print(f"  dashboard   : {dashboard_command(args.storage)}   ({DASHBOARD_EXTRA})")
    return 0
