"""The README's probe commands, run as written in a shell (a tiny checkpoint and dataset placed where they point)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from test_datasets import make_gtzan

from musicssl.checkpoints import load_encoder_checkpoint
from musicssl.models.convert import export_hf

REPO = Path(__file__).resolve().parents[2]
SECTION = "Probing a checkpoint"
SCORE = re.compile(r"^(\S+)\s+score\s+([\d.]+)", re.MULTILINE)


def readme_probe_commands() -> list[str]:
    """The shell commands of the README's probe block (continuation lines joined, comments dropped)."""
    text = (REPO / "README.md").read_text()
    block = text[text.index(SECTION):].split("```bash\n", 1)[1].split("```", 1)[0]
    commands, current = [], ""
    for line in block.splitlines():
        code = line.split("#", 1)[0].rstrip()
        if not code.strip():
            continue
        current += code.removesuffix("\\").strip() + " "
        if not code.endswith("\\"):
            commands.append(current.strip())
            current = ""
    return commands


@pytest.mark.slow
def test_the_readme_probe_commands_run_as_written(checkpoint: Path, tmp_path: Path) -> None:
    commands = readme_probe_commands()
    assert len(commands) == 4 and all(c.startswith("musicssl probe ") for c in commands), commands
    home = tmp_path / "home"
    work = home / "work"
    shutil.copytree(checkpoint, work / "runs/hubert-it2/checkpoints/step_000000200")
    exp, state, _ = load_encoder_checkpoint(checkpoint)
    export_hf(state, exp.model.encoder, exp.model.paradigm, home / "models/music2vec-v1")
    make_gtzan(home / "data/GTZAN")
    env = os.environ | {"HOME": str(home), "MUSICSSL_HOME": str(home / "state"),
                        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    outputs = []
    for command in commands:
        done = subprocess.run(["bash", "-c", command], cwd=work, env=env, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        outputs.append(done.stdout)

    own, chosen, hf, tune = outputs
    scores = [dict((n, float(v)) for n, v in SCORE.findall(out)) for out in (own, chosen, hf)]
    # the checkpoint's own probe section names synth_pitch and synth_key; --tasks with an override after it
    assert sorted(scores[0]) == sorted(scores[1]) == ["average", "synth_key", "synth_pitch"]
    assert sorted(scores[2]) == ["average", "gtzan_genre"]  # the data root given as probe.data_roots.<task>=
    for s in scores:
        tasks = [v for k, v in s.items() if k != "average"]
        assert s["average"] == pytest.approx(sum(tasks) / len(tasks), abs=0.06)  # printed with one decimal
        assert all(0.0 <= v <= 100.0 for v in s.values())
    assert scores[0] != scores[1]  # probe.standardize=false changed the probe (standardize is on by default)
    counts = re.search(r"(\d+) complete, (\d+) pruned, (\d+) failed", tune)
    assert counts is not None and sum(map(int, counts.groups())) == 20 and counts.group(3) == "0", tune
    storage = f"sqlite:///{work / 'probe-studies.db'}"
    (name,) = optuna.get_all_study_names(storage)
    study = optuna.load_study(study_name=name, storage=storage)
    assert len(study.trials) == 20
    assert study.trials[0].params["standardize"] is True  # trial 0 = the checkpoint's own probe settings
