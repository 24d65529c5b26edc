"""`report.md` of a `langadapt run`: which arm pays off, in a verdict, tables and PNG plots.

It only renders what the run's steps wrote; it loads no model and recomputes nothing: the
tokenizer report, bits per char of each arm on the held-out text, the held-out scores logged
during each arm's pretraining (learning curves), the training summaries in each adapter's
adaptation.json, and the sample answers and generation speed of `eval generate` of every arm.
The first screen is the verdict, the quality-against-speed plot with its Pareto front, the
learning curves with the break-even against the control arm, and a table with a row per arm
(`langadapt.arms` computes the comparison).
"""

from __future__ import annotations

import json
from pathlib import Path

from langadapt.arms import ArmFigures, break_even, pareto_front, verdict
from langadapt.outputs import ADAPTATION_FILE, write_json_atomic

INSTRUCTION_NOTES = {
    "embedded:ko-instructions": "The instruction data is derived from the embedded training text itself, not "
                                "written by people or a model: each article of the Korean constitution "
                                "(\"대한민국헌법 제N조의 내용을 쓰세요.\" -> the article's text) and, for each "
                                "training bill, its rationale section -> its title. The two held-out bills are "
                                "never used.",
}


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _metrics(path: Path) -> list[dict]:
    """The rows of a training run's metrics.jsonl."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


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


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def arm_figures(arms, steps, out: Path, toks: dict | None) -> tuple[list[ArmFigures], list[dict]]:
    """Per arm: what the plots and the verdict need (`ArmFigures`) and the table's row."""
    by_name = {s.name: s for s in steps}
    per_char = {r["name"]: r["tokens_per_char"] for r in (toks or {}).get("tokenizers", [])}
    tokenizer_name: dict = {}
    figures, rows = [], []
    for arm in arms:
        tokenizer_name.setdefault(arm.tokenizer, arm.name)
        bpc = _load(out / "eval" / f"bpc-{arm.name}.json") or {}
        gen = _load(out / "eval" / f"generate-{arm.name}.json") or {}
        mc = _load(out / "eval" / f"mc-{arm.name}.json") or {}
        tasks = _load(out / "eval" / f"tasks-{arm.name}.json") or {}
        records = [_load(by_name[n].output / ADAPTATION_FILE) or {} for n in arm.training if n in by_name]
        curve, offset = [], 0
        for name in arm.stages:
            step = by_name.get(name)
            if step is None:
                continue
            o = step.options
            per_step = o.block_size * o.batch_size * o.grad_accum
            for r in _metrics(Path(o.out) / "metrics.jsonl"):
                if "eval_bpc" in r:
                    curve.append((offset + int(r.get("num_input_tokens_seen") or r["step"] * per_step), r["eval_bpc"]))
            offset += int((_load(step.output / ADAPTATION_FILE) or {}).get("tokens_seen") or o.max_tokens or 0)
        figures.append(ArmFigures(arm.name, bpc.get("bits_per_char"), gen.get("target_chars_per_second"),
                                  sorted(set(curve)), bpc.get("segment_bits_per_char") or []))
        rows.append({"arm": arm.name, "bits_per_char": bpc.get("bits_per_char"),
                     "bits_per_char_se": bpc.get("bits_per_char_se"),
                     "tokens_per_char": per_char.get(tokenizer_name[arm.tokenizer]),
                     "target_chars_per_second": gen.get("target_chars_per_second"),
                     "tokens_per_second": gen.get("tokens_per_second"),
                     "training_tokens": sum(int(r.get("tokens_seen") or 0) for r in records) or None,
                     "training_minutes": round(sum(r.get("seconds") or 0 for r in records) / 60, 1) if records else None,
                     "mc_accuracy": (mc.get("overall") or {}).get("accuracy"), "tasks_avg": tasks.get("Avg")})
    return figures, rows


def arms_table(rows: list[dict]) -> list[str]:
    """One row per arm: quality, token cost, speed, training."""
    columns = [("held-out bits/char", "bits_per_char", 3), ("± standard error", "bits_per_char_se", 3),
               ("tokens/char", "tokens_per_char", 3),
               ("target chars/s", "target_chars_per_second", 1), ("tokens/s", "tokens_per_second", 1),
               ("training tokens (pretrain + sft)", "training_tokens", 0), ("training min", "training_minutes", 1),
               ("MC accuracy %", "mc_accuracy", 1), ("tasks Avg", "tasks_avg", 2)]
    columns = [c for c in columns if any(r.get(c[1]) is not None for r in rows)]
    lines = ["| arm | " + " | ".join(c[0] for c in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    return lines + ["| " + r["arm"] + " | " + " | ".join(_fmt(r.get(key), digits) for _, key, digits in columns) + " |"
                    for r in rows]


def frontier_plot(figures: list[ArmFigures], front: list[str], path: Path) -> bool:
    """Held-out bits/char against target-language characters/s, one point per arm, the Pareto front joined."""
    points = [f for f in figures if f.bits_per_char is not None and f.chars_per_second is not None]
    if not points:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for f in points:
        on = f.name in front
        ax.scatter(f.chars_per_second, f.bits_per_char, s=60, color="tab:red" if on else "tab:gray", zorder=3)
        ax.annotate(f.name, (f.chars_per_second, f.bits_per_char), textcoords="offset points", xytext=(6, 4))
    line = sorted((f.chars_per_second, f.bits_per_char) for f in points if f.name in front)
    if len(line) > 1:
        ax.plot(*zip(*line), color="tab:red", label="Pareto front")
        ax.legend(loc="upper left")
    ax.set_xlabel("generation: target-language characters/s (more is faster)")
    ax.set_ylabel("held-out bits per character (lower is better)")
    ax.set_title("quality against speed, one point per arm")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def curves_plot(figures: list[ArmFigures], path: Path) -> bool:
    """Held-out bits/char against training tokens, every arm on one plot."""
    curves = [f for f in figures if len(f.curve) > 1]
    if not curves:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for f in curves:
        ax.plot(*zip(*f.curve), marker="o", label=f.name, linestyle="--" if f.name == "control" else "-")
    ax.set_xlabel("training tokens")
    ax.set_ylabel("held-out bits per character")
    ax.set_title("learning curves (same held-out text, same interval)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def comparison_section(arms, steps, out: Path, toks: dict | None, tolerance: float, lang: str,
                       figures: dict) -> list[str]:
    """The first screen: verdict, frontier, learning curves, break-even and the table of arms."""
    arm_figs, rows = arm_figures(arms, steps, out, toks)
    if not any(r["bits_per_char"] is not None or r["target_chars_per_second"] is not None for r in rows):
        return []
    front = pareto_front(arm_figs)
    control = next((f for f in arm_figs if f.name == "control"), None)
    evens = [break_even(f.name, f.curve, control.curve) for f in arm_figs
             if control is not None and f.name not in ("base", "control") and f.curve and control.curve]
    evens = [e for e in evens if e is not None]
    lines = ["## Verdict", ""]
    lines += [f"- {v}" for v in verdict(arm_figs, tolerance, unit=lang)]
    if front:
        lines.append(f"- On the quality-against-speed front (no other arm both better and faster): {', '.join(front)}.")
    for e in evens:
        budget = max(x for x, _ in next(f for f in arm_figs if f.name == e.arm).curve)
        lines.append(f"- Break-even against the control: {e.sentence(budget)}.")
    lines += ["", "Single run per arm, the same corpus, seed and training tokens; bits/char on held-out text no arm "
              "trained on (see the held-out section).", ""]
    if frontier_plot(arm_figs, front, out / "eval" / "frontier.png"):
        lines += ["![quality against speed](eval/frontier.png)", ""]
    if curves_plot(arm_figs, out / "eval" / "curves.png"):
        first = next(s for s in steps if s.name in arms[-1].stages) if arms[-1].stages else None
        what = (f" (the first {first.options.heldout_max_chars:,} held-out characters, window {first.options.block_size}"
                " tokens)") if first else ""
        lines += ["![learning curves](eval/curves.png)", "",
                  f"Learning curves: held-out bits/char scored during pretraining{what}; the table's figures are "
                  "the final models' (after sft, where there is one), scored with the eval settings.", ""]
    lines += ["## Arms", ""] + arms_table(rows) + [""]
    figures["arms"] = rows
    figures["front"] = front
    figures["curves"] = {f.name: f.curve for f in arm_figs if f.curve}
    figures["break_even"] = [{"arm": e.arm, "tokens": e.tokens, "measured": e.measured, "gap_at_end": e.gap_at_end,
                              "fit": e.fit} for e in evens]
    figures["verdict"] = verdict(arm_figs, tolerance, unit=lang)
    return lines


def write_report(recipe: dict, steps, arms, out: Path, tolerance: float = 0.10) -> Path:
    """Write <out>/report.md, <out>/report.json and the plots under <out>/eval from the outputs of a run's steps."""
    lines = [f"# langadapt run: {recipe.get('name', out.name)}", ""]
    if recipe.get("description"):
        lines += [str(recipe["description"]).strip(), ""]
    lines += [f"Base model `{recipe['base']}`, language `{recipe['lang']}`, run directory `{out}`; arms: "
              f"{', '.join(a.name for a in arms)}.", ""]
    figures: dict = {}
    (out / "eval").mkdir(parents=True, exist_ok=True)
    toks = _load(out / "eval" / "tokenizers.json")
    lines += comparison_section(arms, steps, out, toks, tolerance, str(recipe["lang"]), figures)
    generate = {a.name: _load(out / "eval" / f"generate-{a.name}.json") for a in arms}
    generate = {a: r for a, r in generate.items() if r}
    lines += _samples_section(generate, figures)
    bpcs = [(s.name.removeprefix("eval-bpc-"), _load(s.output)) for s in steps if s.name.startswith("eval-bpc-")]
    bpcs = [(name, r) for name, r in bpcs if r]
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
    lines += eval_suite_section(steps, [a.name for a in arms], figures)
    export = next((s for s in steps if s.name == "export-gguf" and s.output.is_file()), None)
    if export:
        gguf = export.output
        figures["gguf"] = str(gguf)
        arm = next((a.name for a in arms if a.model == export.options.model), "adapted")
        lines += ["## llama.cpp / Ollama", "", f"The {arm} arm's model as GGUF: `{gguf}` "
                  f"({gguf.stat().st_size / 1e6:.0f} MB; its tokenizer was checked against llama.cpp's when "
                  "written).", "", "```", f"llama-cli -m {gguf} -cnv",
                  f"echo 'FROM {gguf}' > Modelfile && ollama create {arm} -f Modelfile", "```", ""]
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


def _arm_results(steps, prefix: str, arms: list[str]) -> dict:
    """{arm: result JSON} of the steps named prefix + arm that wrote one, in the order of `arms`."""
    found = {s.name.removeprefix(prefix): _load(s.output) for s in steps if s.name.startswith(prefix)}
    return {a: found[a] for a in arms if found.get(a)}


def eval_suite_section(steps, arms: list[str], figures: dict) -> list[str]:
    """Multiple-choice accuracy per subject and generation scores per task, one column per arm."""
    lines = []
    mc = _arm_results(steps, "eval-mc-", arms)
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
    tasks = _arm_results(steps, "eval-tasks-", arms)
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
