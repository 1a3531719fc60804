"""The papers' claims and the project's controls, decided on the records by a stated rule.

A :class:`Claim` is stated before any run: two arms (optimizer + the hyper-parameters set on
purpose), one primary metric, the direction the paper claims, the paper's effect size and an
equivalence margin. :func:`evaluate` finds the claim's arms in every section (task) that ran
both and makes one :class:`ClaimRow` per (claim, task); the verdicts come after a Holm
correction over every row of the suite. :data:`RULE` is the rule as the report prints it.

Primary metrics (validation metrics are never used here; they are for tuning):

* ``ACCURACY``: test accuracy at the end of the budget, in points (the papers' tables), paired
  by seed; effect = treatment minus control.
* ``BPC`` (``charlm``), ``SWD`` (``ddpm`` on 2-D data), ``FD`` (``ddpm`` on digits): test bits
  per character, sliced Wasserstein distance or Fréchet distance at the end of the budget, lower
  is better, paired by seed; effect = ``100 (control - treatment) / mean(control)``, the percent
  by which the treatment lowers the metric (the papers report other metrics, SOP accuracy, FID
  and IS, so their gains enter as relative gains).
* ``EQUAL_TIME``: test accuracy in points at equal wall-clock, for the adaptive p schedule: each
  run's cost is charged in measured step-equivalents (:func:`charged`), and its test accuracy
  is read from its learning curve at the step where that cost equals the control's budget.
* ``GENERALISATION``: grokking, the step at which test accuracy first reaches τ (the end point
  of the grokking gap), a time-to-event: a run that never gets there, whether or not it fitted
  its training set, is censored at its budget. Log-rank test; effect = the log hazard ratio
  treatment vs control (positive: the treatment generalises sooner). The gap itself is not the
  test's metric because a run that never fits has no gap to censor; it is reported beside.
* ``BOUND`` (the quadratic): a known-answer check of a theorem, not a test (:class:`BoundClaim`):
  every momentum-free, constant-lr run's late loss must be at or above the theorem's lower bound.

Which metric a section's claims use is :func:`primary_metric`: a claim is tested only where its
metric is the section's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from geoptim.bench import stats
from geoptim.bench.results import Section, Series, fmt_sample, paired
from geoptim.bench.suites import ADAPTIVE_P, CHARLM_WD, SHUFFLED_P
from geoptim.bench.tasks.quadratic import PROBLEMS

ALPHA = stats.ALPHA
POWER = stats.POWER

REPRODUCED = "reproduced"
REFUTED = "refuted"
EQUIVALENT = "equivalent"
UNDERPOWERED = "underpowered"
NOT_REPRODUCED = "not reproduced (powered)"
VERDICTS = (REPRODUCED, REFUTED, EQUIVALENT, UNDERPOWERED, NOT_REPRODUCED)

ACCURACY = "test accuracy (points)"
BPC = "test bits per char (% lower)"
SWD = "test sliced Wasserstein (% lower)"
FD = "test Fréchet distance (% lower)"
EQUAL_TIME = "test accuracy at equal wall-clock (points)"
GENERALISATION = "steps to test acc ≥ τ (log HR)"
BOUND = "late loss / lower bound (log)"


@dataclass(frozen=True)
class PairedMetric:
    """An end-of-run metric compared paired by seed: ``final[key]`` of each run, shown as
    ``scale * value`` at ``digits`` decimals. :meth:`signed` puts it in effect units, so that
    the treatment-minus-control difference is positive when the treatment is better."""

    key: str
    scale: float = 1.0
    lower_is_better: bool = False
    relative: bool = False
    digits: int = 2

    def signed(self, values: Sequence[float], control_mean: float) -> np.ndarray:
        """``values`` in effect units: ``scale * value``, negated when lower is better; when
        ``relative``, in percent of ``control_mean`` instead."""
        sign = -1.0 if self.lower_is_better else 1.0
        scale = 100.0 / control_mean if self.relative else self.scale
        return sign * scale * np.asarray(values, dtype=float)


PAIRED_METRICS = {
    ACCURACY: PairedMetric("test_acc", scale=100.0),
    BPC: PairedMetric("test_bpc", lower_is_better=True, relative=True, digits=3),
    SWD: PairedMetric("test_swd", lower_is_better=True, relative=True, digits=4),
    FD: PairedMetric("test_fd", lower_is_better=True, relative=True, digits=2),
    EQUAL_TIME: PairedMetric("test_acc", scale=100.0),  # read off the curves by :func:`charged`
}
"""The paired metrics by name; :func:`primary_metric` picks one per section."""

RULE = f"""\
**Rule.** Each row compares a treatment with a control on one pre-stated primary metric, signed so
that a positive effect is the direction the claim states. Test accuracy at the end of the budget
(points), and test bits per character, sliced Wasserstein or Fréchet distance (lower is better; in
percent of the control's mean, positive: the treatment lower): paired t-test over the seeds both
arms ran (seed k: same initialisation and data order), Welch's t-test when the arms share fewer than
two seeds; the effect is the mean difference with its 95% interval. Grokking: the step at which test
accuracy first reaches τ, a time-to-event; a run that never reaches it (fitted or not) is censored
at its budget, none is dropped; log-rank test, the effect is the Peto log hazard ratio (positive:
the treatment generalises sooner) with its 95% interval. The p-values of all rows of the suite are
Holm-adjusted. MDE: the smallest true effect the test detects with {POWER:.0%} power at α = {ALPHA}
(two-sided), for the n and spread measured (noncentral t; normal for the log-rank). The verdict is
the first that applies: *{EQUIVALENT}*: TOST at α = {ALPHA}, i.e. the 90% interval inside ±margin (a
difference too small to matter, significant or not); *{REPRODUCED}*: Holm p < α and the effect
positive; *{REFUTED}*: Holm p < α and the effect negative; *{UNDERPOWERED}*: the MDE exceeds the
paper's effect (or fewer than two values per arm), so the run could not have seen it;
*{NOT_REPRODUCED}*: none of these, with an MDE at or below the paper's effect, so an effect as large
as the paper's would probably have been seen. "n for paper" is the number of seeds per arm that
would give {POWER:.0%} power for the paper's effect at the spread measured (the pilot power
analysis; for the log-rank scaled from the information measured). A theorem's lower bound on the
quadratic is a known answer, not a test, and outside the Holm correction: *{REPRODUCED}* when every
run's late loss is at or above the bound, *{REFUTED}* when one is below; its effect is the smallest
log(late loss / bound) over the runs, with the range."""


@dataclass(frozen=True)
class Arm:
    """One side of a comparison: an optimizer with hyper-parameters set on purpose.

    ``variant`` must equal the series' variant; a key mapped to ``ANY`` matches any value.
    """

    optimizer: str
    variant: dict[str, Any] = field(default_factory=dict)

    def matches(self, series: Series) -> bool:
        if series.optimizer != self.optimizer or set(series.variant) != set(self.variant):
            return False
        return all(v is ANY or series.variant[k] == v for k, v in self.variant.items())


ANY = object()
"""A variant value in an :class:`Arm` that matches every value."""


@dataclass(frozen=True)
class Claim:
    """A pre-stated comparison: ``treatment`` beats ``control`` on ``metric`` by about
    ``paper_effect`` (metric units, the paper's smallest reported gain unless ``effect_note``
    says otherwise); ``margin`` is the equivalence margin (below ``paper_effect``)."""

    name: str
    source: str
    treatment: Arm
    control: Arm
    paper_effect: float
    margin: float
    effect_note: str
    metric: str = ACCURACY
    group: str = ""


@dataclass
class ClaimRow:
    """One claim tested on one task."""

    claim: str
    source: str
    task: str
    metric: str
    treatment: str
    control: str
    measured: str
    test: str
    n: str
    effect: float
    low: float
    high: float
    mde: float
    paper_effect: float
    margin: float
    n_for_paper: int | None
    p: float | None
    p_tost: float | None
    p_holm: float | None = None
    verdict: str = UNDERPOWERED
    note: str = ""
    group: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def verdict(
    effect: float,
    mde: float,
    p_holm: float | None,
    p_tost: float | None,
    paper_effect: float,
    alpha: float = ALPHA,
) -> str:
    """The verdict of :data:`RULE` from a row's numbers (``None``: no test was possible)."""
    if p_tost is not None and p_tost < alpha:
        return EQUIVALENT
    if p_holm is not None and p_holm < alpha:
        return REPRODUCED if effect > 0 else REFUTED
    if p_holm is None or not mde <= paper_effect:
        return UNDERPOWERED
    return NOT_REPRODUCED


# --------------------------------------------------------------------------------------------
# The claims

LPSGDM_EFFECT = 0.68
LPSGDM_NOTE = (
    "LPSGD paper, smallest 200-epoch gain of LPSGDM over SGDM: CIFAR-10 VGG-11 90.73 "
    "vs 90.05 (CIFAR-100 VGG-11 gains 0.30)"
)
AGR_EFFECT = 0.5
AGR_NOTE = "AGR paper §5.3: “>0.5% improvement” (ConvNext, Swin; Tiny-ImageNet)"
GROK_EFFECT = math.log(2.0)
GROK_NOTE = (
    "SepNorm paper fig. 1 gives one run per method and no numbers; the gaps drawn "
    "differ by about 2x, taken as a hazard ratio of 2"
)
GROK_MARGIN = math.log(1.25)
ALBERT_NOTE = (
    "AGR paper table 6 (ALBERT, WikiText-2) reports sentence-order accuracy, not a likelihood: "
    "its smallest gain, 83.21 vs 82.94 at weight decay 1e-3, is 0.33% of the control, taken "
    "as 0.33% lower bits per char"
)
DDPM_AGR_NOTE = (
    "AGR paper table 1 (DDPM, CIFAR-10, 2000 epochs): Adan-AGR's IS 9.34 vs Adan's 9.22, 1.3% "
    "of the control (its FID row for Adan is lost in extraction), taken as 1.3% lower distance"
)
DDPM_LATE_NOTE = (
    "AGR paper table 8 (DDPM, CIFAR-10): Adan-AGR stopped at epoch 1200 of 2000, FID 7.02 vs "
    "7.44 with AGR throughout, 5.6% of the control"
)

LPSGDM = Arm("lpsgdm")
STEP_SIZE = "step-size control"

CLAIMS: tuple[Claim, ...] = (
    Claim(
        "LPSGDM beats SGD with momentum",
        "LPSGD paper, tables 1-2",
        treatment=LPSGDM,
        control=Arm("sgdm"),
        paper_effect=LPSGDM_EFFECT,
        margin=0.5,
        effect_note=LPSGDM_NOTE,
        group="headline",
    ),
    Claim(
        "Cosine p beats fixed p = 2",
        "this project (step-size control)",
        treatment=LPSGDM,
        control=Arm("lpsgdm", {"p_max": 2.0}),
        paper_effect=LPSGDM_EFFECT,
        margin=0.5,
        effect_note=LPSGDM_NOTE,
        group=STEP_SIZE,
    ),
    Claim(
        "Cosine p beats fixed p = p_max",
        "this project (step-size control)",
        treatment=LPSGDM,
        control=Arm("lpsgdm", {"p_schedule": "constant"}),
        paper_effect=LPSGDM_EFFECT,
        margin=0.5,
        effect_note=LPSGDM_NOTE,
        group=STEP_SIZE,
    ),
    Claim(
        "Cosine p beats SGDM on LPSGDM's update-RMS schedule",
        "this project (step-size control)",
        treatment=LPSGDM,
        control=Arm("sgdm_rms"),
        paper_effect=LPSGDM_EFFECT,
        margin=0.5,
        effect_note=LPSGDM_NOTE,
        group=STEP_SIZE,
    ),
    Claim(
        "Too large a p_max hurts (preset p_max beats p_max 14)",
        "LPSGD paper, fig. 4",
        treatment=LPSGDM,
        control=Arm("lpsgdm", {"p_max": 14.0}),
        paper_effect=LPSGDM_EFFECT,
        margin=0.5,
        effect_note="no number in the paper (fig. 4); the paper's smallest gain as a stand-in",
    ),
    Claim(
        "AGR improves AdamW",
        "AGR paper, tables 3-5",
        treatment=Arm("adamw_agr"),
        control=Arm("adamw"),
        paper_effect=AGR_EFFECT,
        margin=0.25,
        effect_note=AGR_NOTE,
        group="agr",
    ),
    Claim(
        "AGR improves Adan",
        "AGR paper, tables 1-2",
        treatment=Arm("adan_agr"),
        control=Arm("adan"),
        paper_effect=AGR_EFFECT,
        margin=0.25,
        effect_note="the paper reports Adan-AGR only as FID/IS; AdamW-AGR's 0.5 points instead",
        group="agr",
    ),
    Claim(
        "Stopping AGR late helps (AdamW-AGR)",
        "AGR paper, table 7",
        treatment=Arm("adamw_agr", {"agr_until": ANY}),
        control=Arm("adamw_agr"),
        paper_effect=0.56,
        margin=0.25,
        effect_note="AGR paper table 7: AGR until epoch 250 of 300, 73.58 vs 73.02",
        group="agr",
    ),
    Claim(
        "First-moment AGR (paper's prose) beats AGR on both moments (official code)",
        "AGR paper §3 vs its code",
        treatment=Arm("adamw_agr", {"agr_moments": "first"}),
        control=Arm("adamw_agr"),
        paper_effect=AGR_EFFECT,
        margin=0.25,
        effect_note="no claim either way; AGR's 0.5 points",
        group="agr",
    ),
    Claim(
        "LPSGD beats plain SGD",
        "LPSGD paper, fig. 2",
        treatment=Arm("lpsgd"),
        control=Arm("sgd"),
        paper_effect=LPSGDM_EFFECT,
        margin=0.5,
        effect_note="fig. 2 draws the gain (no momentum, ResNet-18/CIFAR-10, ResNet-50/CIFAR-100) "
        "but its numbers were lost in extraction; LPSGDM's smallest gain as a stand-in",
    ),
    Claim(
        "SepNorm beats Lion",
        "SepNorm paper, table 1",
        treatment=Arm("sepnorm"),
        control=Arm("lion"),
        paper_effect=0.15,
        margin=0.1,
        effect_note="SepNorm paper table 1 (ViT / Mixer / DeiT on ImageNet), smallest gain over "
        "Lion: Mixer-B/16 74.19 vs 74.04",
        group="sepnorm",
    ),
    Claim(
        "SepNorm beats AdamW",
        "SepNorm paper, tables 1-2",
        treatment=Arm("sepnorm"),
        control=Arm("adamw"),
        paper_effect=0.11,
        margin=0.1,
        effect_note="SepNorm paper table 1, smallest gain over AdamW: DeiT ViT-S/16 83.67 vs 83.56",
        group="sepnorm",
    ),
    Claim(
        "SepNorm beats AdamW at a larger batch, lr scaled linearly",
        "SepNorm paper, table 2",
        treatment=Arm("sepnorm", {"lr": ANY}),
        control=Arm("adamw", {"lr": ANY}),
        paper_effect=0.32,
        margin=0.1,
        effect_note="SepNorm paper table 2 (ResNet-50, ImageNet, batch 64 / 256 / 512, lr scaled "
        "linearly), smallest gain over AdamW: 76.460 vs 76.137 at batch 256",
        group="sepnorm",
    ),
    Claim(
        "AGR improves AdamW (language model)",
        "AGR paper, table 6",
        treatment=Arm("adamw_agr"),
        control=Arm("adamw"),
        paper_effect=0.33,
        margin=0.15,
        effect_note=ALBERT_NOTE,
        metric=BPC,
        group="agr",
    ),
    *(
        Claim(
            f"AGR improves AdamW at weight decay {wd:g} (language model)",
            "AGR paper, table 6",
            treatment=Arm("adamw_agr", {"weight_decay": wd}),
            control=Arm("adamw", {"weight_decay": wd}),
            paper_effect=0.33,
            margin=0.15,
            effect_note=ALBERT_NOTE,
            metric=BPC,
            group="agr",
        )
        for wd in CHARLM_WD
    ),
    Claim(
        "SepNorm beats Lion (language model)",
        "SepNorm paper, table 3",
        treatment=Arm("sepnorm"),
        control=Arm("lion"),
        paper_effect=0.11,
        margin=0.05,
        effect_note="SepNorm paper table 3 (T5 on GLUE), smallest gain over Lion among the tasks "
        "it claims: MNLI-m 87.0 vs 86.9, 0.11% of the control",
        metric=BPC,
        group="sepnorm",
    ),
    Claim(
        "SepNorm beats AdamW (language model)",
        "SepNorm paper, table 3",
        treatment=Arm("sepnorm"),
        control=Arm("adamw"),
        paper_effect=0.32,
        margin=0.15,
        effect_note="SepNorm paper table 3, smallest gain over AdamW among the tasks it claims "
        "(QQP and MNLI-m tie): MRPC F1 94.2 vs 93.9, 0.32% of the control",
        metric=BPC,
        group="sepnorm",
    ),
    *(
        claim
        for metric in (SWD, FD)
        for claim in (
            Claim(
                "AGR improves Adan (diffusion)",
                "AGR paper, tables 1-2",
                treatment=Arm("adan_agr"),
                control=Arm("adan"),
                paper_effect=1.3,
                margin=0.5,
                effect_note=DDPM_AGR_NOTE,
                metric=metric,
                group="agr",
            ),
            Claim(
                "Stopping AGR late helps (Adan-AGR, diffusion)",
                "AGR paper, table 8",
                treatment=Arm("adan_agr", {"agr_until": ANY}),
                control=Arm("adan_agr"),
                paper_effect=5.6,
                margin=2.0,
                effect_note=DDPM_LATE_NOTE,
                metric=metric,
                group="agr",
            ),
        )
    ),
    Claim(
        "Grokking: SepNorm generalises before Lion",
        "SepNorm paper, fig. 1",
        treatment=Arm("sepnorm"),
        control=Arm("lion"),
        paper_effect=GROK_EFFECT,
        margin=GROK_MARGIN,
        effect_note=GROK_NOTE,
        metric=GENERALISATION,
    ),
    Claim(
        "Grokking: Lion generalises before AdamW",
        "SepNorm paper, fig. 1",
        treatment=Arm("lion"),
        control=Arm("adamw"),
        paper_effect=GROK_EFFECT,
        margin=GROK_MARGIN,
        effect_note=GROK_NOTE,
        metric=GENERALISATION,
    ),
    Claim(
        "Grokking: OrtSepNorm generalises before SepNorm",
        "SepNorm paper, fig. 1",
        treatment=Arm("ortsepnorm"),
        control=Arm("sepnorm"),
        paper_effect=GROK_EFFECT,
        margin=GROK_MARGIN,
        effect_note=GROK_NOTE,
        metric=GENERALISATION,
    ),
)
"""Every claim, in report order. The grokking claims are also tested at matched
regularisation (:func:`matched_regularisation`)."""

# --------------------------------------------------------------------------------------------
# Issue 15: LPSGDM with a curvature-adaptive p against the cosine schedule, fixed p and a
# control with the adaptive run's p values in shuffled blocks (no paper claims any of these: the
# paper's smallest gain is the stand-in effect size).

ADAPTIVE = "adaptive p"
ADAPTIVE_ARM = Arm("lpsgdm", ADAPTIVE_P)
ADAPTIVE_NOTE = "no paper; the LPSGD paper's smallest gain of LPSGDM over SGDM as a stand-in"


def _adaptive_claim(name: str, treatment: Arm, control: Arm, metric: str = ACCURACY) -> Claim:
    return Claim(
        name,
        "this project (issue 15)",
        treatment=treatment,
        control=control,
        paper_effect=LPSGDM_EFFECT,
        margin=0.5,
        effect_note=ADAPTIVE_NOTE,
        metric=metric,
        group=ADAPTIVE,
    )


ADAPTIVE_CLAIMS: tuple[Claim, ...] = (
    _adaptive_claim("Adaptive p beats cosine p", ADAPTIVE_ARM, LPSGDM),
    _adaptive_claim(
        "Adaptive p beats cosine p at equal wall-clock", ADAPTIVE_ARM, LPSGDM, EQUAL_TIME
    ),
    _adaptive_claim(
        "Adaptive p beats its shuffled control", ADAPTIVE_ARM, Arm("lpsgdm", SHUFFLED_P)
    ),
    _adaptive_claim(
        "Adaptive p beats its shuffled control at equal wall-clock",
        ADAPTIVE_ARM,
        Arm("lpsgdm", SHUFFLED_P),
        EQUAL_TIME,
    ),
    _adaptive_claim("Adaptive p beats fixed p = 2", ADAPTIVE_ARM, Arm("lpsgdm", {"p_max": 2.0})),
    _adaptive_claim(
        "Adaptive p beats fixed p = p_max", ADAPTIVE_ARM, Arm("lpsgdm", {"p_schedule": "constant"})
    ),
    _adaptive_claim("Cosine p beats the shuffled control", LPSGDM, Arm("lpsgdm", SHUFFLED_P)),
)
"""The adaptive-p comparison, in report order (each at equal steps; against cosine p and the
shuffled control also at equal wall-clock)."""
CLAIMS += ADAPTIVE_CLAIMS


def charged(series: Series) -> tuple[Series, float]:
    """``series`` with each run's final test accuracy replaced by its learning curve's value
    (linear between checkpoints) at step ``S / (1 + f)``, where ``S`` is the run's steps and
    ``f`` the median over the series' runs of ``extra["estimator_fraction"]``, the estimator's
    time per step in training steps (0 for a run without an estimator); returns ``f`` too.

    At that step the run's steps plus the estimator's cost, counted in steps of the same run,
    equal ``S``: the equal-wall-clock budget of a control that trains ``S`` steps with no
    estimator. A ratio measured inside each run, and its median over runs, keeps the load of a
    shared machine (which slows steps and estimator alike) from deciding the comparison."""
    fractions = stats.finite([f for f in series.extra("estimator_fraction") if f is not None])
    fraction = float(np.median(fractions)) if len(fractions) else 0.0
    if fraction == 0.0:
        return series, 0.0
    records = []
    for record in series.records:
        result = record["result"]
        curves = result["curves"]
        at = result["steps"] / (1.0 + fraction)
        value = float(np.interp(at, curves["step"], curves["test_acc"]))
        final = {**result["final"], "test_acc": value}
        records.append({**record, "result": {**result, "final": final}})
    return replace(series, records=records), fraction


def _adaptive_row(claim: Claim, task: str, a: Series, b: Series) -> ClaimRow:
    """A row of the adaptive-p claims: at equal steps, or at equal wall-clock (``EQUAL_TIME``,
    each arm :func:`charged`); the note gives the charges and each arm's mean p."""
    notes = []
    if claim.metric == EQUAL_TIME:
        (a, fraction_a), (b, fraction_b) = charged(a), charged(b)
        notes += [
            f"{_schedule(s)} charged {f:.1%} of a step per step"
            for s, f in ((a, fraction_a), (b, fraction_b))
            if f
        ]
    row = _paired_row(claim, task, a, b)
    notes += [f"{_schedule(s)}: mean p {mean_p(s):.2f}" for s in (a, b) if math.isfinite(mean_p(s))]
    row.note = "; ".join(notes)
    return row


def _schedule(series: Series) -> str:
    """The short name of an LPSGDM arm in the notes: its ``p_schedule``."""
    return str(series.variant.get("p_schedule", "cosine"))


def mean_p(series: Series) -> float:
    """The mean over runs and steps of the per-step p (``extra["p_steps"]``); NaN without
    (the cosine and fixed-p runs do not log it)."""
    steps = [v for values in series.extra("p_steps") if values for v in values]
    return float(np.mean(steps)) if steps else math.nan


@dataclass(frozen=True)
class BoundClaim:
    """A theorem's lower bound on the late loss of ``optimizer`` without momentum at a constant
    lr on the quadratic ``0.5 w^T A w`` (``A`` diagonal): ``bound(lr, eigenvalues)``."""

    name: str
    source: str
    optimizer: str
    bound: Callable[[float, np.ndarray], float]
    effect_note: str


BOUND_CLAIMS: tuple[BoundClaim, ...] = (
    BoundClaim(
        "NormGD's late loss is at least lr²·λmax/8",
        "SepNorm paper, lemma 5.1",
        "normsgd",
        lambda lr, eigenvalues: lr**2 * float(eigenvalues.max()) / 8,
        "SepNorm paper lemma 5.1 (after Arora et al. 2022): λmax ≤ 8 E[L^max] / lr²",
    ),
    BoundClaim(
        "signGD's late loss is at least lr²·tr A/8",
        "SepNorm paper, lemma 5.2",
        "signsgd",
        lambda lr, eigenvalues: lr**2 * float(eigenvalues.sum()) / 8,
        "SepNorm paper lemma 5.2 (diagonal A, any trajectory): tr A ≤ 8 L^max / lr²",
    ),
)
"""The quadratic's known-answer checks (:func:`bound_rows`)."""

BOUND_TOLERANCE = 1e-9
"""Relative slack of a bound check: the bounds are tight (NormGD's at C = 1/2, signGD's at
``w = lr e / 2``), so a run exactly on one may round below it."""


def lr_wd(series: Series) -> float:
    """``lr * weight_decay`` of a series (the decoupled shrink per step)."""
    return float(series.hparams.get("lr", math.nan)) * float(
        series.hparams.get("weight_decay", 0.0)
    )


def wd_sweep(section: Section) -> list[Series]:
    """The weight-decay sweep's series, with the presets' series (a sweep point equal to a
    preset is the preset's run), or ``[]`` when no weight decay was swept."""
    swept = [s for s in section.series if set(s.variant) == {"weight_decay"}]
    if not swept:
        return []
    optimizers = {s.optimizer for s in swept}
    return [s for s in section.series if s.optimizer in optimizers and s.is_base] + swept


def matched_regularisation(claim: Claim, section: Section) -> list[tuple[Claim, Series, Series]]:
    """For a grokking claim, the weight-decay sweep's pairs of series at equal ``lr * wd``
    (relative tolerance 1e-6), each as a claim renamed with the product."""
    if claim.metric != GENERALISATION:
        return []
    sweep = wd_sweep(section)
    found = []
    for a in (s for s in sweep if s.optimizer == claim.treatment.optimizer):
        for b in (s for s in sweep if s.optimizer == claim.control.optimizer):
            if a.is_base and b.is_base:
                continue  # the presets' row
            if math.isclose(lr_wd(a), lr_wd(b), rel_tol=1e-6):
                renamed = replace(claim, name=f"{claim.name} at lr·wd = {lr_wd(a):.3g}")
                found.append((renamed, a, b))
    return sorted(found, key=lambda item: lr_wd(item[1]))


def _preset_label(section: Section, series: Series) -> str:
    return section.title if series.preset == "paper" else f"{section.title} ({series.preset})"


def _arms(claim: Claim, section: Section) -> list[tuple[Series, Series]]:
    """Pairs of series (treatment, control) of one preset source each."""
    treatments = [s for s in section.series if claim.treatment.matches(s)]
    controls = [s for s in section.series if claim.control.matches(s)]
    return [(a, b) for a in treatments for b in controls if a.preset == b.preset]


def _paired_row(claim: Claim, task: str, a: Series, b: Series) -> ClaimRow:
    metric = PAIRED_METRICS[claim.metric]
    values_a, values_b = a.final(metric.key), b.final(metric.key)
    control_mean = float(np.mean(stats.finite(values_b)))
    pair = paired(a, b, metric.key)
    comparison = None
    try:
        if pair is not None:
            comparison = stats.paired_t(*(metric.signed(v, control_mean) for v in pair))
        else:
            comparison = stats.welch_t(
                metric.signed(values_a, control_mean), metric.signed(values_b, control_mean)
            )
    except ValueError:
        pass
    shown = 1.0 if metric.relative else metric.scale
    measured = (
        f"{a.label} {fmt_sample(values_a, shown, metric.digits)} vs "
        f"{b.label} {fmt_sample(values_b, shown, metric.digits)}"
    )
    n_for_paper = None
    if comparison is not None and comparison.test == "paired t":
        sd = comparison.se * math.sqrt(comparison.n)
        n_for_paper = stats.seeds_needed(sd, claim.paper_effect, paired=True)
    elif comparison is not None:
        sd = comparison.se / math.sqrt(
            1 / len(stats.finite(values_a)) + 1 / len(stats.finite(values_b))
        )
        n_for_paper = stats.seeds_needed(sd, claim.paper_effect, paired=False)
    return _row(
        claim,
        task,
        a,
        b,
        measured,
        comparison,
        n_for_paper,
        f"{comparison.n} pairs"
        if comparison and comparison.test == "paired t"
        else f"{a.n} / {b.n}",
    )


def _generalisation_row(claim: Claim, task: str, a: Series, b: Series) -> ClaimRow:
    ta, ea = a.generalisation_times()
    tb, eb = b.generalisation_times()
    comparison = stats.logrank(ta, ea, tb, eb) if a.n and b.n else None
    measured = f"{a.label} {_fmt_times(ta, ea)} vs {b.label} {_fmt_times(tb, eb)}"
    n_for_paper = None
    if comparison is not None and math.isfinite(comparison.se):
        # the log-rank information grows in proportion to n: scale n by (MDE / effect)^2
        n_for_paper = math.ceil(comparison.n * (comparison.mde() / claim.paper_effect) ** 2)
    return _row(claim, task, a, b, measured, comparison, n_for_paper, f"{a.n} / {b.n}")


def _fmt_times(times: np.ndarray, events: np.ndarray) -> str:
    median = stats.km_median(times, events)
    shown = f"{median:.0f}" if math.isfinite(median) else f"> {times.max():.0f}"
    return f"median {shown} ({int(events.sum())}/{len(times)} generalised)"


def _row(
    claim: Claim,
    task: str,
    a: Series,
    b: Series,
    measured: str,
    comparison: stats.Comparison | None,
    n_for_paper: int | None,
    n: str,
) -> ClaimRow:
    if comparison is None:
        effect = low = high = math.nan
        mde, p, p_tost, test = math.inf, None, None, "not tested (fewer than two values)"
    else:
        effect, low, high = comparison.effect, comparison.low, comparison.high
        mde, p, test = comparison.mde(), comparison.p, comparison.test
        p_tost = stats.tost(comparison, claim.margin)
    note = _agr_note(a, b)
    return ClaimRow(
        claim.name,
        claim.source,
        task,
        claim.metric,
        a.label,
        b.label,
        measured,
        test,
        n,
        effect,
        low,
        high,
        mde,
        claim.paper_effect,
        claim.margin,
        n_for_paper,
        p,
        p_tost,
        note=note,
        group=claim.group,
    )


def _agr_note(*series: Series) -> str:
    """The AGR arms' measured relative change of the update (``extra.agr_relative_change``)."""
    parts = []
    for s in series:
        changes = stats.finite([c for c in s.extra("agr_relative_change") if c is not None])
        if len(changes):
            parts.append(f"{s.label}: AGR changes the update by {np.median(changes):.2%}")
    return "; ".join(parts)


def primary_metric(section: Section) -> str:
    """The metric a section's claims are tested on: the time to generalise on ``grokking``, the
    bound on ``quadratic``, else the first of bits per char, Fréchet and sliced Wasserstein
    distance its runs recorded, else test accuracy."""
    if section.task == "grokking":
        return GENERALISATION
    if section.task == "quadratic":
        return BOUND
    for name in (BPC, FD, SWD):
        if any(np.isfinite(s.final(PAIRED_METRICS[name].key)).any() for s in section.series):
            return name
    return ACCURACY


def _applies(claim: Claim, section: Section, a: Series, b: Series) -> bool:
    """A claim on the sections whose primary metric is the claim's, where both arms measured
    it (an equal-wall-clock claim: on accuracy sections, from the test-accuracy curves)."""
    if claim.metric == EQUAL_TIME:
        curves_of = [r["result"].get("curves") or {} for r in a.records + b.records]
        return primary_metric(section) == ACCURACY and all("test_acc" in c for c in curves_of)
    if claim.metric != primary_metric(section):
        return False
    if claim.metric == GENERALISATION:
        return True
    key = PAIRED_METRICS[claim.metric].key
    return bool(np.isfinite(a.final(key)).any() and np.isfinite(b.final(key)).any())


def late_loss_max(losses: Sequence[float], tail: float = 0.25) -> float:
    """The paper's ``L^max = max(L_t, L_{t+1})`` at late ``t``, taken at its smallest over the
    last ``tail`` of the steps (so a bound must hold at every late step, not only at one)."""
    late = np.asarray(losses[int(len(losses) * (1 - tail)) :], dtype=float)
    if len(late) < 2:
        return math.nan
    return float(np.maximum(late[:-1], late[1:]).min())


def _bound_applies(claim: BoundClaim, series: Series) -> bool:
    """The theorems' setting: no momentum (``betas[0]`` 0 for NormGD, ``momentum`` 0 for
    signGD), a constant lr, no warmup and no weight decay."""
    h = series.hparams
    momentum = (h.get("betas") or (0.9,))[0] if claim.optimizer == "normsgd" else h.get("momentum")
    return (
        series.optimizer == claim.optimizer
        and not momentum
        and h.get("lr_schedule") == "constant"
        and not h.get("warmup_frac")
        and not h.get("weight_decay")
    )


def bound_rows(
    sections: Sequence[Section], claims: Iterable[BoundClaim] = BOUND_CLAIMS
) -> list[ClaimRow]:
    """Per bound claim and quadratic section, one row over every run it applies to: the
    smallest late loss against the bound, verdict *reproduced* when every run is at or above
    it (within :data:`BOUND_TOLERANCE`), *refuted* otherwise."""
    rows = []
    for claim in claims:
        for section in (s for s in sections if primary_metric(s) == BOUND):
            for series in (s for s in section.series if _bound_applies(claim, s)):
                ratios, bounds = [], []
                for record in series.records:
                    eigenvalues = np.array(PROBLEMS[record["result"]["extra"]["problem"]])
                    bounds.append(claim.bound(float(series.hparams["lr"]), eigenvalues))
                    late = late_loss_max(record["result"]["curves"]["train_loss"])
                    ratios.append(late / bounds[-1])
                logs = np.log(np.array(ratios))
                holds = bool(np.all(np.array(ratios) >= 1 - BOUND_TOLERANCE))
                rows.append(
                    ClaimRow(
                        claim.name,
                        claim.source,
                        _preset_label(section, series),
                        BOUND,
                        series.label,
                        f"bound {min(bounds):.3g}",
                        f"{series.label}: late L^max / bound, smallest "
                        f"{min(ratios):.3g} over {series.n} runs",
                        "bound check (every run)",
                        f"{series.n} runs",
                        float(logs.min()),
                        float(logs.min()),
                        float(logs.max()),
                        math.nan,
                        0.0,
                        0.0,
                        None,
                        None,
                        None,
                        verdict=REPRODUCED if holds else REFUTED,
                    )
                )
    return rows


def evaluate(
    sections: Sequence[Section],
    claims: Iterable[Claim] = CLAIMS,
    alpha: float = ALPHA,
    bounds: Iterable[BoundClaim] = BOUND_CLAIMS,
) -> list[ClaimRow]:
    """Every applicable claim on every section, Holm-corrected together, with verdicts; then
    the bound checks (:func:`bound_rows`, outside the correction)."""
    rows = []
    for claim in claims:
        make = _paired_row
        if claim.metric == GENERALISATION:
            make = _generalisation_row
        elif claim.group == ADAPTIVE:
            make = _adaptive_row
        for section in sections:
            tests = [(claim, a, b) for a, b in _arms(claim, section)]
            tests += matched_regularisation(claim, section)
            rows += [
                make(named, _preset_label(section, a), a, b)
                for named, a, b in tests
                if _applies(claim, section, a, b)
            ]
    for row, adjusted in zip(rows, stats.holm([row.p for row in rows]), strict=True):
        row.p_holm = adjusted
        row.verdict = verdict(row.effect, row.mde, adjusted, row.p_tost, row.paper_effect, alpha)
    return rows + bound_rows(sections, bounds)


def step_size_answer(rows: Sequence[ClaimRow]) -> str:
    """One sentence per task answering: does the cosine p schedule help beyond its implicit
    step size? Read from the row against SGDM on LPSGDM's update-RMS schedule."""
    question = "**Does the cosine p schedule help beyond its implicit step size?** "
    control = [row for row in rows if row.group == STEP_SIZE and "update-RMS" in row.claim]
    if not control:
        return question + (
            "Not answered: the step-size control did not run (no `sgdm_rms` arm in these records)."
        )
    answers = {
        REPRODUCED: "yes: LPSGDM beats SGDM given LPSGDM's own update-RMS schedule, so its "
        "gain is not only step size",
        REFUTED: "no: SGDM given LPSGDM's update-RMS schedule is better, so the step size, not "
        "the geometry, carries LPSGDM",
        EQUIVALENT: "no: SGDM given LPSGDM's update-RMS schedule is equivalent within the "
        "margin, so what the p schedule adds is its step size",
        NOT_REPRODUCED: "no detectable benefit beyond step size: an effect the paper's size "
        "would probably have been seen and was not",
        UNDERPOWERED: "undecided: the test cannot see an effect the paper's size at these seeds",
    }
    sentences = []
    for row in control:
        sentences.append(
            f"On {row.task}: {answers[row.verdict]} (effect {fmt_effect(row)}, "
            f"MDE {row.mde:.2f}, n {row.n})."
        )
    return question + " ".join(sentences)


def adaptive_answer(rows: Sequence[ClaimRow]) -> str:
    """One sentence per task answering: does a curvature-adaptive p help, and is curvature
    what helps? Read from the equal-step rows against cosine p and against the shuffled
    control, with the equal-wall-clock verdict against cosine p beside."""
    question = "**Does a curvature-adaptive p beat the cosine schedule, and is it the curvature?** "
    mine = [row for row in rows if row.group == ADAPTIVE]
    if not mine:
        return question + "Not answered: no adaptive-p runs in these records."
    sentences = []
    for task in dict.fromkeys(row.task for row in mine):
        found = {(r.claim, r.metric): r for r in mine if r.task == task}
        cosine = found.get(("Adaptive p beats cosine p", ACCURACY))
        control = found.get(("Adaptive p beats its shuffled control", ACCURACY))
        timed = found.get(("Adaptive p beats cosine p at equal wall-clock", EQUAL_TIME))
        if cosine is None or control is None:
            sentences.append(f"On {task}: not answered (an arm is missing).")
            continue
        if cosine.verdict == REPRODUCED and control.verdict != REPRODUCED:
            answer = (
                "adaptive p beats cosine p but not its shuffled control, so curvature is not "
                "what drives the gain (the distribution of p values is)"
            )
        elif cosine.verdict == REPRODUCED:
            answer = "adaptive p beats cosine p and its shuffled control: measured curvature helps"
        else:
            answer = {
                REFUTED: "cosine p beats adaptive p",
                EQUIVALENT: "adaptive p is equivalent to cosine p",
            }.get(cosine.verdict, f"adaptive p does not beat cosine p ({cosine.verdict})")
            answer += f"; against its shuffled control: {control.verdict}"
        if timed is not None:
            answer += f"; at equal wall-clock against cosine p: {timed.verdict} ({timed.note})"
        sentences.append(
            f"On {task}: {answer} (equal steps, effect {fmt_effect(cosine)}, n {cosine.n})."
        )
    return question + " ".join(sentences)


# --------------------------------------------------------------------------------------------
# Formatting


def fmt_effect(row: ClaimRow) -> str:
    """``effect [low, high]`` at two decimals."""
    if not math.isfinite(row.effect):
        return "–"
    return f"{row.effect:+.2f} [{row.low:+.2f}, {row.high:+.2f}]"


def _fmt_p(p: float | None) -> str:
    return "–" if p is None else f"{p:.2g}"


def _fmt_number(value: float) -> str:
    return f"{value:.2f}" if math.isfinite(value) else "–"


def _fmt_paper(row: ClaimRow) -> str:
    if row.metric == BOUND:
        return "≥ 0 (theorem)"
    return f"{row.paper_effect:.2f} (±{row.margin:.2f})"


def markdown(rows: Sequence[ClaimRow]) -> str:
    """The claims table, the step-size answer and the rule."""
    lines = [
        "| claim | source | task | measured (mean ± std over seeds) | effect [95% CI] | MDE | "
        "paper (margin) | n | n for paper | test | p | Holm p | verdict |",
        "|" + " --- |" * 13,
    ]
    for row in rows:
        note = f" {row.note}" if row.note else ""
        lines.append(
            f"| {row.claim} | {row.source} | {row.task} | {row.measured}{note} | "
            f"{fmt_effect(row)} | {_fmt_number(row.mde)} | {_fmt_paper(row)} | "
            f"{row.n} | {row.n_for_paper if row.n_for_paper is not None else '–'} | "
            f"{row.test} | {_fmt_p(row.p)} | {_fmt_p(row.p_holm)} | **{row.verdict}** |"
        )
    if not rows:
        lines.append("| (no claim applies to these records) |" + " |" * 12)
    units = (
        f"Effects are in the metric's units: {ACCURACY}; {BPC}, {SWD}, {FD} (percent of the "
        f"control's mean, positive: the treatment lower); {GENERALISATION} (natural log of "
        f"the hazard ratio; log 2 = 0.69); {BOUND} (the smallest over the runs; ≥ 0: the "
        "bound holds)."
    )
    return "\n".join(
        [
            *lines,
            "",
            units,
            "",
            step_size_answer(rows),
            "",
            adaptive_answer(rows),
            "",
            RULE,
            "",
            "**Paper effects.**",
            effect_notes(),
            "",
        ]
    )


def effect_notes(claims: Iterable[Claim | BoundClaim] = (*CLAIMS, *BOUND_CLAIMS)) -> str:
    """Where each claim's paper effect comes from, as a list (claims sharing a source
    together)."""
    by_note: dict[str, dict[str, None]] = {}  # names in order, each once (a claim per metric)
    for claim in claims:
        by_note.setdefault(claim.effect_note, {})[claim.name] = None
    return "\n".join(f"- {'; '.join(names)}: {note}." for note, names in by_note.items())
