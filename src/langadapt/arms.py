"""Arms of a run, and how they compare.

An arm is one way of adapting the base model: a tokenizer (extended, pruned or the base's own),
an initialisation, pretraining stages and an sft. A run recipe's `arms:` lists named arms; each
overrides the recipe's own sections:

- `tokenizer` and `model`: merged key by key (`tokenizer.method`: extend, prune, or keep/none);
- `pretrain`: a mapping sets those keys in every stage; a list replaces the stages;
- `sft`: merged key by key.

Two arms are always there: `base` (the base model itself, untrained) and `control` (the base
vocabulary, one LoRA stage on as many tokens as the recipe's pretrain stages together, then the
same sft; the recipe's `control:` mapping overrides its pretrain keys). Every arm trains on the
same corpus with the same seed and token budget. A recipe without `arms:` has one arm,
`adapted`, made of its own sections, and the control arm only when it says `control:`.

The comparison is pure arithmetic on what the steps measured: `pareto_front` (quality against
speed), `break_even` (the training tokens at which an arm's learning curve crosses the
control's) and `verdict`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from langadapt.errors import LangadaptError
from langadapt.model.score import standard_error

ARM_KEYS = ("name", "tokenizer", "model", "pretrain", "sft")
MIN_FIT_POINTS = 3         # curve points after the start needed to extrapolate a break-even
MAX_EXTRAPOLATION = 100    # no crossing is predicted beyond this many times the budget
RESERVED = ("base", "control")
# What the control arm does not take from the recipe's last pretrain stage: the budget (it gets the
# total of every stage), and what only makes sense for a changed vocabulary. bpe_dropout is for a
# tokenizer extended on the corpus; on the base vocabulary it cost the control 0.08 bits/char
# (docs/benchmarks.md).
NOT_INHERITED_BY_CONTROL = ("max_tokens", "max_steps", "epochs", "new_rows_only", "new_input_rows_only",
                            "bpe_dropout", "edge_layers", "resume", "overwrite")


@dataclass
class ArmSpec:
    """One arm as the recipe gives it: its sections, before any options object is built."""

    name: str
    prefix: str                    # where its outputs go under the run dir: "" (the recipe's own arm) or "NAME/"
    tokenizer: dict
    model: dict | None
    stages: list[dict]
    sft: dict | None
    control: bool = False


def _merged(base, override, where: str):
    if override is None:
        return base
    if not isinstance(override, dict):
        raise LangadaptError(f"{where}: must be a mapping of keys to values")
    return {**(base or {}), **override}


def arm_specs(recipe: dict, where: str) -> list[ArmSpec]:
    """The trained arms of a recipe, in order: its own (`adapted`) or the listed `arms:`, then the
    control arm (always with `arms:`, else when the recipe says `control:`)."""
    tokenizer = dict(recipe.get("tokenizer") or {})
    stages = list(recipe.get("pretrain") or [])
    listed = recipe.get("arms")
    if listed is None:
        specs = [ArmSpec("adapted", "", tokenizer, recipe.get("model"), stages, recipe.get("sft"))]
    else:
        if not isinstance(listed, list) or not listed:
            raise LangadaptError(f"{where}: arms: must be a list of arms, each a mapping with a name")
        specs = []
        for i, arm in enumerate(listed):
            at = f"{where}: arms[{i}]"
            if not isinstance(arm, dict) or not arm.get("name"):
                raise LangadaptError(f"{at}: each arm is a mapping with a name, e.g. {{name: ext-100, tokenizer: "
                                     "{vocab_size: 100}}")
            name = str(arm["name"])
            for key in arm:
                if key not in ARM_KEYS:
                    raise LangadaptError(f"{at} ({name}): unknown key '{key}'; an arm sets {', '.join(ARM_KEYS[1:])}")
            if name in RESERVED or name in (s.name for s in specs):
                raise LangadaptError(f"{at}: the name '{name}' is " + ("taken by an arm every run has"
                                     if name in RESERVED else "used by an earlier arm"))
            if not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
                raise LangadaptError(f"{at}: the name '{name}' names a directory: use letters, digits, '-', '_', '.'")
            arm_stages = arm.get("pretrain")
            if isinstance(arm_stages, dict):
                arm_stages = [{**s, **arm_stages} for s in stages]
            elif arm_stages is not None and not isinstance(arm_stages, list):
                raise LangadaptError(f"{at} ({name}): pretrain: a mapping (keys set in every stage) or a list of stages")
            specs.append(ArmSpec(name, f"{name}/", _merged(tokenizer, arm.get("tokenizer"), f"{at}: tokenizer"),
                                 _merged(recipe.get("model"), arm.get("model"), f"{at}: model"),
                                 stages if arm_stages is None else arm_stages,
                                 _merged(recipe.get("sft"), arm.get("sft"), f"{at}: sft")))
    control = recipe.get("control")
    if listed is not None or control is not None:
        specs.append(control_spec(control, stages, recipe.get("sft"), where))
    return specs


def control_spec(section, stages: list[dict], sft: dict | None, where: str) -> ArmSpec:
    """The control arm: the base vocabulary, LoRA on the same tokens as every stage together (the
    planner fills in the total), the last stage's other settings, then the same sft."""
    section = {} if section in (None, True) else section
    if not isinstance(section, dict):
        raise LangadaptError(f"{where}: control: must be true or a mapping of pretrain keys for the control arm")
    if not stages:
        raise LangadaptError(f"{where}: control: needs pretrain stages to match")
    last = stages[-1] if isinstance(stages[-1], dict) else {}
    inherited = {k: v for k, v in last.items() if k not in NOT_INHERITED_BY_CONTROL}
    return ArmSpec("control", "control/", {"method": "keep"}, None, [{**inherited, "stage": "lora", **section}], sft,
                   control=True)


# ----------------------------------------------------------------------------- comparison

@dataclass
class ArmFigures:
    """What a run measured of one arm (None where it was not measured)."""

    name: str
    bits_per_char: float | None = None
    chars_per_second: float | None = None       # target-language characters/s in generation
    curve: list[tuple[int, float]] = field(default_factory=list)  # (training tokens, held-out bits/char)
    segments: list[float] = field(default_factory=list)  # bits/char of equal stretches of the held-out text


def pareto_front(arms: list[ArmFigures]) -> list[str]:
    """Names of the arms no other arm beats on both counts: lower bits/char and more characters/s."""
    measured = [a for a in arms if a.bits_per_char is not None and a.chars_per_second is not None]
    front = []
    for a in measured:
        dominated = any(b.bits_per_char <= a.bits_per_char and b.chars_per_second >= a.chars_per_second
                        and (b.bits_per_char < a.bits_per_char or b.chars_per_second > a.chars_per_second)
                        for b in measured)
        if not dominated:
            front.append(a.name)
    return front


@dataclass
class BreakEven:
    """Where an arm's learning curve meets the control's."""

    arm: str
    tokens: float | None           # training tokens at the crossing (None: not reached and no crossing predicted)
    measured: bool                 # True: within the curves; False: an extrapolation
    gap_at_end: float              # arm minus control, bits/char, at the last common point
    fit: str | None = None         # how the extrapolation was made

    def sentence(self, budget: int) -> str:
        if self.tokens is not None and self.measured:
            if self.tokens == 0:
                return (f"{self.arm} is at or below the control's curve from its first point "
                        f"({self.gap_at_end:+.3f} bits/char at the end)")
            return f"{self.arm} crosses the control's curve at about {self.tokens:,.0f} training tokens (measured)"
        lead = (f"{self.arm} does not reach the control within {budget:,} training tokens "
                f"({self.gap_at_end:+.3f} bits/char at the end)")
        if self.tokens is None:
            if not self.fit:
                return lead + f"; fewer than {MIN_FIT_POINTS} curve points after the start, too few to extrapolate"
            return lead + (f" ({self.fit})" if "no crossing" in self.fit
                           else f"; the gap does not narrow ({self.fit}), so no crossing is predicted")
        return lead + f"; **extrapolated** crossing at about {self.tokens:,.0f} tokens ({self.fit})"


def _interpolate(curve: list[tuple[float, float]], x: float) -> float:
    """The curve's value at `x`, linear between its points (held flat outside them)."""
    if x <= curve[0][0]:
        return curve[0][1]
    for (x0, y0), (x1, y1) in zip(curve, curve[1:]):
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0) if x1 > x0 else y1
    return curve[-1][1]


def break_even(arm: str, curve: list[tuple[int, float]], control: list[tuple[int, float]]) -> BreakEven | None:
    """The training tokens at which `curve` first reaches `control` (both: (tokens, bits/char), the
    same held-out text), linearly interpolated between measured points. Not reached: the gap
    (arm - control) is fitted as a + b ln(tokens) over the points after the start (at least
    MIN_FIT_POINTS); if it narrows (b < 0) the crossing is extrapolated to exp(-a / b), unless that
    is beyond MAX_EXTRAPOLATION times the budget."""
    curve, control = sorted(curve), sorted(control)
    if not curve or not control:
        return None
    gaps = [(x, y - _interpolate(control, x)) for x, y in curve if x <= control[-1][0]]
    if not gaps:
        return None
    for (x0, g0), (x1, g1) in zip(gaps, gaps[1:]):
        if g1 <= 0 < g0:
            return BreakEven(arm, x0 + (x1 - x0) * g0 / (g0 - g1), True, gaps[-1][1])
    if all(g <= 0 for _, g in gaps):  # level with or below the control at every point (e.g. the same start)
        return BreakEven(arm, gaps[0][0], True, gaps[-1][1])
    later = [(math.log(x), g) for x, g in gaps if x > 0]
    if len(later) < MIN_FIT_POINTS:
        return BreakEven(arm, None, False, gaps[-1][1])
    n = len(later)
    mx, mg = sum(x for x, _ in later) / n, sum(g for _, g in later) / n
    sxx = sum((x - mx) ** 2 for x, _ in later)
    b = sum((x - mx) * (g - mg) for x, g in later) / sxx if sxx else 0.0
    a = mg - b * mx
    fit = f"least squares of the gap against ln(tokens) over {n} points: gap = {a:.3f} {b:+.4f} ln(tokens)"
    if b >= 0:
        return BreakEven(arm, None, False, gaps[-1][1], fit)
    crossing = -a / b
    if crossing > math.log(MAX_EXTRAPOLATION * gaps[-1][0]):
        return BreakEven(arm, None, False, gaps[-1][1], fit + f"; it narrows too slowly to cross within "
                         f"{MAX_EXTRAPOLATION}x the budget, so no crossing is predicted")
    return BreakEven(arm, math.exp(crossing), False, gaps[-1][1], fit)


def verdict(arms: list[ArmFigures], tolerance: float = 0.10, unit: str = "target-language") -> list[str]:
    """Sentences computed from the figures: the best quality, the fastest, the fastest within
    `tolerance` bits/char of the best, and, where the arms' held-out stretches were scored, every
    arm's difference from the best with the standard error of the paired differences."""
    scored = [a for a in arms if a.bits_per_char is not None]
    if not scored:
        return []
    best = min(scored, key=lambda a: a.bits_per_char)
    lines = [f"Best quality: **{best.name}** ({best.bits_per_char:.3f} held-out bits/char)."]
    timed = [a for a in scored if a.chars_per_second]
    if timed:
        fastest = max(timed, key=lambda a: a.chars_per_second)
        ref = best.chars_per_second
        times = f", {fastest.chars_per_second / ref:.1f}x the best-quality arm" if ref and fastest is not best else ""
        lines.append(f"Fastest: **{fastest.name}** ({fastest.chars_per_second:.1f} {unit} characters/s in generation"
                     f"{times}; {fastest.bits_per_char - best.bits_per_char:+.3f} bits/char against the best).")
        near = [a for a in timed if a.bits_per_char <= best.bits_per_char + tolerance]
        if near:
            pick = max(near, key=lambda a: a.chars_per_second)
            lines.append(f"Fastest within {tolerance:.2f} bits/char of the best: **{pick.name}** "
                         f"({pick.bits_per_char:.3f} bits/char, {pick.chars_per_second:.1f} characters/s).")
    paired = [(a, standard_error([x - y for x, y in zip(a.segments, best.segments)])) for a in scored
              if a is not best and len(a.segments) == len(best.segments) > 1]
    if paired:
        parts = [f"{a.name} {a.bits_per_char - best.bits_per_char:+.3f} ± {se:.3f}"
                 + (" (within 2 standard errors: not told apart on this text)"
                    if a.bits_per_char - best.bits_per_char < 2 * se else "") for a, se in paired]
        lines.append(f"Against {best.name}, paired over the same {len(best.segments)} stretches of held-out text "
                     f"(difference ± standard error): {'; '.join(parts)}.")
    return lines
