"""Multi-token prediction as an auxiliary pretraining loss (Gloeckle et al. 2024, "Better & Faster
Large Language Models via Multi-token Prediction"), `pretrain --mtp-heads K`.

Head k (1..K) predicts token t+1+k from the final hidden state h_t (the LM head's input, so after
the final norm): `h + W2 silu(W1 h)` (a residual MLP of width hidden_size, W2 zero at the start,
so every head starts as the next-token prediction), then the model's own LM head (shared, as the
paper shares the unembedding; its appendix B also tries linear heads). The auxiliary loss is
the mean over the heads of their summed cross-entropy over the targets, divided by the same
count as the next-token loss (the next-token targets of the accumulated batch), so gradient
accumulation weighs both alike:

    loss = next-token loss + mtp_weight * (1/K) * sum_k sum_t CE(head_k(h_t), x_{t+1+k}) / N

The heads live on the trained model as the submodule `langadapt_mtp` (so the Trainer's optimizer,
device placement and DDP see them); `pretrain.PretrainTrainer` writes them into each checkpoint
(`mtp_heads.safetensors`), reads them back on --resume and removes them before the result is
saved: the adapter or model written is what it would be without them.
"""

from __future__ import annotations

import torch
from torch import nn

MTP_ATTR = "langadapt_mtp"
MTP_FILE = "mtp_heads.safetensors"


class ResidualHead(nn.Module):
    """h + W2 silu(W1 h), W2 zero at the start."""

    def __init__(self, hidden: int):
        super().__init__()
        self.up = nn.Linear(hidden, hidden, bias=False)
        self.down = nn.Linear(hidden, hidden, bias=False)
        nn.init.zeros_(self.down.weight)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.down(nn.functional.silu(self.up(h)))


class MtpHeads(nn.ModuleList):
    """K residual heads; head k (1-based) predicts the token k+1 positions ahead."""

    def __init__(self, count: int, hidden: int):
        super().__init__([ResidualHead(hidden) for _ in range(count)])


def mtp_loss(heads: MtpHeads, lm_head, hidden: torch.Tensor, labels: torch.Tensor, count) -> torch.Tensor:
    """(1/K) sum_k sum_t CE(lm_head(head_k(hidden_t)), labels_{t+1+k}) / count (labels -100 ignored)."""
    total = hidden.new_zeros((), dtype=torch.float32)
    length = hidden.shape[1]
    for k, head in enumerate(heads, start=1):
        if length - 1 - k <= 0:
            continue
        logits = lm_head(head(hidden[:, :length - 1 - k]))
        total = total + nn.functional.cross_entropy(logits.float().transpose(1, 2), labels[:, 1 + k:],
                                                    ignore_index=-100, reduction="sum")
    return total / (len(heads) * count)


def base_of(model):
    """The plain transformers model inside a peft model (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def attach_heads(model, count: int) -> MtpHeads:
    """Add `count` new heads to `model` (the model to train) as `langadapt_mtp`; return them."""
    base = base_of(model)
    cfg = base.config.get_text_config() if hasattr(base.config, "get_text_config") else base.config
    weight = base.get_input_embeddings().weight
    heads = MtpHeads(count, cfg.hidden_size).to(device=weight.device, dtype=weight.dtype)
    setattr(model, MTP_ATTR, heads)
    return heads


def heads_of(model) -> MtpHeads | None:
    return getattr(model, MTP_ATTR, None) if MTP_ATTR in getattr(model, "_modules", {}) else None


def detach_heads(model) -> None:
    """Remove the heads (before the result is saved)."""
    if heads_of(model) is not None:
        delattr(model, MTP_ATTR)
