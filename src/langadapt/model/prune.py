"""Prune a model's vocabulary to a pruned tokenizer: keep only the rows of the kept tokens.

`tokenizer prune` writes, beside the pruned tokenizer, an `id_map.json`:

    {"old_vocab_size": N, "new_vocab_size": M, "old_to_new": {"<old id>": <new id>, ...}}

New ids must be exactly 0..M-1. The input embedding and LM head rows are gathered in new-id
order (tied weights stay one tensor), the config's vocab size and special-token ids are
remapped, and nothing else in the model changes: the logits of kept tokens are the old ones.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from langadapt.errors import LangadaptError
from langadapt.model.extend import check_resizable, is_tied, token_strings, tokenizer_hash
from langadapt.model.load import MODEL_HELP, load_model
from langadapt.options import Options, embed, option
from langadapt.outputs import OutputOptions, write_adaptation_json
from langadapt.sources import resolve_model_source
from langadapt.tokenizer.load import load_tokenizer

ID_MAP_FILE = "id_map.json"
SPECIAL_ID_FIELDS = ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id", "decoder_start_token_id")


def read_id_map(tokenizer_dir: str | Path) -> tuple[int, dict[int, int]]:
    """Read `id_map.json` from a pruned tokenizer dir: (old vocab size, {old id: new id})."""
    path = Path(tokenizer_dir) / ID_MAP_FILE
    if not path.is_file():
        raise LangadaptError(f"{tokenizer_dir}: no {ID_MAP_FILE}; a pruned tokenizer written by "
                             "`langadapt tokenizer prune` carries one, mapping old token ids to new ones")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        old_size = int(data["old_vocab_size"])
        mapping = {int(k): int(v) for k, v in data["old_to_new"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise LangadaptError(f"{path}: expected {{\"old_vocab_size\": N, \"new_vocab_size\": M, "
                             f"\"old_to_new\": {{\"old id\": new id}}}} ({type(e).__name__}: {e})") from e
    if sorted(mapping.values()) != list(range(len(mapping))):
        raise LangadaptError(f"{path}: the new ids in old_to_new must be exactly 0..{len(mapping) - 1}, each once")
    if "new_vocab_size" in data and int(data["new_vocab_size"]) != len(mapping):
        raise LangadaptError(f"{path}: new_vocab_size is {data['new_vocab_size']} but old_to_new maps "
                             f"{len(mapping)} ids")
    return old_size, mapping


def check_id_map(base_tokenizer, pruned_tokenizer, mapping: dict[int, int], name: str = "tokenizer") -> None:
    """Raise unless every mapped pair holds the same token string in the base and pruned tokenizers."""
    old, new = token_strings(base_tokenizer), token_strings(pruned_tokenizer)
    if len(new) != len(mapping):
        raise LangadaptError(f"{name} has {len(new)} tokens but its {ID_MAP_FILE} maps {len(mapping)}")
    for o, n in sorted(mapping.items()):
        if o >= len(old) or old[o] != new[n]:
            base_str = old[o] if o < len(old) else "<no such id>"
            raise LangadaptError(f"{name}/{ID_MAP_FILE} maps old id {o} ({base_str!r} in the model's tokenizer) "
                                 f"to new id {n}, which is {new[n]!r} in {name}; the map does not belong to "
                                 "this model's tokenizer")


def prune_model(model, mapping: dict[int, int]) -> dict:
    """Keep only the embedding/LM-head rows in `mapping` ({old id: new id}), in new-id order, in place.

    Remaps the special-token ids of the config and generation config; returns a report with
    the parameter counts before and after.
    """
    emb, head = check_resizable(model)
    old_rows = emb.weight.shape[0]
    bad = [o for o in mapping if not 0 <= o < old_rows]
    if bad:
        raise LangadaptError(f"{ID_MAP_FILE} names old id {bad[0]}, but the model has only {old_rows} rows")
    tied = is_tied(model)
    keep = torch.tensor([o for o, _ in sorted(mapping.items(), key=lambda kv: kv[1])])
    new_size = len(keep)

    # Remap special ids first, so a dropped special token stops us before any change.
    configs = [model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config]
    if getattr(model, "generation_config", None) is not None:
        configs.append(model.generation_config)
    remapped: list[tuple[object, str, object]] = []
    for cfg in configs:
        for field in SPECIAL_ID_FIELDS:
            value = getattr(cfg, field, None)
            if value is None:
                continue
            ids = value if isinstance(value, list) else [value]
            missing = [i for i in ids if i not in mapping]
            if missing:
                raise LangadaptError(f"the pruned tokenizer drops token id {missing[0]}, the model's {field}; "
                                     "keep special tokens when pruning")
            new = [mapping[i] for i in ids]
            remapped.append((cfg, field, new if isinstance(value, list) else new[0]))

    params_before = sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        emb.weight = torch.nn.Parameter(emb.weight[keep].clone(), requires_grad=emb.weight.requires_grad)
        emb.num_embeddings = new_size
        if emb.padding_idx is not None:
            emb.padding_idx = mapping.get(emb.padding_idx)
        if tied:
            head.weight = emb.weight
        else:
            head.weight = torch.nn.Parameter(head.weight[keep].clone(), requires_grad=head.weight.requires_grad)
        if getattr(head, "bias", None) is not None:
            head.bias = torch.nn.Parameter(head.bias[keep].clone(), requires_grad=head.bias.requires_grad)
        if isinstance(head, torch.nn.Linear):
            head.out_features = new_size
        else:
            head.num_embeddings = new_size
    for cfg, field, value in remapped:
        setattr(cfg, field, value)
    configs[0].vocab_size = new_size
    if hasattr(model, "vocab_size"):
        model.vocab_size = new_size
    params_after = sum(p.numel() for p in model.parameters())
    return {
        "tied_embeddings": tied,
        "old_vocab_size": old_rows,
        "new_vocab_size": new_size,
        "parameters_before": params_before,
        "parameters_after": params_after,
        "parameters_kept": round(params_after / params_before, 4),
    }


@dataclass
class ModelPruneOptions(Options):
    """Slice the embedding and LM-head rows with the id_map.json written by `tokenizer prune`, remap the
    special-token ids in the config and write a standard model directory; prints the parameters before
    and after."""

    base: str = option(None, metavar="MODEL", required=True, help=MODEL_HELP)
    tokenizer: str = option(None, metavar="DIR", required=True, help="the pruned tokenizer (with id_map.json)")
    output: OutputOptions = embed(OutputOptions)


def model_prune_command(opts: ModelPruneOptions) -> int:
    """Write the base model with only the pruned tokenizer's rows."""
    start = time.perf_counter()
    opts.output.check_free()
    old_size, mapping = read_id_map(opts.tokenizer)
    base_source = resolve_model_source(opts.base)
    base_tokenizer = load_tokenizer(str(base_source))
    pruned_tokenizer = load_tokenizer(opts.tokenizer)
    check_id_map(base_tokenizer, pruned_tokenizer, mapping, name=str(opts.tokenizer))
    model = load_model(str(base_source))
    report = prune_model(model, mapping)
    if old_size not in (report["old_vocab_size"], len(base_tokenizer)):
        raise LangadaptError(f"{opts.tokenizer}/{ID_MAP_FILE}: old_vocab_size is {old_size} but the model has "
                             f"{report['old_vocab_size']} rows and its tokenizer {len(base_tokenizer)} tokens")

    with opts.output.directory() as tmp:
        model.save_pretrained(tmp)
        pruned_tokenizer.save_pretrained(tmp)
        (tmp / ID_MAP_FILE).write_bytes((Path(opts.tokenizer) / ID_MAP_FILE).read_bytes())
        write_adaptation_json(tmp, "model-prune", inherit_from=opts.tokenizer, base=str(opts.base),
                              base_source=str(base_source), tokenizer=str(opts.tokenizer),
                              tokenizer_sha256=tokenizer_hash(opts.tokenizer),
                              seconds=round(time.perf_counter() - start, 1), **report)
    before, after = report["parameters_before"], report["parameters_after"]
    print(json.dumps({"out": str(opts.output.out), "old_vocab_size": report["old_vocab_size"],
                      "new_vocab_size": report["new_vocab_size"], "parameters_before": before,
                      "parameters_after": after, "parameters_kept": f"{100 * after / before:.1f}%"}, indent=2))
    return 0
