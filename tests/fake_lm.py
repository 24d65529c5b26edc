"""Fake causal LMs for decoding tests: real `transformers` models (so `generate` runs as usual) whose
logits come from a rule instead of weights."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.modeling_outputs import CausalLMOutputWithPast


class RuleLM(LlamaForCausalLM):
    """A Llama whose next-token logits are `rule(input_ids)` -> (batch, vocab); the weights are unused.

    `generate` is run without a KV cache (`use_cache=False` in the generation config), so the
    rule always sees the whole sequence. Given a cache (`model.batch`), the model keeps the token ids in
    it (as the keys of one layer), so the rule still sees whole sequences (left padding as id 0)."""

    def __init__(self, vocab_size: int, rule, eos_token_id: int | None = None, pad_token_id: int | None = None):
        config = LlamaConfig(vocab_size=vocab_size, hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                             num_attention_heads=1, num_key_value_heads=1, max_position_embeddings=4096,
                             eos_token_id=eos_token_id, pad_token_id=pad_token_id)
        super().__init__(config)
        self.rule = rule
        self.generation_config.use_cache = False
        self.eval()

    def forward(self, input_ids=None, cache=None, **kwargs):
        seen = input_ids
        if cache is not None:
            as_keys = input_ids[:, None, :, None].float()
            seen = cache.update(as_keys, as_keys, 0)[0][:, 0, :, 0].long()
        last = self.rule(seen).to(torch.float32)
        logits = torch.zeros(input_ids.shape[0], input_ids.shape[1], last.shape[-1])
        logits[:, -1] = last
        return CausalLMOutputWithPast(logits=logits, cache=cache)


def preference_logits(vocab_size: int, preferred: list[int]) -> torch.Tensor:
    """Logits that rank `preferred` first (in that order), far above every other token."""
    logits = torch.zeros(vocab_size)
    for rank, token_id in enumerate(preferred):
        logits[token_id] = 100.0 - rank
    return logits


def scripted_rule(script: list[int], vocab_size: int, then: int):
    """A rule that says `script` token by token, then `then`: the next token is script[k] for the longest
    k such that the sequence ends with script[:k] (so any prompt that does not end like the script works)."""
    def rule(input_ids):
        rows = []
        for row in input_ids.tolist():
            done = next(k for k in range(min(len(script), len(row)), -1, -1) if k == 0 or row[-k:] == script[:k])
            rows.append(preference_logits(vocab_size, [script[done] if done < len(script) else then]))
        return torch.stack(rows)

    return rule
