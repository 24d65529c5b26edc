"""`report.md` of a `langadapt run`: what the adaptation changed, in tables and PNG plots.

It only renders what the run's steps wrote; it loads no model and recomputes nothing: the
tokenizer report, bits per char of each model on the held-out text, the training summaries in
each adapter's adaptation.json and their loss curves, and the sample answers and generation
speed of `eval generate` for the base, the adapted model and (if the recipe has one) the control
arm.
"""

from __future__ import annotations

import json
from pathlib import Path

from langadapt.outputs import ADAPTATION_FILE, write_json_atomic

INSTRUCTION_NOTES = {
    "embedded:ko-instructions": "The instruction data is derived from the embedded training text itself, not "
                                "written by people or a model: each article of the Korean constitution "
                                "(\"대한민국헌법 제N조의 내용을 쓰세요.\" -> the article's text) and, for each "
                                "training bill, its rationale section -> its title. The two held-out bills are "
                                "never used.",
}
ARMS = ("base", "adapted", "control")


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


def _row(label: str, values: list, digits: int = 3) -> str:
    return f"| {label} | " + " | ".join(_fmt(v, digits) for v in values) + " |"


def summary_table(arms: list[str], toks: dict | None, bpc: dict, generate: dict) -> list[str]:
    """The summary: tokens per character, held-out bits per char and generation speed of each arm."""
    lines = ["| measure | " + " | ".join(arms) + " |", "|---" * (len(arms) + 1) + "|"]
    if toks:
        per_char = {r["name"]: r["tokens_per_char"] for r in toks["tokenizers"]}
        tokenizer_of = {"base": "base", "control": "base", "adapted": "adapted" if "adapted" in per_char else "base"}
        lines.append(_row("tokens per character (held-out)", [per_char.get(tokenizer_of[a]) for a in arms]))
    if bpc:
        lines.append(_row("held-out bits per character", [bpc.get(a) for a in arms]))
    if generate:
        lines.append(_row("generation: target-language characters/s",
                          [(generate.get(a) or {}).get("target_chars_per_second") for a in arms], 1))
        lines.append(_row("generation: tokens/s", [(generate.get(a) or {}).get("tokens_per_second") for a in arms], 1))
    return lines


def write_report(recipe: dict, steps, out: Path) -> Path:
    """Write <out>/report.md, <out>/report.json and <out>/eval/bpc.png from the outputs of a run's steps."""
    lines = [f"# langadapt run: {recipe.get('name', out.name)}", ""]
    if recipe.get("description"):
        lines += [str(recipe["description"]).strip(), ""]
    lines += [f"Base model `{recipe['base']}`, language `{recipe['lang']}`, run directory `{out}`.", ""]
    figures: dict = {}

    toks = _load(out / "eval" / "tokenizers.json")
    bpcs = [(s.name.removeprefix("eval-bpc-"), _load(s.output)) for s in steps if s.name.startswith("eval-bpc-")]
    bpcs = [(name, r) for name, r in bpcs if r]
    by_name = dict(bpcs)
    final = next((name for name, _ in reversed(bpcs) if name not in ("control", "base")), None)
    arm_bpc = {"base": by_name.get("base"), "adapted": by_name.get(final), "control": by_name.get("control")}
    arm_bpc = {a: r["bits_per_char"] for a, r in arm_bpc.items() if r}
    generate = {s.name.removeprefix("eval-generate-"): _load(s.output) for s in steps
                if s.name.startswith("eval-generate-")}
    generate = {a: r for a, r in generate.items() if r}
    arms = [a for a in ARMS if a in arm_bpc or a in generate] or ["base", "adapted"]
    if toks or arm_bpc:
        lines += ["## Summary", ""] + summary_table(arms, toks, arm_bpc, generate) + [""]
        figures["summary"] = {"arms": arms, "bits_per_char": arm_bpc,
                              "generation_chars_per_second": {a: g.get("target_chars_per_second")
                                                              for a, g in generate.items()}}
        if toks and len(toks["tokenizers"]) > 1:
            figures["tokens_per_char"] = [toks["tokenizers"][0]["tokens_per_char"],
                                          toks["tokenizers"][-1]["tokens_per_char"]]
        untrained = by_name.get("extended") or by_name.get("pruned")
        if "adapted" in arm_bpc and "base" in arm_bpc:
            end, base = arm_bpc["adapted"], arm_bpc["base"]
            start = (f"starts at {untrained['bits_per_char']:.3f} held-out bits per character (new rows initialised, "
                     f"untrained) and ends" if untrained else "ends")
            sentence = (f"The adapted model {start} at {end:.3f} held-out bits per character after {final}, "
                        f"{'below' if end < base else 'above'} the base model's {base:.3f}")
            if "control" in arm_bpc:
                control = arm_bpc["control"]
                sentence += (f" and {'below' if end < control else 'above'} the control arm's {control:.3f} (the "
                             "base vocabulary trained on the same corpus for the same number of tokens)")
            lines += [sentence + ".", ""]
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
        figures["bits_per_char"] = {name: r["bits_per_char"] for name, r in bpcs}
        bpc_plot([(name, r["bits_per_char"]) for name, r in bpcs], out / "eval" / "bpc.png")
        first = bpcs[0][1]
        lines += ["## Held-out bits per character", "",
                  f"Sliding window of {first['context']} tokens, stride {first['stride']}, over the first "
                  f"{first['characters']:,} held-out characters (comparable across tokenizers).", "",
                  "| model | bits/char | bits/byte | tokens/char |", "|---|---|---|---|"]
        lines += [f"| {name} | {_fmt(r['bits_per_char'])} | {_fmt(r['bits_per_byte'])} | {_fmt(r['tokens_per_char'])} |"
                  for name, r in bpcs]
        lines += ["", "![bits per character](eval/bpc.png)", ""]
    lines += _training_section(steps, out, figures)
    data = recipe.get("data") or {}
    lines += [INSTRUCTION_NOTES[p] + "\n" for p in data.get("instructions") or [] if p in INSTRUCTION_NOTES]
    if data.get("instructions_note"):
        lines += [str(data["instructions_note"]).strip(), ""]
    lines += _samples_section(generate, figures)
    lines += eval_suite_section(steps, figures)
    gguf = next((s.output for s in steps if s.name == "export-gguf" and s.output.is_file()), None)
    if gguf:
        figures["gguf"] = str(gguf)
        lines += ["## llama.cpp / Ollama", "", f"The adapted model as GGUF: `{gguf}` "
                  f"({gguf.stat().st_size / 1e6:.0f} MB; its tokenizer was checked against llama.cpp's when "
                  "written).", "", "```", f"llama-cli -m {gguf} -cnv",
                  f"echo 'FROM {gguf}' > Modelfile && ollama create adapted -f Modelfile", "```", ""]
    lines += ["## Steps", "", "Each step is a `langadapt` command; re-run one by hand with:", "", "```"]
    lines += [s.text() for s in steps] + ["```", ""]
    (out / "report.md").write_text("\n".join(lines), encoding="utf-8")
    write_json_atomic(out / "report.json", figures)
    return out / "report.md"


def _training_section(steps, out: Path, figures: dict) -> list[str]:
    trained = [s for s in steps if s.trains]
    if not trained:
        return []
    lines = ["## Training", "", "| step | stage | steps | tokens seen | train loss | held-out | minutes |",
             "|---|---|---|---|---|---|---|"]
    capped = []
    for s in trained:
        rec = _load(s.output / ADAPTATION_FILE) or {}
        held = rec.get("heldout_bpc")
        held = f"{_fmt(held)} bpc" if held is not None else (
            f"answer loss {_fmt(rec.get('heldout_answer_loss_before'))} → {_fmt(rec.get('heldout_answer_loss'))}"
            if rec.get("heldout_answer_loss") is not None else "-")
        lines.append(f"| {s.name} | {rec.get('stage', '-')} | {_fmt(rec.get('steps'))} | {_fmt(rec.get('tokens_seen'))}"
                     f" | {_fmt(rec.get('train_loss'))} | {held} | {_fmt((rec.get('seconds') or 0) / 60, 1)} |")
        if rec.get("stopped_by_max_minutes"):
            capped.append(s.name)
        figures[s.name] = {k: rec.get(k) for k in ("steps", "tokens_seen", "train_loss", "heldout_bpc",
                                                  "heldout_answer_loss_before", "heldout_answer_loss",
                                                  "stopped_by_max_minutes")}
    lines.append("")
    if capped:
        lines += [f"**The max_minutes safety cap stopped {', '.join(capped)} before its token budget**: this machine "
                  "was slower than the budget assumed, so these figures depend on its speed.", ""]
    for s in trained:
        run_dir = Path(s.options.out)
        if (run_dir / "curves.png").is_file():
            rel = run_dir.relative_to(out) if run_dir.is_relative_to(out) else run_dir
            lines += [f"![{s.name} curves]({rel}/curves.png)", ""]
    sft = next((_load(s.output / ADAPTATION_FILE) for s in trained if s.name == "sft"), None)
    if sft:
        ex = sft["train_examples"]
        lines += [f"Instruction data: {ex['kept']:,} training examples ({ex['prompt_cut']} with the prompt cut, "
                  f"{ex['answer_cut']} with the answer cut, {ex['dropped']} dropped), "
                  f"{sft['heldout_examples']['kept']:,} held out; template `{sft['template']}`.", ""]
    return lines


def _arm_results(steps, prefix: str) -> dict:
    """{arm: result JSON} of the steps named prefix + arm that wrote one, in ARMS order."""
    found = {s.name.removeprefix(prefix): _load(s.output) for s in steps if s.name.startswith(prefix)}
    return {a: found[a] for a in ARMS if found.get(a)}


def eval_suite_section(steps, figures: dict) -> list[str]:
    """Multiple-choice accuracy per subject and generation scores per task, one column per arm."""
    lines = []
    mc = _arm_results(steps, "eval-mc-")
    if mc:
        arms, first = list(mc), next(iter(mc.values()))
        lines += ["## Multiple choice", "",
                  f"Accuracy % ± standard error, {first['shots']}-shot, preset `{first['preset']}`; answers scored by "
                  "log-likelihood as tokenized inside the prompt.", "",
                  "| subject | n | chance | " + " | ".join(arms) + " |", "|---" * (len(arms) + 3) + "|"]
        for subject in [*first["subjects"], "overall"]:
            cells = [(r["overall"] if subject == "overall" else r["subjects"].get(subject)) for r in mc.values()]
            ref = cells[0]
            lines.append(f"| {subject} | {ref['n']} | {_fmt(ref['chance'], 1)} | "
                         + " | ".join(f"{c['accuracy']:.1f} ± {c['stderr']:.1f}" if c else "-" for c in cells) + " |")
        lines += ["", "Questions/s: " + ", ".join(f"{a} {_fmt(r.get('questions_per_second'), 2)}"
                                                 for a, r in mc.items()), ""]
        figures["mc"] = {a: {"overall": r["overall"], "subjects": r["subjects"]} for a, r in mc.items()}
    tasks = _arm_results(steps, "eval-tasks-")
    if tasks:
        arms, first = list(tasks), next(iter(tasks.values()))
        lines += ["## Generation tasks", "",
                  f"ROUGE-L F1 x 100 in {first['lang']} units ({first['units']}), exact match x 100 for "
                  "classification; Avg is the unweighted mean over tasks.", "",
                  "| task | n | metric | " + " | ".join(arms) + " |", "|---" * (len(arms) + 3) + "|"]
        for task, ref in first["tasks"].items():
            lines.append(f"| {task} | {ref['n']} | {ref['metric']} | "
                         + " | ".join(_fmt((r["tasks"].get(task) or {}).get("score"), 2) for r in tasks.values()) + " |")
        lines.append("| Avg | | | " + " | ".join(_fmt(r["Avg"], 2) for r in tasks.values()) + " |")
        lines += ["", "Generation speed (target-language characters/s): "
                  + ", ".join(f"{a} {_fmt(r.get('target_chars_per_second'), 1)}" for a, r in tasks.items()), ""]
        figures["tasks"] = {a: {"tasks": r["tasks"], "Avg": r["Avg"]} for a, r in tasks.items()}
    return lines


def _samples_section(generate: dict, figures: dict) -> list[str]:
    if not generate:
        return []
    first = next(iter(generate.values()))
    lines = [f"## Sample answers (held-out instructions; greedy, at most {first['max_new_tokens']} new tokens)", ""]
    samples = []
    for i, sample in enumerate(first["samples"]):
        row = {"prompt": sample["prompt"], "reference": sample["reference"],
               **{arm: r["samples"][i]["answer"] for arm, r in generate.items() if i < len(r["samples"])}}
        samples.append(row)
        lines += [f"**{i + 1}. {row['prompt'][:300]}**", "", f"- reference: {row['reference'][:300]}"]
        lines += [f"- {arm}: {row[arm][:300]}" for arm in generate if arm in row] + [""]
    figures["samples"] = samples
    return lines
