"""Initial rows for new tokens: the algorithms behind `model extend --init`.

- `mean`: a new token's row is the mean of the base rows of the pieces the base tokenizer makes
  of it (input rows from the input embedding, output rows from the LM head).
- `fit`: input rows as `mean`; the new *output* rows fitted by softmax regression on the
  extended model's own final hidden states over a sample of the training corpus, tokenized with
  the new tokenizer. The old rows stay fixed, so the problem is convex in the new rows and needs
  no backward pass through the transformer: one forward pass collects the hidden states, then
  L-BFGS minimises the cross-entropy of the sample over the whole vocabulary plus an L2 pull
  towards the `mean` rows (new tokens the sample seldom shows stay near their mean rows). A model
  with tied embeddings is untied first: fitted output rows used as input rows would change the
  very hidden states they were fitted on (measured: worse than `mean`).

Mean output rows give a new token about the average logit of its pieces, far from the
probability the base model gives the whole piece sequence: the costliest are frequent short
tokens (a Korean particle as one token instead of its two or three byte pieces loses 3-5 nats
each time it occurs). Fitting the output rows on real contexts restores most of that.
"""

from __future__ import annotations

import sys

import torch

# Defaults of the fit, chosen on a split of the training corpus (docs/benchmarks.md, "Initialising new rows").
FIT_SAMPLE_TOKENS = 65536
FIT_L2 = 1.0


def base_pieces(base_tokenizer, new_tokenizer, token_id: int) -> list[int]:
    """Base-tokenizer ids for the text of new token `token_id`.

    A regular vocabulary entry is run through the base tokenizer's own model (BPE, Unigram...)
    on its raw piece string: a byte-level piece may hold half a UTF-8 character, which decoding
    would turn into U+FFFD and tokenise wrongly. Added tokens, and tokenizers without a fast
    backend, are decoded to text and encoded with `add_special_tokens=False`.
    """
    piece = new_tokenizer.convert_ids_to_tokens(token_id)
    added = token_id in getattr(new_tokenizer, "added_tokens_decoder", {})
    backend = getattr(base_tokenizer, "backend_tokenizer", None)
    if backend is not None and not added:
        ids = [t.id for t in backend.model.tokenize(piece)]
        if ids:
            return ids
    text = piece if added else new_tokenizer.convert_tokens_to_string([piece])
    return base_tokenizer(text, add_special_tokens=False)["input_ids"]


def mean_rows(weight: torch.Tensor, groups: list[list[int]], fallback: torch.Tensor) -> torch.Tensor:
    """One row per group: the fp32 mean of `weight[group]`, or `fallback` for an empty group."""
    out = torch.empty(len(groups), weight.shape[1], dtype=torch.float32)
    for i, ids in enumerate(groups):
        out[i] = weight[ids].float().mean(0) if ids else fallback
    return out


def final_hidden_states(model, ids: list[int], bos: int | None, block_size: int = 256,
                        progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(hidden states, targets): the decoder's last hidden state (after its final norm) at each
    position of `ids` cut into blocks, paired with the token it predicts. With `bos`, each block
    starts with it, so every token of `ids` is a target once."""
    from tqdm import tqdm

    decoder = model.get_decoder()
    prefix = [] if bos is None else [bos]
    hidden, targets = [], []
    step = block_size - len(prefix)
    with torch.inference_mode():
        for i in tqdm(range(0, len(ids), step), desc="hidden states", unit="block", file=sys.stderr,
                      disable=not progress):
            block = prefix + ids[i:i + step]
            if len(block) < 2:
                continue
            states = decoder(input_ids=torch.tensor([block])).last_hidden_state[0, :-1]
            hidden.append(states.float())
            targets.append(torch.tensor(block[1:]))
    return torch.cat(hidden), torch.cat(targets)


def fit_output_rows(hidden: torch.Tensor, targets: torch.Tensor, old_rows: torch.Tensor, start: torch.Tensor,
                    l2: float = FIT_L2, max_iter: int = 40, chunk: int = 4096) -> tuple[torch.Tensor, dict]:
    """New output rows W minimising, over the sample, the mean cross-entropy of
    softmax([hidden @ old_rows.T, hidden @ W.T]) at `targets` + l2 * mean squared distance of W to
    `start`. Pure: the inputs are not changed. Returns (W, {loss_before, loss_after, iterations}).

    The old rows are fixed, so only their logsumexp and target logit per position are needed;
    they are computed once, in chunks of `chunk` positions.
    """
    hidden = hidden.float()
    n_old = old_rows.shape[0]
    is_new = targets >= n_old
    new_target = (targets - n_old).clamp(min=0)
    with torch.no_grad():
        old = old_rows.float()
        lse_old = torch.cat([torch.logsumexp(h @ old.T, -1) for h in hidden.split(chunk)])
        target_old = (hidden * old[targets.clamp(max=n_old - 1)]).sum(-1)
    start = start.float()
    rows = start.clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS([rows], lr=1, max_iter=max_iter, history_size=10, line_search_fn="strong_wolfe")

    def objective():
        optimizer.zero_grad()
        new_logits = hidden @ rows.T
        lse = torch.logaddexp(lse_old, torch.logsumexp(new_logits, -1))
        target = torch.where(is_new, new_logits.gather(1, new_target[:, None])[:, 0], target_old)
        loss = (lse - target).mean() + l2 * ((rows - start) ** 2).sum(-1).mean()
        loss.backward()
        return loss

    before = objective().item()
    optimizer.step(objective)
    after = objective().item()
    iterations = optimizer.state[optimizer._params[0]].get("n_iter", max_iter)
    return rows.detach(), {"loss_before": round(before, 4), "loss_after": round(after, 4), "iterations": iterations}
