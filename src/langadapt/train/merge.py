"""`langadapt merge`: fold a pretrain or sft adapter into a full model directory.

1. Load the base (`--base`, default the `base_source` in the adapter's adaptation.json) and
   check it is the model the adapter was trained on (its fingerprint: shapes and the first
   embedding rows, which `model extend` never changes).
2. If the base has fewer vocabulary rows than the adapter (the un-extended base of an extended
   model), resize it; every row beyond the base's must then be among the adapter's trained rows.
3. Fold in the LoRA weights and the trained rows (trainable tokens or modules_to_save; the
   adapter format is described in `train/adapter.py`).
4. Save a standard model dir (+ tokenizer, adaptation.json) through `atomic_output_dir`.

When the base is a local directory of safetensors shards (the usual case), the merge goes
shard by shard: each shard is read, its LoRA targets get `W + alpha/r * B @ A` (computed in
fp32, stored in the shard's dtype), the embedding/LM-head rows are written, and the shard is
saved before the next is read, so peak memory is about one shard plus the adapter (a 7B model
in 2-5 GB shards fits in ~16 GB). `--in-memory` (or a base that is not a local safetensors dir)
loads the whole model with transformers and merges with peft's `merge_and_unload`.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from langadapt.errors import LangadaptError
from langadapt.model.load import load_model
from langadapt.options import Options, OptionError, embed, option
from langadapt.outputs import ADAPTATION_FILE, OutputOptions, write_adaptation_json
from langadapt.sources import resolve_model_source
from langadapt.tokenizer.load import load_tokenizer
from langadapt.train.adapter import (adapter_tensors, check_base, check_vocabulary, fingerprint, merge_adapter,
                                     module_name, read_adapter)


# ----------------------------------------------------------------------------- shard by shard

def _meta_model(base_dir: Path):
    """The base architecture on the meta device (no weights): parameter names and tying."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(base_dir))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return config, model


def _shards(base_dir: Path) -> tuple[list[str], dict | None]:
    """The safetensors shard file names of a model dir and its index (None for a single file)."""
    index = base_dir / "model.safetensors.index.json"
    if index.is_file():
        data = json.loads(index.read_text(encoding="utf-8"))
        return sorted(set(data["weight_map"].values())), data
    if (base_dir / "model.safetensors").is_file():
        return ["model.safetensors"], None
    raise LangadaptError(f"{base_dir}: no model.safetensors or model.safetensors.index.json")


def merge_by_shard(base_dir: Path, adapter_dir: Path, record: dict, out: Path, dtype: str | None = None) -> dict:
    """Write base + adapter into `out` one safetensors shard at a time; return what was done."""
    from safetensors.torch import load_file, save_file

    config, meta = _meta_model(base_dir)
    emb, head = meta.get_input_embeddings(), meta.get_output_embeddings()
    tied = head is None or head.weight is emb.weight
    emb_name = module_name(meta, emb) + ".weight"
    deltas, scale, rows = adapter_tensors(adapter_dir)
    if tied:  # peft may also save the tied head's copy of the embedding's rows; the shards hold only the embedding
        rows = {n: r for n, r in rows.items() if n == emb_name}
    vocab = record["vocab_rows"]
    shard_names, index = _shards(base_dir)
    used, total_size, base_checked = set(), 0, False
    for shard in shard_names:
        tensors = load_file(str(base_dir / shard))
        for name in list(tensors):
            w = tensors[name]
            target = getattr(torch, dtype) if dtype else w.dtype
            if name == emb_name and not base_checked:
                found = fingerprint(type(meta).__name__, config.get_text_config(), tied, w[:8])
                check_base(record, adapter_dir, tied, found, str(base_dir))
                base_checked = True
            if name in rows:
                w = _with_rows(w, vocab, *rows[name], adapter_dir)
            elif name in deltas:
                a, b = deltas[name]
                w = w.float() + scale * (b.float() @ a.float())
            used.add(name)
            tensors[name] = w.to(target).contiguous()
            total_size += tensors[name].numel() * tensors[name].element_size()
        save_file(tensors, str(out / shard), metadata={"format": "pt"})
        del tensors
    missing = sorted((set(deltas) | set(rows)) - used)
    if missing:
        raise LangadaptError(f"{adapter_dir}: adapter weights for {missing[0]} (and {len(missing) - 1} more) have no "
                             f"matching tensor in {base_dir}")
    if not base_checked:
        raise LangadaptError(f"{base_dir}: no tensor named {emb_name} in its shards")
    if index is not None:
        index = {**index, "metadata": {**index.get("metadata", {}), "total_size": total_size}}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    config.get_text_config().vocab_size = vocab
    if dtype:
        config.dtype = dtype
    config.save_pretrained(out)
    if (base_dir / "generation_config.json").is_file():
        shutil.copyfile(base_dir / "generation_config.json", out / "generation_config.json")
    return {"method": "shard by shard", "shards": len(shard_names), "lora_weights_merged": len(deltas),
            "row_weights_merged": len(rows)}


def _with_rows(w: torch.Tensor, vocab: int, ids: torch.Tensor | None, trained: torch.Tensor, adapter_dir: Path):
    """`w` resized to `vocab` rows (rows it lacks must be trained ones) with the trained rows
    (`ids`; None: all) written in."""
    have = w.shape[0]
    if have != vocab:
        check_vocabulary(adapter_dir, have, vocab, set(range(vocab)) if ids is None else set(ids.tolist()))
        w = torch.cat([w, torch.zeros(vocab - have, w.shape[1], dtype=w.dtype)])
    if ids is None:
        return trained.to(w.dtype)
    w = w.clone()
    w[ids] = trained.to(w.dtype)
    return w


@dataclass
class MergeOptions(Options):
    """Load the base model the adapter was trained on (or --base), resize its vocabulary to the adapter's if
    needed, merge the LoRA weights, write the trained rows and save a standard model dir with the tokenizer and
    adaptation.json. Refuses an adapter whose vocabulary or base model does not match."""

    adapter: str = option(None, metavar="DIR", required=True, help="an adapter dir written by `pretrain` or `sft`")
    output: OutputOptions = embed(OutputOptions)
    base: str | None = option(None, metavar="MODEL", help="base model (default: the one in adaptation.json)")
    dtype: str | None = option(None, help="save in this dtype (default: the base model's)")
    in_memory: bool = option(False, help="load the whole model and merge with peft (default for a local safetensors "
                                         "base: shard by shard, peak memory about one shard)")

    def __post_init__(self):
        super().__post_init__()
        if self.dtype is not None and not isinstance(getattr(torch, self.dtype, None), torch.dtype):
            raise OptionError("dtype", f"unknown dtype '{self.dtype}' (expected e.g. float32, bfloat16)")


def merge_command(opts: MergeOptions) -> int:
    """Write adapter + base as one full model directory."""
    start = time.perf_counter()
    adapter_dir = Path(opts.adapter)
    record = read_adapter(adapter_dir)
    base = opts.base or record.get("base_source")
    if not base:
        raise LangadaptError(f"{adapter_dir}: {ADAPTATION_FILE} names no base model; pass --base")
    tokenizer = load_tokenizer(str(adapter_dir))
    if len(tokenizer) > record["vocab_rows"]:
        raise LangadaptError(f"{adapter_dir}: its tokenizer has {len(tokenizer)} tokens but the adapter only "
                             f"{record['vocab_rows']} rows")
    source = resolve_model_source(base)
    by_shard = not opts.in_memory and isinstance(source, Path) and any(
        (source / n).is_file() for n in ("model.safetensors", "model.safetensors.index.json"))
    with opts.output.directory() as tmp:
        if by_shard:
            report = merge_by_shard(source, adapter_dir, record, tmp, dtype=opts.dtype)
        else:
            model = load_model(str(source), dtype="float32")
            dtype = opts.dtype or str(getattr(model.config, "dtype", None) or "float32").replace("torch.", "")
            model = merge_adapter(model, adapter_dir).to(getattr(torch, dtype))
            model.save_pretrained(tmp)
            report = {"method": "in memory (peft merge_and_unload)"}
        tokenizer.save_pretrained(tmp)
        write_adaptation_json(tmp, "merge", inherit_from=adapter_dir, adapter=str(adapter_dir.resolve()),
                              base=str(base), vocab_rows=record["vocab_rows"], dtype=opts.dtype,
                              seconds=round(time.perf_counter() - start, 1), **report)
    print(json.dumps({"out": str(opts.output.out), "base": str(base), "adapter": str(adapter_dir),
                      "vocab_rows": record["vocab_rows"], **report}, indent=2))
    return 0
