"""`langadapt merge`: fold a pretrain or sft adapter into a full model directory.

1. Load the base (`--base`, default the `base_source` in the adapter's adaptation.json) and
   check it is the model the adapter was trained on (its fingerprint: shapes and the first
   embedding rows, which `model extend` never changes).
2. If the base has fewer vocabulary rows than the adapter (the un-extended base of an extended
   model), resize it; every row beyond the base's must then be among the saved trained rows.
3. Merge the LoRA weights (peft `merge_and_unload`) and write the trained rows.
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
from langadapt.outputs import OutputOptions, write_adaptation_json
from langadapt.sources import resolve_model_source
from langadapt.tokenizer.load import load_tokenizer
from langadapt.train.adapter import ROWS_FILE, apply_rows, base_fingerprint, fingerprint, load_rows

PEFT_CONFIG = "adapter_config.json"


def read_adapter(adapter_dir: str | Path) -> dict:
    """The pretrain/sft record of an adapter dir (its adaptation.json), with a clear error if it is not one."""
    adapter_dir = Path(adapter_dir)
    path = adapter_dir / "adaptation.json"
    if not path.is_file():
        raise LangadaptError(f"{adapter_dir}: no adaptation.json; expected an adapter dir written by "
                             "`langadapt pretrain` (<out>/adapter)")
    record = json.loads(path.read_text(encoding="utf-8"))
    if record.get("step") not in ("pretrain-embeddings", "pretrain-lora", "sft-embeddings", "sft-lora"):
        raise LangadaptError(f"{adapter_dir}: adaptation.json says step '{record.get('step')}', not an adapter of "
                             "`pretrain` or `sft` (stage full writes a whole model, which needs no merge)")
    if not (adapter_dir / ROWS_FILE).is_file():
        raise LangadaptError(f"{adapter_dir}: {ROWS_FILE} is missing; the adapter is incomplete")
    return record


def merge_adapter(base_model, adapter_dir: str | Path, record: dict):
    """Return `base_model` with the adapter at `adapter_dir` folded in (a plain transformers model)."""
    adapter_dir = Path(adapter_dir)
    fingerprint = base_fingerprint(base_model)
    if fingerprint != record["base_fingerprint"]:
        raise LangadaptError(f"{adapter_dir} was trained on a different base model ({record.get('base_source')}, "
                             f"fingerprint {record['base_fingerprint']}); this base has fingerprint {fingerprint}")
    rows = load_rows(adapter_dir / ROWS_FILE)
    vocab = rows["vocab_rows"]
    have = base_model.get_input_embeddings().weight.shape[0]
    if have > vocab:
        raise LangadaptError(f"the base has {have} vocabulary rows but {adapter_dir} was trained with {vocab}; "
                             "use the base it was trained on")
    if have < vocab:
        ids = set(rows["row_ids"].tolist())
        missing = [i for i in range(have, vocab) if i not in ids]
        if missing:
            raise LangadaptError(f"the base has {have} vocabulary rows, the adapter {vocab}, and rows {missing[0]}.. "
                                 "were not trained, so they cannot be rebuilt; pass --base the extended model")
        base_model.resize_token_embeddings(vocab, mean_resizing=False)
    model = base_model
    if (adapter_dir / PEFT_CONFIG).is_file():
        from peft import PeftModel

        model = PeftModel.from_pretrained(base_model, str(adapter_dir)).merge_and_unload()
    apply_rows(model, rows, str(adapter_dir / ROWS_FILE))
    return model


# ----------------------------------------------------------------------------- shard by shard

def _meta_model(base_dir: Path):
    """The base architecture on the meta device (no weights): parameter names and tying."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(base_dir))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return config, model


def _param_name(model, param) -> str:
    return next(n for n, p in model.named_parameters(remove_duplicate=False) if p is param)


def _shards(base_dir: Path) -> tuple[list[str], dict | None]:
    """The safetensors shard file names of a model dir and its index (None for a single file)."""
    index = base_dir / "model.safetensors.index.json"
    if index.is_file():
        data = json.loads(index.read_text(encoding="utf-8"))
        return sorted(set(data["weight_map"].values())), data
    if (base_dir / "model.safetensors").is_file():
        return ["model.safetensors"], None
    raise LangadaptError(f"{base_dir}: no model.safetensors or model.safetensors.index.json")


def lora_deltas(adapter_dir: Path) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], float]:
    """{base weight name: (A, B)} of a peft LoRA adapter and its scale (alpha/r, or alpha/sqrt(r))."""
    from safetensors.torch import load_file

    cfg = json.loads((adapter_dir / PEFT_CONFIG).read_text(encoding="utf-8"))
    unsupported = [k for k in ("use_dora", "alpha_pattern", "rank_pattern", "fan_in_fan_out", "modules_to_save")
                   if cfg.get(k)] + (["bias"] if cfg.get("bias", "none") != "none" else [])
    if unsupported:
        raise LangadaptError(f"{adapter_dir}: LoRA options {unsupported} are not handled shard by shard; "
                             "merge with --in-memory")
    scale = cfg["lora_alpha"] / (cfg["r"] ** 0.5 if cfg.get("use_rslora") else cfg["r"])
    pairs: dict[str, dict] = {}
    for key, tensor in load_file(str(adapter_dir / "adapter_model.safetensors")).items():
        for part in ("lora_A", "lora_B"):
            if f".{part}." in key:
                name = key.removeprefix("base_model.model.").replace(f".{part}.weight", ".weight")
                pairs.setdefault(name, {})[part] = tensor
    return {n: (p["lora_A"], p["lora_B"]) for n, p in pairs.items()}, scale


def merge_by_shard(base_dir: Path, adapter_dir: Path, record: dict, out: Path, dtype: str | None = None) -> dict:
    """Write base + adapter into `out` one safetensors shard at a time; return what was done."""
    from safetensors.torch import load_file, save_file

    config, meta = _meta_model(base_dir)
    emb = meta.get_input_embeddings().weight
    head = meta.get_output_embeddings()
    tied = head is None or head.weight is emb
    emb_name = _param_name(meta, emb)
    head_name = None if tied else _param_name(meta, head.weight)
    rows = load_rows(adapter_dir / ROWS_FILE)
    if rows["tied"] != tied:
        raise LangadaptError(f"{adapter_dir} was trained with {'tied' if rows['tied'] else 'untied'} embeddings but "
                             f"{base_dir} has {'tied' if tied else 'untied'} ones")
    deltas, scale = lora_deltas(adapter_dir) if (adapter_dir / PEFT_CONFIG).is_file() else ({}, 0.0)
    vocab, ids = rows["vocab_rows"], rows["row_ids"]
    shard_names, index = _shards(base_dir)
    used, total_size, fingerprint_checked = set(), 0, False
    for shard in shard_names:
        tensors = load_file(str(base_dir / shard))
        for name in list(tensors):
            w = tensors[name]
            target = getattr(torch, dtype) if dtype else w.dtype
            if name == emb_name and not fingerprint_checked:
                _check_fingerprint(meta, config, w, record, adapter_dir, base_dir)
                fingerprint_checked = True
            if name in (emb_name, head_name):
                w = _with_rows(w, vocab, ids, rows["input_embeddings" if name == emb_name else "output_embeddings"],
                               adapter_dir)
            elif name in deltas:
                a, b = deltas[name]
                w = w.float() + scale * (b.float() @ a.float())
                used.add(name)
            tensors[name] = w.to(target).contiguous()
            total_size += tensors[name].numel() * tensors[name].element_size()
        save_file(tensors, str(out / shard), metadata={"format": "pt"})
        del tensors
    missing = sorted(set(deltas) - used)
    if missing:
        raise LangadaptError(f"{adapter_dir}: LoRA weights for {missing[0]} (and {len(missing) - 1} more) have no "
                             f"matching tensor in {base_dir}")
    if not fingerprint_checked:
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
    return {"method": "shard by shard", "shards": len(shard_names), "lora_weights_merged": len(used)}


def _check_fingerprint(meta, config, emb_weight, record, adapter_dir, base_dir) -> None:
    head = meta.get_output_embeddings()
    tied = head is None or head.weight is meta.get_input_embeddings().weight
    found = fingerprint(type(meta).__name__, config.get_text_config(), tied, emb_weight[:8])
    if found != record["base_fingerprint"]:
        raise LangadaptError(f"{adapter_dir} was trained on a different base model ({record.get('base_source')}, "
                             f"fingerprint {record['base_fingerprint']}); {base_dir} has {found}")


def _with_rows(w: torch.Tensor, vocab: int, ids: torch.Tensor, trained: torch.Tensor, adapter_dir: Path):
    """`w` resized to `vocab` rows (new rows must be trained ones) with the trained rows written in."""
    have = w.shape[0]
    if have > vocab:
        raise LangadaptError(f"the base has {have} vocabulary rows but {adapter_dir} was trained with {vocab}; "
                             "use the base it was trained on")
    if have < vocab:
        known = set(ids.tolist())
        missing = [i for i in range(have, vocab) if i not in known]
        if missing:
            raise LangadaptError(f"the base has {have} vocabulary rows, the adapter {vocab}, and rows {missing[0]}.. "
                                 "were not trained, so they cannot be rebuilt; pass --base the extended model")
        w = torch.cat([w, torch.zeros(vocab - have, w.shape[1], dtype=w.dtype)])
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
        raise LangadaptError(f"{adapter_dir}: adaptation.json names no base model; pass --base")
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
            model = merge_adapter(model, adapter_dir, record).to(getattr(torch, dtype))
            model.save_pretrained(tmp)
            report = {"method": "in memory (peft merge_and_unload)"}
        tokenizer.save_pretrained(tmp)
        shutil.copyfile(adapter_dir / "adaptation.json", tmp / "adaptation.json")
        write_adaptation_json(tmp, "merge", adapter=str(adapter_dir.resolve()), base=str(base),
                              vocab_rows=record["vocab_rows"], dtype=opts.dtype,
                              seconds=round(time.perf_counter() - start, 1), **report)
    print(json.dumps({"out": str(opts.output.out), "base": str(base), "adapter": str(adapter_dir),
                      "vocab_rows": record["vocab_rows"], **report}, indent=2))
    return 0
