"""The config.json sizes of base models people adapt, so that `run --dry-run` plans their memory offline
and at once (from their hub pages' config.json; only the fields the memory plan reads). A model not
listed is read from the hub cache or downloaded (config.json only, never weights)."""

from __future__ import annotations


def _llama(vocab: int, hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int,
           tied: bool = False) -> dict:
    return {"vocab_size": vocab, "hidden_size": hidden, "intermediate_size": intermediate,
            "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
            "tie_word_embeddings": tied}


KNOWN_CONFIGS = {
    "meta-llama/Llama-2-7b-hf": _llama(32000, 4096, 11008, 32, 32, 32),
    "meta-llama/Llama-2-7b-chat-hf": _llama(32000, 4096, 11008, 32, 32, 32),
    "meta-llama/Llama-2-13b-hf": _llama(32000, 5120, 13824, 40, 40, 40),
    "meta-llama/Meta-Llama-3-8B": _llama(128256, 4096, 14336, 32, 32, 8),
    "meta-llama/Meta-Llama-3-8B-Instruct": _llama(128256, 4096, 14336, 32, 32, 8),
    "meta-llama/Llama-3.1-8B": _llama(128256, 4096, 14336, 32, 32, 8),
    "meta-llama/Llama-3.1-8B-Instruct": _llama(128256, 4096, 14336, 32, 32, 8),
    "mistralai/Mistral-7B-v0.1": _llama(32000, 4096, 14336, 32, 32, 8),
    "Qwen/Qwen2.5-7B": _llama(152064, 3584, 18944, 28, 28, 4),
    "Qwen/Qwen2.5-7B-Instruct": _llama(152064, 3584, 18944, 28, 28, 4),
    "HuggingFaceTB/SmolLM2-135M-Instruct": _llama(49152, 576, 1536, 30, 9, 3, tied=True),
}
