"""An adapter on disk, in peft's own format: create, save, read, load onto a base, merge.

`langadapt pretrain` and `sft` (stages `embeddings` and `lora`) write `<out>/adapter`, a peft
adapter dir (`adapter_config.json` + `adapter_model.safetensors`) plus the tokenizer and
`adaptation.json` (base fingerprint, vocabulary rows, recipe, lineage). Plain
`PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter_dir)` gives the
same logits as `langadapt merge`. What each stage stores (peft fields):

- stage embeddings (new rows or all rows):
  `TrainableTokensConfig(token_indices=ROWS, target_modules=[EMB(, HEAD)])`;
- stage lora, new rows: `LoraConfig(target_modules=..., trainable_token_indices={EMB: ROWS(, HEAD: ROWS)})`;
- stage lora, all rows: `LoraConfig(target_modules=..., modules_to_save=[EMB(, HEAD)], ensure_weight_tying=TIED)`;
- new input rows + the whole LM head (`new_input_rows_only`, EEVE; untied only):
  `LoraConfig(target_modules=..., trainable_token_indices={EMB: ROWS}, modules_to_save=[HEAD])`, where stage
  embeddings has no LoRA: peft's `target_modules="dummy-target-modules"` (a LoRA config without LoRA layers).

The LM head is named only when it is untied; a tied head follows the embedding (peft ties its
wrapper to the embedding's, and a merge keeps the two tied). Trainable tokens store the trained
rows' values (`trainable_tokens_delta`), modules_to_save whole matrices.

What peft cannot express makes training fail before anything is written (an LM head with a bias,
which trainable tokens would drop; tying that peft does not see). Merging onto the un-extended
base of an extended model (`langadapt merge --base`) resizes it first: plain peft refuses that
base (its trainable-token indices or saved matrices do not fit the smaller vocabulary).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from langadapt.errors import LangadaptError
from langadapt.outputs import ADAPTATION_FILE, atomic_output_dir, read_adaptation_json, write_adaptation_json

PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
ADAPTER_STEPS = ("pretrain-embeddings", "pretrain-lora", "sft-embeddings", "sft-lora")
_PREFIX = "base_model.model."  # peft's prefix of a saved weight name


# ----------------------------------------------------------------------------- the base model

def embedding_pair(model):
    """(input embedding weight, LM head weight or None when tied) of a plain transformers model."""
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    if head is None or head.weight is emb:
        return emb, None
    return emb, head.weight


def base_fingerprint(model) -> str:
    """A short hash of a base model's identity: shapes and its first 8 embedding rows.

    The first rows are never new tokens, so an extended model and its base share them; a
    different base (another checkpoint, another size) does not.
    """
    emb, head = embedding_pair(model)
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return fingerprint(type(model).__name__, cfg, head is None, emb.detach()[:8])


def fingerprint(class_name: str, text_config, tied: bool, first_rows: torch.Tensor) -> str:
    """The hash behind `base_fingerprint`, from the pieces (so a merge can compute it without
    materialising the model)."""
    h = hashlib.sha256()
    h.update(json.dumps([class_name, text_config.hidden_size, text_config.num_hidden_layers, tied]).encode())
    h.update(first_rows.float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def base_facts(model) -> dict:
    """What an adapter records about its base (before it is wrapped): fingerprint, rows, tying."""
    emb, head = embedding_pair(model)
    return {"base_fingerprint": base_fingerprint(model), "vocab_rows": emb.shape[0], "tied_embeddings": head is None}


def check_base(record: dict, adapter_dir, tied: bool, found_fingerprint: str, base_name: str) -> None:
    """Refuse a base the adapter was not trained on (tying, then the fingerprint)."""
    if record.get("tied_embeddings") is not None and record["tied_embeddings"] != tied:
        raise LangadaptError(f"{adapter_dir} was trained with {'tied' if record['tied_embeddings'] else 'untied'} "
                             f"embeddings but {base_name} has {'tied' if tied else 'untied'} ones")
    if found_fingerprint != record["base_fingerprint"]:
        raise LangadaptError(f"{adapter_dir} was trained on a different base model ({record.get('base_source')}, "
                             f"fingerprint {record['base_fingerprint']}); {base_name} has {found_fingerprint}")


def module_name(model, module) -> str:
    """The name of `module` within `model`."""
    return next(n for n, m in model.named_modules(remove_duplicate=False) if m is module)


def embedding_modules(model) -> tuple[str, str | None]:
    """Module names of the input embedding and of the LM head (None when tied) of a plain model."""
    emb, head = embedding_pair(model)
    return (module_name(model, model.get_input_embeddings()),
            None if head is None else module_name(model, model.get_output_embeddings()))


# ----------------------------------------------------------------------------- create

def new_adapter(model, rows: list[int] | None, lora: dict | None = None, whole_head: bool = False):
    """`model` wrapped in a new trainable peft adapter: the embedding and untied LM head rows
    `rows` (None: all rows) train, plus LoRA with the `LoraConfig` options `lora` (None: stage
    embeddings, no LoRA). With `whole_head`, only the input embedding's `rows` train and the
    whole (untied) LM head does (EEVE). Every base weight is frozen."""
    from peft import LoraConfig, TrainableTokensConfig, get_peft_model

    emb_name, head_name = embedding_modules(model)
    head = model.get_output_embeddings()
    tied = head_name is None
    said = getattr(model.config, "tie_word_embeddings", False)
    if tied != bool(said):  # peft ties by the config
        raise LangadaptError(f"{type(model).__name__}: its embeddings are {'tied' if tied else 'untied'} but its "
                             f"config says tie_word_embeddings {said}; peft would store them wrongly")
    if whole_head:
        if tied or rows is None:
            raise LangadaptError("new_input_rows_only needs an untied LM head and the added rows")
        from peft.utils.constants import DUMMY_TARGET_MODULES

        lora = lora or dict(target_modules=DUMMY_TARGET_MODULES)  # stage embeddings: no LoRA layers
        config = LoraConfig(**lora, trainable_token_indices={emb_name: list(rows)}, modules_to_save=[head_name],
                            task_type="CAUSAL_LM")
        wrapped = get_peft_model(model, config)
        _check_rows_wrapped(wrapped)
        return wrapped
    if head is not None and getattr(head, "bias", None) is not None and (lora is None or rows is not None):
        raise LangadaptError(f"{type(model).__name__}: its LM head has a bias, which peft's trainable tokens drop; "
                             "use stage lora without new_rows_only, or stage full")
    modules = [emb_name] if tied else [emb_name, head_name]
    if lora is None:
        token_rows = list(range(model.get_input_embeddings().weight.shape[0])) if rows is None else list(rows)
        config = TrainableTokensConfig(token_indices=token_rows, target_modules=modules, task_type="CAUSAL_LM")
    elif rows is None:
        config = LoraConfig(**lora, modules_to_save=modules, ensure_weight_tying=tied, task_type="CAUSAL_LM")
    else:
        config = LoraConfig(**lora, trainable_token_indices={m: list(rows) for m in modules}, task_type="CAUSAL_LM")
    wrapped = get_peft_model(model, config)
    _check_rows_wrapped(wrapped)
    return wrapped


def _check_rows_wrapped(peft_model) -> None:
    """Both the embedding and the LM head (tied or not) must be peft wrappers, or training would
    update a matrix that the saved adapter does not restore."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import AuxiliaryTrainingWrapper

    base = peft_model.get_base_model()
    for module in (base.get_input_embeddings(), base.get_output_embeddings()):
        if not isinstance(module, (BaseTunerLayer, AuxiliaryTrainingWrapper)):
            raise LangadaptError(f"peft did not wrap {type(module).__name__} of {type(base).__name__} (tied weights "
                                 "it does not recognise?); its trained rows could not be saved as a peft adapter")


def adapter_format(peft_model) -> str:
    """How the adapter stores its rows: trainable_tokens, lora+trainable_tokens, lora+modules_to_save,
    or (new input rows + whole LM head) [lora+]trainable_tokens+modules_to_save."""
    from peft.utils.constants import DUMMY_TARGET_MODULES

    config = peft_model.peft_config["default"]
    if config.peft_type.value == "TRAINABLE_TOKENS":
        return "trainable_tokens"
    lora = "" if config.target_modules == DUMMY_TARGET_MODULES else "lora+"
    if config.trainable_token_indices and config.modules_to_save:
        return lora + "trainable_tokens+modules_to_save"
    return "lora+trainable_tokens" if config.trainable_token_indices else "lora+modules_to_save"


# ----------------------------------------------------------------------------- save and read

def save_adapter(peft_model, tokenizer, out_dir, step: str, inherit_from=None, **info) -> None:
    """Write `out_dir` atomically: the peft adapter, the tokenizer and adaptation.json (`step`,
    `info`, and the record of `inherit_from`, the model it was trained from, as history).
    `info` must hold `base_facts` of the base."""
    with atomic_output_dir(out_dir, overwrite=True) as tmp:
        peft_model.save_pretrained(tmp, save_embedding_layers=False)
        tokenizer.save_pretrained(tmp)
        write_adaptation_json(tmp, step, inherit_from=inherit_from, adapter_format=adapter_format(peft_model), **info)


def read_adapter(adapter_dir) -> dict:
    """The adaptation.json record of an adapter dir written by `pretrain` or `sft`, with a clear
    error when the dir is not one."""
    adapter_dir = Path(adapter_dir)
    record = read_adaptation_json(adapter_dir)
    if not record:
        raise LangadaptError(f"{adapter_dir}: no {ADAPTATION_FILE}; expected an adapter dir written by "
                             "`langadapt pretrain` or `sft` (<out>/adapter)")
    if record.get("step") not in ADAPTER_STEPS:
        raise LangadaptError(f"{adapter_dir}: {ADAPTATION_FILE} says step '{record.get('step')}', not an adapter of "
                             "`pretrain` or `sft` (stage full writes a whole model, which needs no merge)")
    if not (adapter_dir / PEFT_CONFIG).is_file() or not (adapter_dir / PEFT_WEIGHTS).is_file():
        old = " (trained_rows.safetensors: written by an older langadapt; train it again)" if (
            adapter_dir / "trained_rows.safetensors").is_file() else ""
        raise LangadaptError(f"{adapter_dir}: {PEFT_CONFIG} or {PEFT_WEIGHTS} is missing; not a complete peft "
                             f"adapter{old}")
    return record


def adapter_tensors(adapter_dir) -> tuple[dict, float, dict]:
    """The saved weights by the base weight they change: (LoRA {name: (A, B)}, LoRA scale,
    rows {name: (row ids or None for all rows, values)}). Raises on what it does not know."""
    from safetensors.torch import load_file

    adapter_dir = Path(adapter_dir)
    config = json.loads((adapter_dir / PEFT_CONFIG).read_text(encoding="utf-8"))
    kind = config.get("peft_type")
    unsupported = [k for k in ("use_dora", "alpha_pattern", "rank_pattern", "fan_in_fan_out", "target_parameters")
                   if config.get(k)] + (["bias"] if config.get("bias", "none") != "none" else [])
    if kind not in ("LORA", "TRAINABLE_TOKENS") or unsupported:
        raise LangadaptError(f"{adapter_dir}: peft type {kind} {unsupported or ''} is not handled shard by shard; "
                             "merge with --in-memory")
    scale = (config["lora_alpha"] / (config["r"] ** 0.5 if config.get("use_rslora") else config["r"])
             if kind == "LORA" else 0.0)
    token_rows = config.get("trainable_token_indices") or {}  # LoRA: {module: rows}
    pairs: dict[str, dict] = {}
    rows: dict[str, tuple] = {}
    for key, tensor in load_file(str(adapter_dir / PEFT_WEIGHTS)).items():
        name = key.removeprefix(_PREFIX)
        part = next((p for p in ("lora_A", "lora_B") if f".{p}." in name), None)
        if part:
            pairs.setdefault(name.replace(f".{part}.weight", ".weight"), {})[part] = tensor
        elif name.endswith("trainable_tokens_delta"):
            module = name.removesuffix(".trainable_tokens_delta").removesuffix(".token_adapter")
            ids = config["token_indices"] if kind == "TRAINABLE_TOKENS" else next(  # one list for every module
                (v for m, v in token_rows.items() if module == m or module.endswith("." + m)), None)
            if ids is None:
                raise LangadaptError(f"{adapter_dir}: {key} has no token indices in {PEFT_CONFIG}")
            rows[module + ".weight"] = (torch.tensor(ids, dtype=torch.long), tensor)
        elif name.endswith(".weight") and config.get("modules_to_save"):
            rows[name] = (None, tensor)
        else:
            raise LangadaptError(f"{adapter_dir}: unknown adapter weight {key}; merge with --in-memory")
    return {n: (p["lora_A"], p["lora_B"]) for n, p in pairs.items()}, scale, rows


def trained_row_ids(adapter_dir, vocab_rows: int) -> set[int]:
    """The embedding rows an adapter holds values for (every row with modules_to_save)."""
    _, _, rows = adapter_tensors(adapter_dir)
    ids: set[int] = set()
    for row_ids, _ in rows.values():
        ids |= set(range(vocab_rows)) if row_ids is None else set(row_ids.tolist())
    return ids


def check_vocabulary(adapter_dir, have: int, vocab: int, trained: set[int]) -> None:
    """A base of `have` rows takes an adapter of `vocab` rows only if the rows it lacks were trained."""
    if have > vocab:
        raise LangadaptError(f"the base has {have} vocabulary rows but {adapter_dir} was trained with {vocab}; "
                             "use the base it was trained on")
    missing = [i for i in range(have, vocab) if i not in trained]
    if missing:
        raise LangadaptError(f"the base has {have} vocabulary rows, the adapter {vocab}, and rows {missing[0]}.. "
                             "were not trained, so they cannot be rebuilt; pass --base the extended model")


# ----------------------------------------------------------------------------- load and merge

def load_adapter(model, adapter_dir, trainable: bool = False):
    """`model` (the adapter's base, checked by fingerprint) with the adapter at `adapter_dir` loaded
    as a peft model; `trainable` to keep training it. The un-extended base of an extended model is
    resized first when every row it lacks was trained."""
    from peft import PeftModel

    record = read_adapter(adapter_dir)
    emb, head = embedding_pair(model)
    check_base(record, adapter_dir, head is None, base_fingerprint(model), "this base")
    have, vocab = emb.shape[0], record["vocab_rows"]
    if have != vocab:
        check_vocabulary(adapter_dir, have, vocab, trained_row_ids(adapter_dir, vocab))
        model.resize_token_embeddings(vocab, mean_resizing=False)
    return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=trainable)


def merge_adapter(model, adapter_dir):
    """`model` with the adapter at `adapter_dir` folded in: a plain transformers model."""
    return load_adapter(model, adapter_dir).merge_and_unload()
