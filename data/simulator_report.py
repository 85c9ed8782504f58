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
    ep = cohort.episodes[["episode_id", "patient_id", "index_date"]].merge(
        default[["episode_id", "label", "baseline_plt", "days_to_response"]], on="episode_id"
    )
    ep = ep.merge(
        plt75[["episode_id", "label"]].rename(columns={"label": "label_plt75"}), on="episode_id"
    )
    static = ["patient_id", "marrow_involvement", "prior_radiotherapy"]
    ep = ep.merge(cohort.patients[static], on="patient_id", how="left")
    reg = cohort.regimens[["patient_id", "start_date", "classes", "line"]].dropna(
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
    oracle_path = Path(cohort_dir) / "oracle.csv"
    if oracle_path.exists():
        oracle = pd.read_csv(oracle_path, usecols=["episode_id", "p_response", "p_response_se"])
        ep = ep.merge(oracle, on="episode_id", how="left")
    return ep.sort_values("episode_id").reset_index(drop=True)


def compare_to_targets(episodes: pd.DataFrame) -> list[TargetCheck]:
    """Check an `episode_table` against "Targets for the simulated default cohort"."""
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
