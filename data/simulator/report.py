"""Compare a simulated cohort with the targets of LITERATURE.md, through the real-data code path.

Labels come from `data.labels.derive_labels` on the cohort as `data.cohort.load_cohort` reads it,
exactly as for a hospital's cohort; only the oracle column is the simulator's own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from data.cohort import load_cohort
from data.drugs import CHEMOTHERAPY_CLASSES, MYELOTOXIC_CLASSES
from data.labels import derive_labels, get_definition


@dataclass(frozen=True)
class TargetCheck:
    """One figure of the simulated cohort beside its published target."""

    name: str
    value: str
    target: str
    ok: bool


def _share(x: pd.Series) -> float:
    return float(x.mean()) if len(x) else float("nan")


def episode_table(cohort_dir: Path | str) -> pd.DataFrame:
    """One row per episode: labels under two definitions, baseline, regimen at index, oracle."""
    cohort = load_cohort(cohort_dir)
    default = derive_labels(cohort, get_definition("plt100_or_rise50_d14"))
    plt75 = derive_labels(cohort, get_definition("plt75_d14"))
    columns = ["episode_id", "patient_id", "index_date"]
    if "dose_mg" in cohort.episodes:
        columns.append("dose_mg")
    ep = cohort.episodes[columns].merge(
        default[["episode_id", "label", "baseline_plt", "days_to_response"]], on="episode_id"
    )
    ep = ep.merge(
        plt75[["episode_id", "label"]].rename(columns={"label": "label_plt75"}), on="episode_id"
    )
    static = ["patient_id", "marrow_involvement", "prior_radiotherapy", "ecog"]
    ep = ep.merge(cohort.patients[static], on="patient_id", how="left")
    reg = cohort.regimens[["patient_id", "start_date", "classes", "line", "regimen"]].dropna(
        subset=["start_date"]
    )
    ep = pd.merge_asof(
        ep.sort_values("index_date"),
        reg.sort_values("start_date"),
        left_on="index_date",
        right_on="start_date",
        by="patient_id",
        direction="backward",
    )
    classes = ep["classes"].fillna("").str.split(";")
    ep["gem_platinum"] = classes.map(lambda c: "gemcitabine" in c and "platinum" in c)
    ep["regimen_class"] = classes.map(regimen_class)
    ep["days_since_regimen"] = (ep["index_date"] - ep["start_date"]).dt.days
    ep = ep.sort_values(["patient_id", "index_date"])
    ep["episode_number"] = ep.groupby("patient_id").cumcount() + 1
    ep["previous_label"] = ep.groupby("patient_id")["label"].shift(1)
    oracle_path = Path(cohort_dir) / "oracle.csv"
    if oracle_path.exists():
        wanted = ["episode_id", "p_response", "p_response_untreated", "p_response_se"]
        header = pd.read_csv(oracle_path, nrows=0).columns
        oracle = pd.read_csv(oracle_path, usecols=[c for c in wanted if c in header])
        ep = ep.merge(oracle, on="episode_id", how="left")
    return ep.sort_values("episode_id").reset_index(drop=True)


def regimen_class(classes: list[str]) -> str:
    """The regimen class of P1-02-12 (chemotherapy, ADC, chemo + targeted, endocrine + targeted,
    chemo + PD-1, targeted) of a regimen's drug classes."""
    c = set(classes)
    chemo = bool(c & CHEMOTHERAPY_CLASSES)
    if "adc" in c:
        return "ADC"
    if chemo and "immunotherapy" in c:
        return "chemo + PD-1"
    if chemo and "anti_her2" in c:
        return "chemo + targeted"
    if chemo:
        return "chemotherapy"
    if "endocrine" in c and c & {"cdk46", "parp", "anti_her2"}:
        return "endocrine + targeted"
    if c & {"cdk46", "parp", "anti_her2"}:
        return "targeted"
    return "other" if c - {""} else "none"


# Course-level grade >= 3 thrombocytopenia (PLT < 50) of LITERATURE.md, by simulated regimen:
# (regimens pooled, published rate, source). The simulated population is ~96% Asian, so the
# DESTINY-Breast03 Asian figures are used for T-DM1 and T-DXd.
LITERATURE_GRADE3: tuple[tuple[str, tuple[str, ...], float, str], ...] = (
    ("cisplatin + gemcitabine", ("GP",), 0.322, "CBCSG006"),
    ("paclitaxel + gemcitabine", ("GT",), 0.025, "CBCSG006"),
    ("T-DM1", ("T-DM1",), 0.346, "DESTINY-Breast03, Asian"),
    ("T-DXd", ("T-DXd",), 0.116, "DESTINY-Breast03, Asian"),
    ("sacituzumab govitecan", ("SG",), 0.04, "EVER-132-002"),
    ("capecitabine", ("X",), 0.025, "LITERATURE.md 2.4-2.6%"),
    ("CDK4/6 inhibitors", ("Palbo+AI", "Dalpi+F", "Abema+F"), 0.021, "ESMO Open 2018"),
)


def population_checks(population: pd.DataFrame) -> list[TargetCheck]:
    """Course-level incidence in the whole simulated population (before keeping the patients
    with an episode) against LITERATURE.md, and the share of courses that cause CTIT."""
    by = population.groupby("regimen")[["courses", "below_50", "below_75"]].sum()
    checks = []
    for name, regimens, rate, source in LITERATURE_GRADE3:
        sub = by.loc[[r for r in regimens if r in by.index]].sum()
        courses = int(sub["courses"])
        got = sub["below_50"] / courses if courses else float("nan")
        got75 = sub["below_75"] / courses if courses else float("nan")
        checks.append(
            TargetCheck(
                f"courses with PLT < 50, {name} ({courses:,} courses; < 75: {got75:.1%})",
                f"{got:.1%}",
                f"{rate:.1%} +-50% ({source})",
                bool(courses) and 0.5 * rate <= got <= 1.5 * rate,
            )
        )
    total = by.sum()
    share75 = total["below_75"] / total["courses"] if total["courses"] else float("nan")
    checks.append(
        TargetCheck(
            "courses reaching PLT < 75, all regimens",
            f"{share75:.1%}",
            "< 50% (most courses cause no CTIT)",
            bool(share75 < 0.5),
        )
    )
    candidates = int(population["candidates"].iloc[0])
    treated = int(population["treated"].iloc[0])
    checks.append(
        TargetCheck(
            "population simulated (patients treated / candidates)",
            f"{treated:,} / {candidates:,}",
            "information",
            True,
        )
    )
    return checks


def _difference(a: pd.Series, b: pd.Series) -> tuple[float, float]:
    """Response rate of `a` minus that of `b`, and its standard error."""
    pa_, pb_ = float(a.mean()), float(b.mean())
    se = float(np.sqrt(pa_ * (1 - pa_) / max(len(a), 1) + pb_ * (1 - pb_) / max(len(b), 1)))
    return pa_ - pb_, se


def compare_to_targets(
    episodes: pd.DataFrame, population: pd.DataFrame | None = None
) -> list[TargetCheck]:
    """Check an `episode_table` (and the simulator's `population.csv`) against "Targets for the
    simulated default cohort" of LITERATURE.md and the simulator issue's targets."""
    lab = episodes[episodes["label"].notna()].copy()
    y = lab["label"].astype(int)
    rate = _share(y)
    rate75 = _share(lab["label_plt75"].dropna().astype(int))
    ttr = lab.loc[y == 1, ["days_to_response", "baseline_plt"]]
    median_ttr = float(ttr["days_to_response"].median())
    low = ttr["baseline_plt"] < 50
    ttr_low = float(ttr.loc[low, "days_to_response"].mean())
    ttr_high = float(ttr.loc[~low, "days_to_response"].mean())
    base = episodes["baseline_plt"].dropna()
    checks = [
        TargetCheck(
            "response rate, plt100_or_rise50_d14", f"{rate:.1%}", "65-85%", 0.65 <= rate <= 0.85
        ),
        TargetCheck("response rate, plt75_d14", f"{rate75:.1%}", ">= default", rate75 >= rate),
        TargetCheck(
            "median time to response (days)", f"{median_ttr:g}", "4-8", 4 <= median_ttr <= 8
        ),
        TargetCheck(
            "mean time to response, baseline < 50 vs >= 50",
            f"{ttr_low:.1f} vs {ttr_high:.1f}",
            "longer at lower baseline",
            ttr_low > ttr_high,
        ),
        TargetCheck(
            "baseline PLT max", f"{base.max():g}", "< 75", bool(len(base)) and base.max() < 75
        ),
        TargetCheck(
            "share of baseline PLT >= 50",
            f"{_share(base >= 50):.1%}",
            "60-85%",
            0.60 <= _share(base >= 50) <= 0.85,
        ),
    ]
    non = lab[y == 0]
    resp = lab[y == 1]
    enrich = {
        "marrow involvement": lambda d: d["marrow_involvement"] == 1,
        "pelvic/spinal radiotherapy": lambda d: d["prior_radiotherapy"] == 1,
        ">= 3 prior lines": lambda d: d["line"] >= 4,
        "gemcitabine + platinum at index": lambda d: d["gem_platinum"],
        "baseline PLT < 30": lambda d: d["baseline_plt"] < 30,
    }
    for name, rule in enrich.items():
        a, b = _share(rule(non)), _share(rule(resp))
        checks.append(
            TargetCheck(
                f"{name}: non-responders vs responders",
                f"{a:.1%} vs {b:.1%}",
                "enriched in non-responders",
                bool(a > b),
            )
        )
    checks += _effect_checks(lab, y)
    checks += _onset_checks(episodes)
    if population is not None:
        checks += population_checks(population)
    if "p_response_untreated" in lab:
        p0 = lab["p_response_untreated"]
        benefit = lab["p_response"] - p0
        checks += [
            TargetCheck(
                "untreated response (oracle, same label definition)",
                f"{p0.mean():.1%}",
                "25-50%",
                0.25 <= p0.mean() <= 0.50,
            ),
            TargetCheck(
                "mean benefit p_response - p_response_untreated",
                f"{benefit.mean():.3f}",
                ">= 0.20",
                bool(benefit.mean() >= 0.20),
            ),
            TargetCheck(
                "episodes with p_response < p_response_untreated - 0.01",
                f"{int((benefit < -0.01).sum())} (min benefit {benefit.min():.4f})",
                "none",
                bool((benefit >= -0.01).all()),
            ),
        ]
    if "p_response" in lab:
        auroc = float(roc_auc_score(y, lab["p_response"]))
        checks.append(
            TargetCheck(
                "oracle AUROC (latent state, upper bound)",
                f"{auroc:.3f}",
                "0.72-0.85",
                0.72 <= auroc <= 0.85,
            )
        )
        expected = float(lab["p_response"].mean())
        se = float(np.sqrt((lab["p_response"] * (1 - lab["p_response"])).sum()) / len(lab))
        checks.append(
            TargetCheck(
                "oracle mean vs observed response rate",
                f"{expected:.1%} vs {rate:.1%}",
                "within 4 standard errors",
                abs(expected - rate) <= 4 * se,
            )
        )
        err = float(episodes["p_response_se"].max())
        checks.append(
            TargetCheck("oracle numerical error (max)", f"{err:.4f}", "< 0.01", err < 0.01)
        )
    return checks


def _effect_checks(lab: pd.DataFrame, y: pd.Series) -> list[TargetCheck]:
    """Claimed effects on the response rate (labels), each with its direction and size: the
    difference must point the claimed way and be at least 2 standard errors from 0."""
    rules: list[tuple[str, pd.Series, pd.Series]] = []
    if "dose_mg" in lab:
        rules.append(("7.5 mg vs 5 mg", lab["dose_mg"] == 7.5, lab["dose_mg"] == 5.0))
    ecog = pd.to_numeric(lab["ecog"], errors="coerce")
    rules += [
        ("ECOG 0-1 vs >= 2", ecog < 2, ecog >= 2),
        (
            "no marrow involvement vs involvement",
            lab["marrow_involvement"] == 0,
            lab["marrow_involvement"] == 1,
        ),
        (
            "no pelvic/spinal radiotherapy vs radiotherapy",
            lab["prior_radiotherapy"] == 0,
            lab["prior_radiotherapy"] == 1,
        ),
        ("< 3 vs >= 3 prior lines", lab["line"] < 4, lab["line"] >= 4),
        ("baseline PLT >= 30 vs < 30", lab["baseline_plt"] >= 30, lab["baseline_plt"] < 30),
        (
            "previous episode responded vs did not (same patient)",
            lab["previous_label"] == 1,
            lab["previous_label"] == 0,
        ),
    ]
    out = []
    for name, better, worse in rules:
        diff, se = _difference(
            y[better.fillna(False).to_numpy()], y[worse.fillna(False).to_numpy()]
        )
        n_worse = int(worse.fillna(False).sum())
        out.append(
            TargetCheck(
                f"response, {name} (n = {n_worse:,} in the second group)",
                f"{diff:+.1%} (SE {se:.1%})",
                "higher in the first group, >= 2 SE",
                bool(diff >= 2 * se and diff > 0),
            )
        )
    return out


def _onset_checks(episodes: pd.DataFrame) -> list[TargetCheck]:
    """Regimen class at onset, gemcitabine + platinum share, and that every episode follows a
    regimen that can cause it (a myelotoxic class started within 60 days)."""
    cls = episodes["regimen_class"].value_counts(normalize=True)
    top, top_share = (cls.index[0], float(cls.iloc[0])) if len(cls) else ("none", 1.0)
    mix = ", ".join(f"{k} {v:.0%}" for k, v in cls.items())
    gem = float(episodes["gem_platinum"].mean())
    classes = episodes["classes"].fillna("").str.split(";")
    causes = classes.map(lambda c: bool(MYELOTOXIC_CLASSES & set(c)))
    recent = episodes["days_since_regimen"].between(0, 60)
    follows = float((causes & recent).mean())
    return [
        TargetCheck(
            f"regimen class at onset ({mix})",
            f"{top} {top_share:.1%}",
            "none > 50%",
            top_share <= 0.50,
        ),
        TargetCheck("gemcitabine + platinum at onset", f"{gem:.1%}", "<= 30%", gem <= 0.30),
        TargetCheck(
            "episodes after a myelotoxic regimen started <= 60 days before",
            f"{follows:.1%}",
            "100%",
            follows == 1.0,
        ),
    ]


def read_population(cohort_dir: Path | str) -> pd.DataFrame | None:
    """The simulator's `population.csv` (None for a cohort without one)."""
    path = Path(cohort_dir) / "population.csv"
    return pd.read_csv(path) if path.exists() else None
