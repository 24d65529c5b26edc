"""Training on several processes and nodes: `run --nproc-per-node N` (or a recipe's `distributed:`
section) launches each training step through `accelerate launch` with a config generated here;
every other step runs once, in the `run` process.

- `DistributedOptions`: the strategy (ddp, zero2, zero3, fsdp), processes per node, nodes, this
  node's rank and the rendezvous address (c10d, so the same command runs on every node).
- `check_distributed`: the combinations the libraries do not support, refused at plan time with the
  recipe field named and what to use instead.
- `accelerate_config`: the accelerate config file of a strategy (the examples in
  configs/accelerate/ are what it writes for 8 GPUs).
- `launched_from_outside`: `run` itself started by torchrun, srun or `accelerate launch`
  (WORLD_SIZE set): training steps then run in-process, with no second launch.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from langadapt.errors import LangadaptError
from langadapt.options import Options, OptionError, option

STRATEGIES = ("ddp", "zero2", "zero3", "fsdp")
ZERO_STAGES = {"ddp": 0, "zero2": 2, "zero3": 3, "fsdp": 3}  # how the memory plan shards each


@dataclass
class DistributedOptions(Options):
    """How `run` trains on several processes: a recipe's `distributed:` section, or run's --nproc-per-node,
    --nnodes, ... (the command line wins)."""

    strategy: str = option("ddp", choices=STRATEGIES,
                           help="ddp (every process holds the whole model; CPU or GPU), zero2 (DeepSpeed ZeRO-2: "
                                "optimizer state and gradients sharded; GPUs, needs deepspeed), zero3 (also the "
                                "weights; stage full only) or fsdp (PyTorch FSDP full shard; stage full only)")
    nproc_per_node: str = option("1", metavar="N|auto", help="training processes per node: a number, or auto (one "
                                                              "per visible GPU)")
    nnodes: int = option(1, help="nodes; run the same command on each, with its own --node-rank")
    node_rank: int = option(0, help="this node's rank, 0 .. nnodes-1")
    master_addr: str = option("127.0.0.1", metavar="HOST", help="address of node 0 (the c10d rendezvous)")
    master_port: int = option(29500, help="a free port on node 0")

    def __post_init__(self):
        super().__post_init__()
        if self.nproc_per_node != "auto" and not (str(self.nproc_per_node).isdigit() and int(self.nproc_per_node) > 0):
            raise OptionError("nproc_per_node", f"must be a positive number or auto, got {self.nproc_per_node}")
        if self.nnodes < 1:
            raise OptionError("nnodes", f"must be at least 1, got {self.nnodes}")
        if not 0 <= self.node_rank < self.nnodes:
            raise OptionError("node_rank", f"must be between 0 and nnodes-1 ({self.nnodes - 1}), got {self.node_rank}")
        if not 1 <= self.master_port <= 65535:
            raise OptionError("master_port", f"must be a port number, got {self.master_port}")

    def processes_per_node(self, gpus: int) -> int:
        """The processes each node starts (`auto`: one per visible GPU)."""
        if self.nproc_per_node == "auto":
            if gpus == 0:
                raise LangadaptError("distributed.nproc_per_node: auto starts one process per GPU, and no GPU is "
                                     "visible; give a number (on a CPU, processes share its cores)")
            return gpus
        return int(self.nproc_per_node)

    def world_size(self, gpus: int) -> int:
        return self.processes_per_node(gpus) * self.nnodes


def visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_distributed(dist: DistributedOptions, step: str, options, gpus: int, plan_only: bool = False) -> None:
    """Refuse what the libraries cannot do, naming the recipe field and what to use instead. With
    `plan_only` (a dry run, perhaps on a laptop planning for a GPU machine) this machine's GPUs are
    not asked for."""
    if not plan_only:
        per_node = dist.processes_per_node(gpus)
        if dist.strategy in ("zero2", "zero3", "fsdp") and gpus == 0:
            raise LangadaptError(f"distributed.strategy {dist.strategy}: accelerate enables DeepSpeed and FSDP on "
                                 "GPUs only, and no GPU is visible; use strategy ddp on a CPU")
        if gpus and per_node > gpus:
            raise LangadaptError(f"distributed.nproc_per_node {per_node}: only {gpus} GPUs are visible on this node")
    if dist.strategy in ("zero3", "fsdp") and options.stage != "full":
        why = ("peft's trainable copies of the embeddings and LM head (modules_to_save) break under ZeRO-3 "
               "(transformers#28468, peft#2450) and trainable token rows fail at save time (peft#2946)"
               if dist.strategy == "zero3" else
               "FSDP shards the embedding and LM head whose rows langadapt saves from each process's parameters")
        raise LangadaptError(f"{step}: stage {options.stage} with distributed.strategy {dist.strategy}: {why}; use "
                             "strategy zero2 or ddp (each GPU holds the frozen base), or stage full")
    if dist.strategy == "zero2" and not plan_only:
        import importlib.util

        if importlib.util.find_spec("deepspeed") is None:
            raise LangadaptError("distributed.strategy zero2 needs DeepSpeed: pip install deepspeed")


def accelerate_config(dist: DistributedOptions, gpus: int, mixed_precision: str = "no") -> dict:
    """The accelerate config file (a mapping) that launches `dist`'s processes on this node."""
    config = {"compute_environment": "LOCAL_MACHINE", "distributed_type": "MULTI_GPU",
              "num_machines": dist.nnodes, "num_processes": dist.world_size(gpus), "machine_rank": dist.node_rank,
              "main_process_ip": dist.master_addr, "main_process_port": dist.master_port,
              "rdzv_backend": "c10d" if dist.nnodes > 1 else "static", "same_network": True,
              # MULTI_GPU on a CPU too: torch.distributed then uses gloo (accelerate's MULTI_CPU wants MPI)
              "mixed_precision": mixed_precision, "use_cpu": False}
    if dist.strategy in ("zero2", "zero3"):
        stage = ZERO_STAGES[dist.strategy]
        config["distributed_type"] = "DEEPSPEED"
        config["deepspeed_config"] = {"zero_stage": stage, "offload_optimizer_device": "none",
                                      "offload_param_device": "none", "gradient_accumulation_steps": "auto",
                                      "gradient_clipping": "auto", "zero3_init_flag": stage == 3,
                                      "zero3_save_16bit_model": stage == 3}
    elif dist.strategy == "fsdp":
        config["distributed_type"] = "FSDP"
        config["fsdp_config"] = {"fsdp_version": 2, "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
                                 "fsdp_cpu_ram_efficient_loading": True, "fsdp_offload_params": False,
                                 "fsdp_reshard_after_forward": True, "fsdp_state_dict_type": "FULL_STATE_DICT",
                                 "fsdp_use_orig_params": True}
    return config


def launch_argv(config_file: Path, command: str, recipe_file: Path, dist: DistributedOptions) -> list[str]:
    """`accelerate launch` of one training step (`command`: pretrain or sft) from its recipe file. With
    several nodes, node 0 hosts the c10d store: said explicitly, since torch guesses it from the
    hostname, which every node shares when they are processes of one machine."""
    host = ["--rdzv_conf", f"is_host={int(dist.node_rank == 0)}"] if dist.nnodes > 1 else []
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_file), *host,
            "-m", "langadapt.cli", command, "--config", str(recipe_file)]


def launched_from_outside() -> bool:
    """This process is one rank of a launch made outside `run` (torchrun, srun, accelerate launch)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1
