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
- `distill`: `fit`, after new *input* rows are distilled from the base model itself. The mean of a
  new token's byte pieces does not say which syllable it is, so the model reads the text worse
  than the base did. Here the text is cut both ways, by the base tokenizer and by the new one; at
  each character where a token ends in both, the extended model (only its new input rows
  trainable) learns the base model's next-token distribution over the old vocabulary (KL), with
  one Adam pass over a sample of the training corpus. The base model is the same model fed only
  old ids (its old rows are untouched), so no second copy is loaded. The output rows are fitted
  afterwards, on the hidden states the new input rows produce.
- `align` (Yamaguchi et al. 2024, "How Can We Effectively Expand the Vocabulary of LLMs with 0.01GB
  of Target Language Text?", arXiv:2406.11477, after their "An Empirical Study on Cross-lingual
  Vocabulary Adaptation for Efficient Language Model Inference"): a sample of the training corpus
  is cut by both tokenizers, with character offsets; at each occurrence of a new token every base
  token whose character span overlaps the new token's gets one count, and the new token's rows
  (input, and output when the head is untied) are the count-weighted mean of those base rows. So a
  new token is the mean of the base pieces it actually replaces in running text, weighted by how
  often each does. New tokens the sample never shows keep their `mean` rows. Nothing is fitted; a
  tied model stays tied. For an extension by merges (`tokenizer merge`) each occurrence covers the
  token's own pieces, so the rows are (nearly all) the `mean` rows (docs/benchmarks.md, "Align init").

Mean output rows give a new token about the average logit of its pieces, far from the
probability the base model gives the whole piece sequence: the costliest are frequent short
tokens (a Korean particle as one token instead of its two or three byte pieces loses 3-5 nats
each time it occurs). Fitting the output rows on real contexts restores most of that.
"""

from __future__ import annotations

import sys
import time

import torch
import torch.nn.functional as F

from langadapt.errors import LangadaptError

# Defaults of the fit, chosen on a split of the training corpus (docs/benchmarks.md, "Initialising new rows").
FIT_SAMPLE_TOKENS = 65536
FIT_L2 = 1.0
# Default sample of the alignment: it only tokenizes, so it can read much more than the fit.
ALIGN_SAMPLE_TOKENS = 1_048_576
# Defaults of the distillation (docs/benchmarks.md, "Initialising new rows", "A second method").
DISTILL_SAMPLE_TOKENS = 32768
DISTILL_LR = 0.022  # relative to the embedding's RMS entry: 3e-3 for SmolLM2 (RMS 0.136)


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
                    l2: float = FIT_L2, max_iter: int = 40, chunk: int = 4096,
                    progress: bool = False) -> tuple[torch.Tensor, dict]:
    """New output rows W minimising, over the sample, the mean cross-entropy of
    softmax([hidden @ old_rows.T, hidden @ W.T]) at `targets` + l2 * mean squared distance of W to
    `start`. Pure: the inputs are not changed. Returns (W, {loss_before, loss_after, iterations}).
    With `progress`, a tqdm bar on stderr counts the L-BFGS iterations (of at most `max_iter`) and
    shows the function evaluations and the loss.

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
    from tqdm import tqdm

    bar = tqdm(total=max_iter, desc="fit: output rows (L-BFGS)", unit="iter", file=sys.stderr, disable=not progress)
    evaluations = 0

    def objective():
        nonlocal evaluations
        optimizer.zero_grad()
        new_logits = hidden @ rows.T
        lse = torch.logaddexp(lse_old, torch.logsumexp(new_logits, -1))
        target = torch.where(is_new, new_logits.gather(1, new_target[:, None])[:, 0], target_old)
        loss = (lse - target).mean() + l2 * ((rows - start) ** 2).sum(-1).mean()
        loss.backward()
        if not bar.disable:
            evaluations += 1
            bar.update(optimizer.state.get(rows, {}).get("n_iter", 0) - bar.n)
            bar.set_postfix(evals=evaluations, loss=f"{loss.item():.4f}")
        return loss

    with bar:
        before = objective().item()
        optimizer.step(objective)
        after = objective().item()
        bar.total = bar.n  # converged early: the bar ends full
    iterations = optimizer.state[optimizer._params[0]].get("n_iter", max_iter)
    return rows.detach(), {"loss_before": round(before, 4), "loss_after": round(after, 4), "iterations": iterations}


def aligned_ends(base_offsets: list[tuple[int, int]], new_offsets: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """(new position, base position) for each character offset where a token ends in both tokenizations
    of the same text, in text order. Several byte pieces of one character share its end; the last
    of them is the position whose hidden state has seen the whole character."""
    base_end = {end: i for i, (_, end) in enumerate(base_offsets)}
    new_end = {end: i for i, (_, end) in enumerate(new_offsets)}
    return [(new_end[end], base_end[end]) for end in sorted(new_end.keys() & base_end.keys())]


def text_chunks(text: str, chars: int) -> list[str]:
    """`text` cut into pieces of about `chars` characters, at a space or newline where there is one
    in the second half of the piece."""
    chunks, start = [], 0
    while start < len(text):
        end = min(len(text), start + chars)
        if end < len(text):
            cut = max(text.rfind(" ", start + chars // 2, end), text.rfind("\n", start + chars // 2, end))
            end = cut if cut > start else end
        chunks.append(text[start:end])
        start = end
    return chunks


def distill_input_rows(model, base_tokenizer, new_tokenizer, new_ids: list[int], text: str,
                       max_tokens: int = DISTILL_SAMPLE_TOKENS, lr: float = DISTILL_LR, batch: int = 4,
                       chunk_chars: int = 256, seed: int = 0, progress: bool = True) -> tuple[torch.Tensor, dict]:
    """New input rows (for the contiguous ids `new_ids`) with which the model, reading `text` cut by
    `new_tokenizer`, predicts the next token as the same model does reading it cut by `base_tokenizer`.

    At every character offset where a token ends in both tokenizations (from the first new token of
    a chunk on; before it the two inputs are the same), the loss is KL(base || extended) between the
    next-token distributions over the old vocabulary (rows below `new_ids[0]`). One Adam pass, `batch`
    chunks per step, linear warm-up and decay, over chunks of `text` until `max_tokens` new-tokenizer
    tokens. `lr` is relative to the RMS entry of the base rows: Adam moves each entry by about its
    learning rate, and embeddings differ in scale from model to model. Only the new input rows
    learn; the model is not changed (the caller writes the rows).
    Returns (rows, figures).
    """
    from tqdm import tqdm

    start_time = time.perf_counter()
    decoder, emb = model.get_decoder(), model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    first, last = new_ids[0], new_ids[-1] + 1
    old_w = head.weight[:first].detach().float()
    old_b = None if getattr(head, "bias", None) is None else head.bias[:first].detach().float()
    prefix = [] if new_tokenizer.bos_token_id is None else [new_tokenizer.bos_token_id]

    # Both tokenizations of each chunk, up to max_tokens; then the base model's final hidden states
    # at the aligned ends: one forward pass, no gradient.
    pairs_of_chunks, n_tokens = [], 0
    for chunk in text_chunks(text, chunk_chars):
        if n_tokens >= max_tokens:
            break
        new = new_tokenizer(chunk, return_offsets_mapping=True, add_special_tokens=False)
        first_new = next((i for i, t in enumerate(new["input_ids"]) if first <= t < last), None)
        if first_new is None:
            continue
        base = base_tokenizer(chunk, return_offsets_mapping=True, add_special_tokens=False)
        pairs = [(n + len(prefix), b + len(prefix))
                 for n, b in aligned_ends(base["offset_mapping"], new["offset_mapping"]) if n >= first_new]
        if pairs:
            pairs_of_chunks.append((prefix + new["input_ids"], prefix + base["input_ids"], pairs))
            n_tokens += len(new["input_ids"])
    samples = []
    with torch.no_grad():
        for ids, base_ids, pairs in tqdm(pairs_of_chunks, desc="distill: base targets", unit="chunk",
                                         file=sys.stderr, disable=not progress):
            hidden = decoder(input_ids=torch.tensor([base_ids])).last_hidden_state[0]
            samples.append((torch.tensor(ids), torch.tensor([n for n, _ in pairs]),
                            hidden[[b for _, b in pairs]].float()))

    rows = emb[first:last].detach().float().clone().requires_grad_(True)
    trainable = [p for p in model.parameters() if p.requires_grad]
    for p in trainable:
        p.requires_grad_(False)
    step_size = lr * emb[:first].detach().float().pow(2).mean().sqrt().item()
    optimizer = torch.optim.Adam([rows], lr=step_size)
    steps = max(1, -(-len(samples) // batch))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / max(1, steps // 10)) * (1 - s / steps))
    order = torch.randperm(len(samples), generator=torch.Generator().manual_seed(seed)).tolist()
    losses = []
    try:
        for step in tqdm(range(steps), desc="distill: input rows", unit="step", file=sys.stderr,
                         disable=not progress):
            group = order[step * batch:(step + 1) * batch]
            for i in group:
                ids, positions, target = samples[i]
                is_new = (ids >= first) & (ids < last)
                inputs = torch.where(is_new[:, None], rows[(ids - first).clamp(0, last - first - 1)].to(emb.dtype),
                                     emb[ids].detach())
                hidden = decoder(inputs_embeds=inputs[None]).last_hidden_state[0, positions].float()
                with torch.no_grad():
                    target_logp = F.log_softmax(F.linear(target, old_w, old_b), -1)
                logp = F.log_softmax(F.linear(hidden, old_w, old_b), -1)
                loss = (target_logp.exp() * (target_logp - logp)).sum(-1).mean()
                (loss / len(group)).backward()
                losses.append(loss.item())
            optimizer.step()
            optimizer.zero_grad()
            schedule.step()
    finally:
        for p in trainable:
            p.requires_grad_(True)
    tenth = max(1, len(losses) // 10)
    return rows.detach(), {
        "sample_tokens": n_tokens, "chunks": len(samples), "aligned_positions": sum(len(s[1]) for s in samples),
        "lr": lr, "step_size": round(step_size, 6), "steps": steps,
        "kl_first_tenth": round(sum(losses[:tenth]) / tenth, 4) if losses else None,
        "kl_last_tenth": round(sum(losses[-tenth:]) / tenth, 4) if losses else None,
        "seconds": round(time.perf_counter() - start_time, 1)}


# ----------------------------------------------------------------------------- align

def overlap_counts(tokenizations, first: int, last: int) -> dict[int, dict[int, int]]:
    """For each new id in [first, last): {base id: count} over its occurrences in `tokenizations`.

    `tokenizations` yields (base_ids, base_offsets, new_ids, new_offsets) for one text cut by the
    base and by the new tokenizer, offsets as (start, end) character spans in text order. For each
    occurrence of a new token, span [s, e), every base token whose span [bs, be) overlaps it
    (bs < e and be > s) gets one count; byte pieces sharing one character's span each count. A
    new token with an empty span (s == e) counts nothing. New ids that never occur are absent.
    Pure: only reads its arguments. (The authors' code counts each occurrence's tuple of base ids
    once and averages within it; the two agree where a new token always covers the same pieces.)
    """
    counts: dict[int, dict[int, int]] = {}
    for base_ids, base_offsets, new_ids, new_offsets in tokenizations:
        if len(base_ids) != len(base_offsets) or len(new_ids) != len(new_offsets):
            raise ValueError("each tokenization needs one offset pair per id")
        k = 0  # first base token that may still overlap (spans come in text order)
        for token, (s, e) in zip(new_ids, new_offsets):
            if not first <= token < last or e <= s:
                continue
            while k < len(base_offsets) and base_offsets[k][1] <= s:
                k += 1
            row = counts.setdefault(token, {})
            j = k
            while j < len(base_offsets) and base_offsets[j][0] < e:
                bs, be = base_offsets[j]
                if be > s and be > bs:
                    row[base_ids[j]] = row.get(base_ids[j], 0) + 1
                j += 1
            if not row:
                del counts[token]
    return counts


def weighted_rows(weight: torch.Tensor, counts: list[dict[int, int]], fallback: torch.Tensor) -> torch.Tensor:
    """One fp32 row per entry of `counts`: sum(c * weight[i]) / sum(c) over its {id: count} items,
    or the same row of `fallback` (one row per entry) where the entry is empty."""
    out = fallback.float().clone()
    for n, row in enumerate(counts):
        if row:
            ids = torch.tensor(list(row.keys()))
            c = torch.tensor(list(row.values()), dtype=torch.float32)
            out[n] = (c[:, None] * weight[ids].float()).sum(0) / c.sum()
    return out


def align_counts(base_tokenizer, new_tokenizer, text: str, first: int, last: int,
                 max_tokens: int = ALIGN_SAMPLE_TOKENS, chunk_chars: int = 4096,
                 batch: int = 64) -> tuple[dict[int, dict[int, int]], dict]:
    """`overlap_counts` over the first `max_tokens` new-tokenizer tokens of `text`, cut into
    ~`chunk_chars` pieces at spaces (`text_chunks`) and each piece cut by both tokenizers (fast
    tokenizers only: they give the character offsets).
    Returns (counts, figures: sample_tokens, sample_chars, new_token_occurrences)."""
    for name, tok in (("the base tokenizer", base_tokenizer), ("the new tokenizer", new_tokenizer)):
        if not getattr(tok, "is_fast", False):
            raise LangadaptError(f"init 'align' needs character offsets, which only fast (tokenizers-backed) "
                                 f"tokenizers give; {name} ({type(tok).__name__}) is not one")
    chunks = text_chunks(text, chunk_chars)
    counts: dict[int, dict[int, int]] = {}
    n_tokens, n_chars, occurrences = 0, 0, 0
    for i in range(0, len(chunks), batch):
        if n_tokens >= max_tokens:
            break
        group = chunks[i:i + batch]
        new = new_tokenizer(group, return_offsets_mapping=True, add_special_tokens=False)
        base = base_tokenizer(group, return_offsets_mapping=True, add_special_tokens=False)
        for n in range(len(group)):
            if n_tokens >= max_tokens:
                break
            new_ids = new["input_ids"][n][:max_tokens - n_tokens]
            new_offsets = new["offset_mapping"][n][:len(new_ids)]
            end = new_offsets[-1][1] if new_offsets else 0
            # the base tokens of the same characters (a piece crossing the cut still counts whole)
            n_base = sum(1 for s, _ in base["offset_mapping"][n] if s < end)
            piece = (base["input_ids"][n][:n_base], base["offset_mapping"][n][:n_base], new_ids, new_offsets)
            for token, row in overlap_counts([piece], first, last).items():
                total = counts.setdefault(token, {})
                for base_id, c in row.items():
                    total[base_id] = total.get(base_id, 0) + c
            n_tokens += len(new_ids)
            n_chars += end if len(new_ids) < len(new["input_ids"][n]) else len(group[n])
            occurrences += sum(1 for t in new_ids if first <= t < last)
    return counts, {"sample_tokens": n_tokens, "sample_chars": n_chars, "new_token_occurrences": occurrences}
