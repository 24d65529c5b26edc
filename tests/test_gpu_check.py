"""`benchmarks/gpu_check.py` (issue 23's GPU checks) keeps working where no GPU is lent: its `--cpu` mode
trains LoRA on a tiny model and reports the figures it can; and the attention kernel training picks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from langadapt.train.engine import attention_implementation

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("requested, cuda, flash, expected", [
    ("auto", True, True, "flash_attention_2"),
    ("auto", True, False, "sdpa"),
    ("auto", False, True, "sdpa"),  # flash-attn runs on GPUs only
    ("eager", True, True, "eager"),
    ("flash_attention_2", False, False, "flash_attention_2"),  # asked for: transformers says what is missing
])
def test_attention_auto_is_flash_attention_on_a_gpu_where_installed(requested, cuda, flash, expected):
    assert attention_implementation(requested, cuda, flash) == expected


def test_gpu_check_runs_on_the_cpu_and_reports_lora_throughput(tiny_llama_dir, tmp_path):
    out = tmp_path / "figures.json"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--cpu", "--model",
                             str(tiny_llama_dir), "--steps", "6", "--block-size", "32", "--batch-size", "2",
                             "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["device"] == "cpu" and figures["lora"]["attention"] == "sdpa"
    assert figures["lora"]["tokens_per_s"] > 0 and figures["lora"]["mfu"] is None  # no peak known for a CPU
    assert figures["memory"] == []  # torch.cuda.max_memory_allocated needs a GPU
    assert set(figures["sharded"]) == {"fsdp", "zero2"} and all("skipped" in v for v in figures["sharded"].values())
    assert "tokens/s" in result.stdout


def test_model_flops_of_smollm2_follow_the_palm_convention():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from gpu_check import model_flops_per_token

    from langadapt.model.known_configs import KNOWN_CONFIGS

    config = KNOWN_CONFIGS["HuggingFaceTB/SmolLM2-135M-Instruct"]
    # per layer q, o 576 x 576; k, v 576 x 192 (3 KV heads of 64); gate, up, down 576 x 1536; and the LM
    # head 49152 x 576 (tied to the embeddings, but still a matrix product)
    layer = 2 * 576 * 576 + 2 * 576 * 192 + 3 * 576 * 1536
    n = 30 * layer + 49152 * 576
    assert model_flops_per_token(config, 2048) == 6 * n + 12 * 30 * 576 * 2048
