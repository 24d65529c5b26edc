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
import torch

from langadapt.cli import main
from test_run import tiny_recipe  # noqa: F401
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
    record = json.loads((tmp_path / "ddp" / "adapter" / "adaptation.json").read_text())
    assert record["tokens_seen"] == 4 * 2 * 2 * 32 and record["steps"] == 4
    assert main(["pretrain", *common, "--batch-size", "4", "--out", str(tmp_path / "single")]) == 0
    ddp, single = _losses(tmp_path / "ddp"), _losses(tmp_path / "single")
    assert len(ddp) == 4 and ddp == pytest.approx(single, rel=2e-3)


@pytest.mark.slow
def test_run_trains_on_two_processes_as_on_one_with_the_same_global_batch(tiny_recipe, tmp_path, monkeypatch):
    """`langadapt run --nproc-per-node 2` launches the training step through accelerate (2 gloo processes,
    1 block each) and gives the losses of one process with 2 blocks; the other steps run once."""
    import yaml

    recipe = yaml.safe_load(tiny_recipe.read_text(encoding="utf-8"))
    recipe.pop("sft")
    recipe["data"].pop("instructions")
    recipe["eval"]["prompts"] = 0
    recipe["pretrain"] = [{**recipe["pretrain"][1], "batch_size": 1, "lora_dropout": 0.0, "save_steps": 2}]
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump(recipe, allow_unicode=True), encoding="utf-8")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert main(["run", str(path), "--out", str(tmp_path / "ddp"), "--nproc-per-node", "2",
                 "--master-port", str(_free_port())]) == 0
    config = yaml.safe_load((tmp_path / "ddp" / "recipes" / "accelerate-ddp.yaml").read_text())
    assert config["num_processes"] == 2 and config["distributed_type"] == "MULTI_GPU"
    record = json.loads((tmp_path / "ddp" / "pretrain-lora" / "adapter" / "adaptation.json").read_text())
    assert record["tokens_seen"] == 2 * 2 * 1 * 32 and record["steps"] == 2  # 2 steps x 2 processes x 1 block
    recipe["pretrain"][0]["batch_size"] = 2
    path.write_text(yaml.safe_dump(recipe, allow_unicode=True), encoding="utf-8")
    assert main(["run", str(path), "--out", str(tmp_path / "one")]) == 0
    ddp, one = _losses(tmp_path / "ddp" / "pretrain-lora"), _losses(tmp_path / "one" / "pretrain-lora")
    assert len(ddp) == 2 and ddp == pytest.approx(one, rel=2e-3)
    assert (tmp_path / "ddp" / "report.md").is_file()

    # Two "nodes" on this machine, one process each, sharing the run directory: the same adapter as one process.
    recipe["pretrain"][0]["batch_size"] = 1
    path.write_text(yaml.safe_dump(recipe, allow_unicode=True), encoding="utf-8")
    port = str(_free_port())
    nodes = [subprocess.Popen([sys.executable, "-m", "langadapt.cli", "run", str(path), "--out", str(tmp_path / "nodes"),
                               "--nproc-per-node", "1", "--nnodes", "2", "--node-rank", str(rank),
                               "--master-addr", "127.0.0.1", "--master-port", port],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
             for rank in (1, 0)]
    try:
        outputs = [node.communicate(timeout=300)[0] for node in nodes]
    except subprocess.TimeoutExpired:
        for node in nodes:  # each node's launcher and training processes too
            os.killpg(node.pid, 9)
        pytest.fail("the two nodes did not finish in 5 minutes:\n" + "\n---\n".join(
            (node.communicate()[0] or "")[-3000:] for node in nodes))
    for node, output in zip(nodes, outputs):
        assert node.returncode == 0, output[-4000:]
    assert "node 0 runs it" in outputs[0] and "node 0 runs it" not in outputs[1]
    from safetensors.torch import load_file

    two = load_file(tmp_path / "nodes" / "pretrain-lora" / "adapter" / "adapter_model.safetensors")
    single = load_file(tmp_path / "one" / "pretrain-lora" / "adapter" / "adapter_model.safetensors")
    assert two.keys() == single.keys()
    for name in single:
        torch.testing.assert_close(two[name], single[name], rtol=1e-3, atol=1e-5)


def test_distributed_combinations_the_libraries_refuse_are_refused_at_plan_time(tiny_recipe, tiny_llama_dir, capsys):
    from langadapt.errors import LangadaptError
    from langadapt.train.launch import DistributedOptions, check_distributed
    from langadapt.train.recipe import PretrainOptions

    lora = PretrainOptions(model=str(tiny_llama_dir), corpus=["x"], out="o", stage="lora")
    assert main(["run", str(tiny_recipe), "--dry-run", "--nproc-per-node", "2", "--strategy", "zero3"]) == 2
    assert "stage embeddings with distributed.strategy zero3" in capsys.readouterr().err
    with pytest.raises(LangadaptError, match="no GPU is visible; use strategy ddp on a CPU"):  # when it runs
        check_distributed(DistributedOptions(strategy="zero2", nproc_per_node="2"), "pretrain-lora", lora, 0)
    assert main(["run", str(tiny_recipe), "--dry-run", "--nproc-per-node", "auto"]) == 2
    assert "auto starts one process per GPU, and no GPU is visible" in capsys.readouterr().err
    assert main(["run", str(tiny_recipe), "--dry-run", "--nnodes", "2", "--node-rank", "2"]) == 2
    assert "node_rank must be between 0 and nnodes-1 (1)" in capsys.readouterr().err


def test_zero3_and_fsdp_refuse_the_stages_that_save_rows(tiny_llama_dir):
    from langadapt.errors import LangadaptError
    from langadapt.train.launch import DistributedOptions, accelerate_config, check_distributed
    from langadapt.train.recipe import PretrainOptions

    lora = PretrainOptions(model=str(tiny_llama_dir), corpus=["x"], out="o", stage="lora")
    for strategy, cite in (("zero3", "transformers#28468"), ("fsdp", "FSDP shards the embedding")):
        with pytest.raises(LangadaptError, match=f"pretrain-lora: stage lora with distributed.strategy {strategy}: "
                                                 f".*{cite}.*use strategy zero2 or ddp"):
            check_distributed(DistributedOptions(strategy=strategy, nproc_per_node="8"), "pretrain-lora", lora, 8)
    full = PretrainOptions(model=str(tiny_llama_dir), corpus=["x"], out="o", stage="full")
    check_distributed(DistributedOptions(strategy="fsdp", nproc_per_node="8"), "pretrain-full", full, 8)
    with pytest.raises(LangadaptError, match="nproc_per_node 8: only 4 GPUs are visible"):
        check_distributed(DistributedOptions(nproc_per_node="8"), "pretrain-full", full, 4)
    two_nodes = accelerate_config(DistributedOptions(strategy="zero3", nproc_per_node="8", nnodes=2, node_rank=1,
                                                     master_addr="10.0.0.1"), 8, "bf16")
    assert (two_nodes["num_processes"], two_nodes["num_machines"], two_nodes["machine_rank"]) == (16, 2, 1)
    assert two_nodes["rdzv_backend"] == "c10d" and two_nodes["main_process_ip"] == "10.0.0.1"
    assert two_nodes["distributed_type"] == "DEEPSPEED" and two_nodes["deepspeed_config"]["zero_stage"] == 3


def test_run_under_an_outside_launcher_without_gpus_says_to_use_nproc_per_node(tiny_recipe, monkeypatch, capsys):
    """Under plain torchrun on a CPU, accelerate sees one process per rank (DistributedType.NO, measured), so
    every rank would run every step: refused, with what to do instead."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["run", str(tiny_recipe), "--dry-run"]) == 2
    assert "use `langadapt run --nproc-per-node N` instead" in capsys.readouterr().err
