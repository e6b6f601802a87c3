"""The prepared GPU check (`docker/gpu_check.sh`) through its CPU fallback: the same script and code path as on a
GPU machine, on the tiny models, with Ray, MLflow and the audio libraries made absent as they are there."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ABSENT = ("ray", "mlflow", "soundfile", "soxr", "sklearn", "scipy", "pandas", "optuna", "plotly", "music21",
          "pretty_midi")

SITECUSTOMIZE = f'''
import sys

ABSENT = {set(ABSENT)!r}


class _Absent:
    """Wraps a meta-path finder so that the ABSENT packages are not found, as on a bare GPU machine."""

    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ABSENT:
            return None
        return self.finder.find_spec(name, path, target) if hasattr(self.finder, "find_spec") else None

    def __getattr__(self, item):
        return getattr(self.finder, item)


sys.meta_path[:] = [_Absent(f) for f in sys.meta_path]
'''


def test_the_gpu_check_runs_its_cpu_fallback_without_ray_mlflow_or_audio_libraries(tmp_path: Path) -> None:
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = os.environ | {"PYTHON": sys.executable, "PYTHONPATH": str(tmp_path / "site")}
    control = subprocess.run([sys.executable, "-c", "import ray"], env=env, capture_output=True, text=True)
    assert control.returncode != 0 and "No module named 'ray'" in control.stderr, "the packages are absent"

    out = tmp_path / "rows.json"
    proc = subprocess.run(["bash", str(REPO / "docker" / "gpu_check.sh"), "--device", "cpu", "--tiny", "--steps", "2",
                           "--precision-steps", "40", "--json", str(out)], env=env, capture_output=True, text=True,
                          timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = proc.stdout
    assert "musicssl GPU check: torch" in table and "on CPU" in table and "\ntotal " in table
    rows = json.loads(out.read_text())["rows"]
    speed = [r for r in rows if r["mode"] in ("eager", "compiled")]
    assert [(r["model"], r["mode"]) for r in speed] == [("tiny", "eager"), ("tiny", "compiled"),
                                                         ("tiny_hubert", "eager"), ("tiny_hubert", "compiled")]
    for r in speed:
        assert r["batch"] == "2x1s" and r["frames_per_s"] > 0 and r["mfu"] is None  # no GPU peak on a CPU
        assert (r["compile_s"] is not None and r["compile_s"] > 0) == (r["mode"] == "compiled")
        assert f"{r['frames_per_s']:9.0f}" in table
    precision = [r for r in rows if r["mode"].startswith("bf16 vs fp32")]
    assert [r["model"] for r in precision] == ["tiny", "tiny_hubert"]
    for r in precision:
        x = r["extra"]
        assert x["skipped"] == [0, 0] and math.isfinite(x["fp32_tail"]) and math.isfinite(x["bf16_tail"])
        assert x["fp32_tail"] < x["fp32_head"] and x["bf16_tail"] < x["bf16_head"], "both runs learn"
        assert abs(x["rel_diff"]) < 0.05 and x["rel_diff"] == (x["bf16_tail"] - x["fp32_tail"]) / x["fp32_tail"]
        assert f"({x['rel_diff']:+.2%})" in table


def test_the_script_says_what_is_missing_without_wheels(tmp_path: Path) -> None:
    """A Python without pydantic and no wheels folder: a clear message, nothing installed."""
    fake = tmp_path / "python"
    fake.write_text("#!/usr/bin/env bash\nif [ \"$1\" = -c ]; then exit 1; fi\nexit 0\n")
    fake.chmod(0o755)
    env = os.environ | {"PYTHON": str(fake), "WHEELS": str(tmp_path / "none")}
    proc = subprocess.run(["bash", str(REPO / "docker" / "gpu_check.sh")], env=env, capture_output=True, text=True)
    assert proc.returncode == 2
    assert "lacks pydantic/PyYAML" in proc.stderr and str(tmp_path / "none") in proc.stderr
