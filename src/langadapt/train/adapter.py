"""The trained embedding and LM-head rows, saved beside a peft adapter.

An adapter dir written by `langadapt pretrain` holds:

- `adapter_config.json` + `adapter_model.safetensors`: the LoRA weights (stage `lora` only),
  written by peft's `save_pretrained`;
- `trained_rows.safetensors`: `row_ids` (int64) and the trained rows of the input embedding
  (`input_embeddings`) and, when untied, of the LM head (`output_embeddings`); all rows, or only
  the rows of the tokens `model extend` added (`new_rows_only`);
- the tokenizer and `adaptation.json` (base model, vocab size, base fingerprint, recipe).

peft's own `modules_to_save` would store whole matrices and does not handle every tied/untied
case the same way; a plain file of rows is small, explicit and works for every stage.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from langadapt.errors import LangadaptError

ROWS_FILE = "trained_rows.safetensors"


def embedding_pair(model):
    """(input embedding weight, LM head weight or None when tied) of a model or peft model."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    emb = base.get_input_embeddings().weight
    head = base.get_output_embeddings()
    if head is None or head.weight.data_ptr() == emb.data_ptr():
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


def save_rows(model, row_ids: list[int] | None, path: str | Path) -> dict:
    """Write the trained rows (`row_ids`, None: all) of `model` to `path`; return what was saved."""
    from safetensors.torch import save_file

    emb, head = embedding_pair(model)
    ids = torch.arange(emb.shape[0]) if row_ids is None else torch.tensor(row_ids, dtype=torch.long)
    tensors = {"row_ids": ids.contiguous(), "input_embeddings": emb.detach()[ids].float().cpu().contiguous()}
    if head is not None:
        tensors["output_embeddings"] = head.detach()[ids].float().cpu().contiguous()
    save_file(tensors, str(path), metadata={"tied": str(head is None), "vocab_rows": str(emb.shape[0])})
    return {"rows": len(ids), "tied": head is None, "vocab_rows": emb.shape[0]}


def load_rows(path: str | Path) -> dict:
    """The tensors and metadata of a trained-rows file."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return {"tied": meta.get("tied") == "True", "vocab_rows": int(meta.get("vocab_rows", 0)), **tensors}


def apply_rows(model, rows: dict, source: str = "trained rows") -> None:
    """Write saved rows into `model`'s embedding (and untied LM head) in place."""
    emb, head = embedding_pair(model)
    if emb.shape[0] != rows["vocab_rows"]:
        raise LangadaptError(f"{source}: saved for a vocabulary of {rows['vocab_rows']} rows but the model has "
                             f"{emb.shape[0]}")
    if rows["tied"] != (head is None):
        raise LangadaptError(f"{source}: saved from a model with {'tied' if rows['tied'] else 'untied'} embeddings "
                             f"but this model's are {'tied' if head is None else 'untied'}")
    ids = rows["row_ids"]
    with torch.no_grad():
        emb[ids] = rows["input_embeddings"].to(emb.dtype).to(emb.device)
        if head is not None:
            head[ids] = rows["output_embeddings"].to(head.dtype).to(head.device)
