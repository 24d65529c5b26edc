"""`langadapt demo`: a two-minute tour with what ships in the box.

1. load the embedded base model (SmolLM2-135M-Instruct, converted once from its GGUF) and
   show its facts;
2. read the embedded Korean sample corpus (konlpy's constitution and bills) and measure how
   many tokens the base tokenizer spends per character and per word - the number tokenizer
   extension brings down;
3. ask the model a short Korean-flavoured question with its chat template (greedy).
"""

from __future__ import annotations

import time

from langadapt.sources import DEFAULT_MODEL

DEMO_PROMPT = "What does the Korean greeting '안녕하세요' mean? Answer in one sentence."


def _step(n: int, title: str) -> None:
    print(f"\n[{n}] {title}")


def generate_answer(model, tok, prompt: str, max_new_tokens: int) -> tuple[str, int]:
    """Greedy answer to `prompt` through the chat template (if any): (text, new tokens)."""
    import torch

    if getattr(tok, "chat_template", None):
        inputs = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                         return_tensors="pt", return_dict=True)
    else:
        inputs = tok(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
    new = out[0, inputs["input_ids"].shape[1]:]
    return tok.decode(new, skip_special_tokens=True).strip(), len(new)


def run_demo(model_spec: str = DEFAULT_MODEL, max_new_tokens: int = 30) -> dict:
    """Run the tour, printing as it goes; return the figures (for tests and scripts)."""
    from langadapt.corpus.embedded import embedded_corpus_paths
    from langadapt.corpus.stats import corpus_stats
    from langadapt.lang import get_profile
    from langadapt.model.load import format_model_info, load_model, model_info
    from langadapt.tokenizer.load import load_tokenizer

    print(f"langadapt demo: base model {model_spec}, embedded Korean sample corpus")

    _step(1, "base model")
    start = time.perf_counter()
    info = model_info(model_spec)  # converts an alias/GGUF on first use
    model = load_model(model_spec)
    model.eval()
    tok = load_tokenizer(info["loaded_from"])
    load_s = time.perf_counter() - start
    print(format_model_info(info))
    print(f"  (loaded in {load_s:.1f} s)")

    _step(2, "sample corpus, measured with the base tokenizer")
    start = time.perf_counter()
    profile = get_profile("ko")
    paths = embedded_corpus_paths()
    stats = corpus_stats(paths, profile, tokenizer=tok)
    corpus_s = time.perf_counter() - start
    print(f"  {stats['files']} files (Korean constitution + bills from konlpy), {stats['records']:,} lines, "
          f"{stats['characters']:,} characters, {stats['units']:,} {profile.unit_name}, "
          f"{stats['target_script_share']:.0%} Hangul")
    print(f"  {stats['tokens']:,} tokens: {stats['tokens_per_character']:.2f} tokens per character, "
          f"{stats['tokens_per_unit']:.2f} tokens per {profile.unit_name.rstrip('s')}  ({corpus_s:.1f} s)")

    _step(3, f"greedy generation, {max_new_tokens} new tokens at most")
    print(f"  prompt: {DEMO_PROMPT}")
    start = time.perf_counter()
    answer, n_new = generate_answer(model, tok, DEMO_PROMPT, max_new_tokens)
    gen_s = time.perf_counter() - start
    print(f"  answer: {answer}")
    print(f"  ({n_new} tokens in {gen_s:.1f} s, {n_new / gen_s if gen_s else 0:.1f} tokens/s)")
    return {"model": info, "corpus": stats, "prompt": DEMO_PROMPT, "answer": answer, "new_tokens": n_new,
            "seconds": {"load": load_s, "corpus": corpus_s, "generate": gen_s}}


def demo_command(args) -> int:
    """CLI handler of `langadapt demo`."""
    run_demo(args.model, args.max_new_tokens)
    return 0
