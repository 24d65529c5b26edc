"""`report.md` of a `langadapt run`: what the adaptation changed, in tables and PNG plots.

Read from the outputs of the run's steps (nothing is recomputed except a few greedy answers):
the tokenizer report, bits per char of each model on the held-out text, the training summaries
in each adapter's adaptation.json, their loss curves, and sample answers of the base and final
models to held-out instructions.
"""

from __future__ import annotations

import json
from pathlib import Path

from langadapt.errors import LangadaptError

INSTRUCTION_NOTES = {
    "embedded:ko-instructions": "The instruction data is derived from the embedded training text itself, not "
                                "written by people or a model: each article of the Korean constitution "
                                "(\"대한민국헌법 제N조의 내용을 쓰세요.\" -> the article's text) and, for each "
                                "training bill, its rationale section -> its title. The two held-out bills are "
                                "never used.",
}


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _fmt(x, digits: int = 3) -> str:
    if x is None:
        return "-"
    return f"{x:,.{digits}f}" if isinstance(x, float) else f"{x:,}" if isinstance(x, int) else str(x)


def bpc_plot(rows: list[tuple[str, float]], path: Path) -> None:
    """Bar chart of held-out bits per char by model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4, 1.6 * len(rows)), 3.5))
    bars = ax.bar([r[0] for r in rows], [r[1] for r in rows], color="tab:red")
    ax.bar_label(bars, fmt="%.3f")
    ax.set_ylabel("held-out bits per character")
    ax.set_title("lower is better")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def sample_answers(recipe: dict, steps, count: int, max_new_tokens: int) -> list[dict]:
    """Greedy answers (repetition penalty 1.2) of the base and the final model to the first held-out
    instructions."""
    import torch

    from langadapt.model.load import load_model
    from langadapt.serve.chat import stop_token_ids
    from langadapt.sources import resolve_model_source
    from langadapt.tokenizer.load import load_tokenizer
    from langadapt.tokenizer.templates import render, resolve_template
    from langadapt.train.instructions import read_conversations
    from langadapt.train.recipe import SftRecipe, recipe_from_dict
    from langadapt.train.sft import split_heldout

    sft_step = next((s for s in steps if s.name == "sft"), None)
    final = next((s for s in reversed(steps) if s.name.startswith("merge-") or s.name == "sft"), None)
    if sft_step is None or final is None or count <= 0:
        return []
    sft = recipe_from_dict(sft_step.config, cls=SftRecipe)
    if sft.heldout:
        held, _ = read_conversations(sft.heldout, skip_bad=sft.skip_bad, fmt=sft.data_format)
    else:
        convs, _ = read_conversations(sft.data, skip_bad=sft.skip_bad, fmt=sft.data_format)
        held = split_heldout(convs, sft.heldout_share, sft.seed)[1]
    firsts = [next(i for i, m in enumerate(c) if m["role"] == "assistant") for c in held[:count]]
    questions = [c[:i] for c, i in zip(held, firsts)]  # everything before the first answer
    samples = [{"prompt": c[i - 1]["content"], "reference": c[i]["content"]} for c, i in zip(held, firsts)]
    for label, spec, template_name in (("base", str(recipe["base"]), "auto"), ("adapted", str(final.output), sft.template)):
        source = resolve_model_source(spec)
        tok = load_tokenizer(str(source))
        model = load_model(str(source)).eval()
        try:
            template = resolve_template(tok, template_name)
        except LangadaptError:  # a base without a chat template of its own: the SFT template
            template = resolve_template(tok, sft.template)
        for sample, q in zip(samples, questions):
            ids = tok(render(tok, template, q, add_generation_prompt=True), add_special_tokens=False,
                      return_tensors="pt")
            with torch.no_grad():
                new = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False, repetition_penalty=1.2,
                                     eos_token_id=stop_token_ids(tok, template),
                                     pad_token_id=tok.pad_token_id or tok.eos_token_id)[0, ids["input_ids"].shape[1]:]
            sample[label] = tok.decode(new, skip_special_tokens=True).strip()
        del model
    return samples


def write_report(recipe: dict, steps, out: Path) -> Path:
    """Write <out>/report.md (and <out>/eval/bpc.png) from the outputs of a run's steps."""
    from langadapt.outputs import write_json_atomic
    from langadapt.pipeline import EVAL_DEFAULTS

    ev = {**EVAL_DEFAULTS, **(recipe.get("eval") or {})}
    lines = [f"# langadapt run: {recipe.get('name', out.name)}", ""]
    if recipe.get("description"):
        lines += [str(recipe["description"]).strip(), ""]
    lines += [f"Base model `{recipe['base']}`, language `{recipe['lang']}`, run directory `{out}`.", ""]
    figures: dict = {}

    toks = _load(out / "eval" / "tokenizers.json")
    bpcs = [(s.name.removeprefix("eval-bpc-"), _load(s.output)) for s in steps if s.name.startswith("eval-bpc-")]
    bpcs = [(name, r) for name, r in bpcs if r]
    if toks or bpcs:
        lines += ["## Summary", "", "| measure | base | adapted |", "|---|---|---|"]
        if toks and len(toks["tokenizers"]) > 1:
            base_row, new_row = toks["tokenizers"][0], toks["tokenizers"][-1]
            unit = toks["corpus"]["unit_name"]
            lines.append(f"| tokens per character (held-out) | {_fmt(base_row['tokens_per_char'])} | "
                         f"{_fmt(new_row['tokens_per_char'])} |")
            lines.append(f"| tokens per {unit.rstrip('s')} | {_fmt(base_row['tokens_per_unit'])} | "
                         f"{_fmt(new_row['tokens_per_unit'])} |")
            figures["tokens_per_char"] = [base_row["tokens_per_char"], new_row["tokens_per_char"]]
        if len(bpcs) > 1:
            by_name = dict(bpcs)
            untrained = by_name.get("extended") or by_name.get("pruned")
            if untrained and bpcs[-1][1] is not untrained:
                lines.append(f"| held-out bits per character, new vocabulary before training | - | "
                             f"{_fmt(untrained['bits_per_char'])} |")
            lines.append(f"| held-out bits per character | {_fmt(bpcs[0][1]['bits_per_char'])} | "
                         f"{_fmt(bpcs[-1][1]['bits_per_char'])} (after {bpcs[-1][0]}) |")
            figures["bits_per_char"] = {name: r["bits_per_char"] for name, r in bpcs}
            if untrained and bpcs[-1][1] is not untrained:
                base_bpc, start, end = (bpcs[0][1]["bits_per_char"], untrained["bits_per_char"],
                                        bpcs[-1][1]["bits_per_char"])
                where = "below" if end < base_bpc else "still above"
                lines += ["", f"Training lowered the held-out bits per character of the model with the new "
                              f"vocabulary from {start:.3f} (new rows initialised, untrained) to {end:.3f}, "
                              f"{where} the base model's {base_bpc:.3f}."]
        lines.append("")
    if toks:
        lines += ["## Tokenizer", "",
                  f"Held-out text: {toks['corpus']['chars']:,} characters, {toks['corpus']['units']:,} "
                  f"{toks['corpus']['unit_name']}.", "",
                  "| tokenizer | vocab | tokens/char | tokens/unit | bytes/token | byte fallback |",
                  "|---|---|---|---|---|---|"]
        for r in toks["tokenizers"]:
            lines.append(f"| {r['name']} | {r['vocab_size']:,} | {_fmt(r['tokens_per_char'])} | "
                         f"{_fmt(r['tokens_per_unit'])} | {_fmt(r.get('bytes_per_token'), 2)} | "
                         f"{_fmt(r.get('byte_fallback_share'), 3)} |")
        lines += ["", "![tokens per unit](eval/tokenizers.png)", ""]
    if bpcs:
        bpc_plot([(name, r["bits_per_char"]) for name, r in bpcs], out / "eval" / "bpc.png")
        lines += ["## Held-out bits per character", "",
                  f"Sliding window of {ev['context']} tokens over the first {ev['max_chars']:,} held-out characters "
                  "(comparable across tokenizers).", "",
                  "| model | bits/char | bits/byte | tokens/char |", "|---|---|---|---|"]
        for name, r in bpcs:
            lines.append(f"| {name} | {_fmt(r['bits_per_char'])} | {_fmt(r['bits_per_byte'])} | "
                         f"{_fmt(r['tokens_per_char'])} |")
        lines += ["", "![bits per character](eval/bpc.png)", ""]

    trained = [s for s in steps if s.config is not None]
    if trained:
        lines += ["## Training", "", "| step | stage | steps | tokens seen | train loss | held-out | minutes |",
                  "|---|---|---|---|---|---|---|"]
        for s in trained:
            rec = _load(s.output / "adaptation.json") or {}
            held = rec.get("heldout_bpc")
            held = f"{_fmt(held)} bpc" if held is not None else (
                f"answer loss {_fmt(rec.get('heldout_answer_loss_before'))} → {_fmt(rec.get('heldout_answer_loss'))}"
                if rec.get("heldout_answer_loss") is not None else "-")
            lines.append(f"| {s.name} | {rec.get('stage', '-')} | {_fmt(rec.get('steps'))} | {_fmt(rec.get('tokens_seen'))}"
                         f" | {_fmt(rec.get('train_loss'))} | {held} | {_fmt((rec.get('seconds') or 0) / 60, 1)} |")
            figures[s.name] = {k: rec.get(k) for k in ("steps", "tokens_seen", "train_loss", "heldout_bpc",
                                                      "heldout_answer_loss_before", "heldout_answer_loss")}
        lines.append("")
        for s in trained:
            if (Path(s.config["out"]) / "curves.png").is_file():
                rel = Path(s.config["out"]).relative_to(out) if Path(s.config["out"]).is_relative_to(out) else s.config["out"]
                lines += [f"![{s.name} curves]({rel}/curves.png)", ""]
        sft_rec = next((_load(s.output / "adaptation.json") for s in trained if s.name == "sft"), None)
        if sft_rec:
            ex = sft_rec["train_examples"]
            lines += [f"Instruction data: {ex['kept']:,} training examples ({ex['prompt_cut']} with the prompt cut, "
                      f"{ex['answer_cut']} with the answer cut, {ex['dropped']} dropped), "
                      f"{sft_rec['heldout_examples']['kept']:,} held out; template `{sft_rec['template']}`.", ""]
    notes = [INSTRUCTION_NOTES[p] for p in (recipe.get("data") or {}).get("instructions") or [] if p in INSTRUCTION_NOTES]
    if (recipe.get("data") or {}).get("instructions_note"):
        notes.append(str(recipe["data"]["instructions_note"]))
    lines += [*(n + "\n" for n in notes)]

    samples = sample_answers(recipe, steps, int(ev["prompts"]), int(ev["max_new_tokens"]))
    if samples:
        lines += ["## Sample answers (held-out instructions; greedy, repetition penalty 1.2)", ""]
        for i, s in enumerate(samples, 1):
            lines += [f"**{i}. {s['prompt'][:300]}**", "", f"- reference: {s['reference'][:300]}",
                      f"- base: {s.get('base', '')[:300]}", f"- adapted: {s.get('adapted', '')[:300]}", ""]
        figures["samples"] = samples

    lines += ["## Steps", "", "Each step is a `langadapt` command; re-run one by hand with:", "", "```"]
    lines += [s.command() for s in steps if s.name != "report"] + ["```", ""]
    (out / "report.md").write_text("\n".join(lines), encoding="utf-8")
    write_json_atomic(out / "report.json", figures)
    return out / "report.md"
