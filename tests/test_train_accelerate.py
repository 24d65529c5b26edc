"""The multi-process path: `accelerate launch` with 2 CPU processes (torchrun + gloo DDP).

`accelerate launch --cpu --num_processes 2` starts a single process in accelerate 1.x unless
MPI is set up (its CPU launcher is mpirun); `--multi_gpu` on a machine without GPUs starts 2
torchrun processes that train with DDP over gloo, which is what this test runs.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from langadapt.cli import main
from train_fixtures import heldout_file, train_corpus  # noqa: F401

ACCELERATE = Path(sys.executable).with_name("accelerate")


def _free_port() -> int:
    """A TCP port nothing listens on now (the default 29500 may be held by another run on the machine)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _losses(run: Path) -> list[float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


@pytest.mark.slow
def test_two_process_ddp_matches_one_process_with_the_same_global_batch(tiny_llama_dir, train_corpus,
                                                                          heldout_file, tmp_path):
    common = ["--model", str(tiny_llama_dir), "--corpus", str(train_corpus), "--heldout", str(heldout_file),
              "--block-size", "32", "--stage", "lora", "--lora-r", "4", "--lora-alpha", "8", "--lora-dropout", "0",
              "--max-steps", "4", "--save-steps", "2", "--eval-steps", "2", "--logging-steps", "1",
              "--gradient-checkpointing", "false", "--progress", "false", "--cache-dir", str(tmp_path / "cache")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                           "--main_process_port", str(_free_port()), "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "langadapt.cli", "pretrain",
                           *common, "--batch-size", "2", "--out", str(tmp_path / "ddp")],
                          env=env, capture_output=True, text=True, timeout=300)
    # both ends of stderr: the failing rank's traceback may come before the launcher's summary
    assert proc.returncode == 0, proc.stderr[:4000] + "\n...\n" + proc.stderr[-4000:]
    assert proc.stderr.count("Loading weights: 100%") == 2  # two processes
    record = json.loads((tmp_path / "ddp" / "adapter" / "adaptation.json").read_text())
    assert record["tokens_seen"] == 4 * 2 * 2 * 32 and record["steps"] == 4
    assert main(["pretrain", *common, "--batch-size", "4", "--out", str(tmp_path / "single")]) == 0
    ddp, single = _losses(tmp_path / "ddp"), _losses(tmp_path / "single")
    assert len(ddp) == 4 and ddp == pytest.approx(single, rel=2e-3)
