"""The order `pretrain` reads its packed blocks in (`block_order`): a curriculum, easy to hard.

- `loss`: ascending mean token loss of the start model on each block (`block_losses`), computed
  once, with a progress bar, and cached next to the block cache as `block-loss-<key>.npy`, keyed
  by the block files, `block_size` and the start model's directory fingerprint (`model_fingerprint`);
- `length`: ascending token-weighted mean length of the documents a block's tokens belong to
  (`document_length_per_block`): a block inside one long document scores that document's
  length, a block of many short documents a small number, so short documents come first.

A budget below one pass over the corpus reads only some blocks. `budget_blocks` draws them at
random (seeded), as the shuffled order would, and the curriculum orders those: sorting the whole
corpus and stopping at the budget would change *which* text is read (only the easiest blocks), and a
comparison with `shuffled` would measure that selection, not the order. Only those blocks are
scored by the loss, so a curriculum of a small budget costs a small forward pass.

`curriculum_order` sorts by the measure, ties broken by a permutation seeded by `seed`, so the
same recipe gives the same order (and a resumed run with the same budget the order it started
with). The Trainer then reads the blocks sequentially in that order (`pretrain.PretrainTrainer`).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from langadapt.train.data import BlockDataset


def budget_blocks(n_blocks: int, rows: int | None, seed: int) -> np.ndarray:
    """The blocks a run of `rows` training rows reads, in corpus order: every block when `rows` is
    None (epochs) or covers one pass, else `rows` blocks drawn at random with `seed`."""
    if rows is None or rows >= n_blocks:
        return np.arange(n_blocks)
    return np.sort(np.random.default_rng([seed, n_blocks]).permutation(n_blocks)[:rows])


def curriculum_order(measure: np.ndarray, seed: int) -> np.ndarray:
    """Block indices by ascending `measure`; equal values in an order seeded by `seed`."""
    measure = np.asarray(measure, dtype=np.float64)
    tiebreak = np.random.default_rng(seed).permutation(len(measure))
    return np.lexsort((tiebreak, measure))


def document_length_per_block(blocks: BlockDataset, eos_id: int) -> np.ndarray:
    """For each block, the mean over its tokens of the length (in tokens, EOS included) of the
    document the token belongs to. Documents end with EOS and never cross files."""
    size = blocks.block_size
    sums = np.zeros(blocks.n_blocks, dtype=np.float64)
    for array, base in zip(blocks.arrays, blocks.offsets[:-1]):
        n = len(array)
        if n == 0:
            continue
        ends = np.flatnonzero(np.asarray(array) == eos_id) + 1
        if len(ends) == 0 or ends[-1] != n:
            ends = np.append(ends, n)
        lengths = np.diff(np.concatenate([[0], ends]))
        cumulative = np.concatenate([[0.0], np.cumsum(np.repeat(lengths, lengths), dtype=np.float64)])
        first, last = int(base) // size, min(blocks.n_blocks, -(-(int(base) + n) // size))
        ids = np.arange(first, last)
        lo = np.clip(ids * size - base, 0, n)
        hi = np.clip((ids + 1) * size - base, 0, n)
        sums[ids] += cumulative[hi] - cumulative[lo]
    return sums / size


@torch.no_grad()
def block_losses(model, blocks: BlockDataset, indices: np.ndarray, batch_size: int, device,
                 progress: bool = True) -> np.ndarray:
    """Mean next-token cross-entropy (nats) of `model` on each block of `indices`."""
    was_training = model.training
    model.eval()
    losses = np.zeros(len(indices), dtype=np.float64)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if torch.device(device).type == "cuda" else None
    for start in tqdm(range(0, len(indices), batch_size), desc="loss per block (block_order loss)", file=sys.stderr,
                      disable=not progress):
        ids = torch.stack([blocks[int(i)]["input_ids"] for i in indices[start:start + batch_size]])
        ids = ids.to(device)
        if autocast is not None:
            with autocast:
                logits = model(input_ids=ids).logits
        else:
            logits = model(input_ids=ids).logits
        nll = torch.nn.functional.cross_entropy(logits[:, :-1].float().transpose(1, 2), ids[:, 1:], reduction="none")
        losses[start:start + len(ids)] = nll.mean(dim=1).double().cpu().numpy()
    model.train(was_training)
    return losses


def loss_cache_path(blocks: BlockDataset, indices: np.ndarray, model_key: str) -> Path:
    """`block-loss-<key>.npy` beside the block files: key of the blocks, block_size, the blocks scored
    and the model."""
    key = hashlib.sha256(json.dumps([[f.name for f in blocks.files], blocks.block_size,
                                     hashlib.sha256(np.asarray(indices, dtype=np.int64).tobytes()).hexdigest(),
                                     model_key]).encode()).hexdigest()[:20]
    return blocks.files[0].parent / f"block-loss-{key}.npy"


def cached_block_losses(model, model_key: str, blocks: BlockDataset, indices: np.ndarray, batch_size: int, device,
                        progress: bool = True) -> np.ndarray:
    """`block_losses`, read from the cache when the model `model_key` names (its directory's
    fingerprint) already scored these blocks."""
    path = loss_cache_path(blocks, indices, model_key)
    if path.is_file():
        losses = np.load(path)
        if len(losses) == len(indices):
            return losses
    losses = block_losses(model, blocks, indices, batch_size, device, progress)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        np.save(f, losses)
    tmp.replace(path)
    return losses
