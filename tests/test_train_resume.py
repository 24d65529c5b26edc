"""`langadapt pretrain --resume` after a real `kill -9`: the steps after resuming repeat an
uninterrupted run's losses exactly (fp32, fixed seed, data order and RNG restored)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from langadapt.cli import main
from train_fixtures import extended_tiny_dir, extended_tiny_tied_dir, train_corpus  # noqa: F401 (fixtures)

# Runs `langadapt pretrain` with a callback that SIGKILLs the process at the end of step KILL_AT.
KILLER = textwrap.dedent("""
    import os, signal, sys
    from transformers import TrainerCallback
    from langadapt.cli import main
    from langadapt.train import pretrain as P

    class Kill(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == int(os.environ["KILL_AT"]):
                os.kill(os.getpid(), signal.SIGKILL)

    init = P.PretrainTrainer.__init__
    def patched(self, *a, **k):
        k["callbacks"] = k["callbacks"] + [Kill()]
        init(self, *a, **k)
    P.PretrainTrainer.__init__ = patched
    sys.exit(main(["pretrain", *sys.argv[1:]]))
""")


def _losses(run) -> dict[int, float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


@pytest.mark.slow
@pytest.mark.parametrize("model, stage, new_rows_only", [
    ("tiny_llama_dir", "lora", "false"),                 # LoRA + modules_to_save
    ("extended_tiny_dir", "lora", "true"),               # LoRA + trainable tokens (untied)
    ("extended_tiny_tied_dir", "embeddings", "true"),    # trainable tokens (tied)
])
def test_resume_after_kill_matches_uninterrupted(model, stage, new_rows_only, train_corpus, tmp_path, request):
    """The peft checkpoints Trainer writes restore every trained tensor (no custom row saving)."""
    common = ["--model", str(request.getfixturevalue(model)), "--corpus", str(train_corpus), "--block-size", "32",
              "--stage", stage, "--new-rows-only", new_rows_only, "--weight-decay", "0.1",
              "--lora-r", "4", "--lora-alpha", "8", "--lora-dropout", "0.1",
              "--max-steps", "8", "--batch-size", "2", "--grad-accum", "2", "--save-steps", "4",
              "--logging-steps", "1", "--eval-steps", "0", "--gradient-checkpointing", "false",
              "--cache-dir", str(tmp_path / "cache"), "--progress", "false", "--learning-rate", "1e-2"]
    assert main(["pretrain", *common, "--out", str(tmp_path / "straight")]) == 0

    killed = tmp_path / "killed"
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    proc = subprocess.run([sys.executable, str(script), *common, "--out", str(killed)],
                          env={**__import__("os").environ, "KILL_AT": "6"}, capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert sorted(p.name for p in (killed / "checkpoints").iterdir()) == ["checkpoint-4"]
    assert max(_losses(killed)) == 5  # step 5 was logged, step 6 ran and was killed before its log
    assert main(["pretrain", *common, "--out", str(killed), "--resume", "true"]) == 0

    straight, resumed = _losses(tmp_path / "straight"), _losses(killed)
    assert sorted(resumed) == list(range(1, 9))
    for step in range(1, 9):
        assert resumed[step] == pytest.approx(straight[step], rel=1e-6, abs=1e-7), step
    assert straight[8] != straight[5]  # it did train
    record = json.loads((killed / "adapter" / "adaptation.json").read_text())
    assert record["resumed_from"].endswith("checkpoint-4") and record["steps"] == 8
