"""Promotion: move @champion to @candidate only when the candidate passes the experiment's gates.

Comparison with the current champion uses the out-of-fold metrics both runs logged, and only when
both were evaluated on the same data (same cohort fingerprint and same label definition): the
champion's booster was fitted on all of its cohort, so scoring it on the candidate's cohort would
be in-sample and flatter it. When the data differ the comparison cannot be made and promotion is
refused, unless the caller explicitly accepts a candidate on new data (`allow_new_data`), in which
case only the candidate's own gates apply.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from training.config import PromotionConfig
from training.tracking import CANDIDATE_ALIAS, CHAMPION_ALIAS

log = logging.getLogger(__name__)


class PromotionError(RuntimeError):
    """Promotion cannot be assessed (no candidate, run or metrics missing)."""


@dataclass(frozen=True)
class Gate:
    name: str
    passed: bool
    detail: str


@dataclass
class PromotionDecision:
    name: str
    candidate_version: str
    champion_version: str | None
    promoted: bool
    gates: list[Gate] = field(default_factory=list)
    note: str = ""

    @property
    def failed(self) -> list[Gate]:
        return [g for g in self.gates if not g.passed]


@dataclass(frozen=True)
class _Evaluated:
    version: str
    run_id: str
    metrics: dict[str, float]
    fingerprint: str | None
    label: str | None


def _alias(client: MlflowClient, name: str, alias: str) -> Any | None:
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def _evaluated(client: MlflowClient, version: Any) -> _Evaluated:
    if not version.run_id:
        raise PromotionError(f"model version {version.name}/{version.version} has no run")
    run = client.get_run(version.run_id)
    return _Evaluated(
        version=str(version.version),
        run_id=version.run_id,
        metrics=dict(run.data.metrics),
        fingerprint=run.data.tags.get("ctit.data_fingerprint"),
        label=run.data.tags.get("ctit.label_definition"),
    )


def _promotion_config(client: MlflowClient, run_id: str) -> PromotionConfig:
    with tempfile.TemporaryDirectory(prefix="ctit-promote-") as tmp:
        try:
            path = client.download_artifacts(run_id, "experiment/experiment.json", tmp)
        except (MlflowException, OSError) as error:
            raise PromotionError(
                f"run {run_id} has no logged experiment (experiment/experiment.json): {error}"
            ) from None
        config = json.loads(Path(path).read_text(encoding="utf-8"))
    return PromotionConfig.model_validate(config.get("promotion", {}))


COMPARATOR_NAMES = {"logreg": "logistic regression", "plt_baseline": "the baseline-PLT rule"}


def _value(metrics: dict[str, float], key: str, where: str) -> float:
    if key not in metrics:
        raise PromotionError(f"{where} did not log metric {key!r}")
    return float(metrics[key])


def performance_gates(
    metrics: dict[str, float], config: PromotionConfig, kind: str, where: str
) -> list[Gate]:
    """The candidate's own gates on one set of logged figures (`kind`: out-of-fold or external).

    Out-of-fold figures are those of the deployed procedure (every outer fold runs the function
    that built the deployed model), so these gates judge what is deployed.
    """
    prefix = "" if kind == "out-of-fold" else "external_"
    gates = []
    auroc_low = _value(metrics, "xgboost.auroc.low", where)
    gates.append(
        Gate(
            f"{prefix}auroc_lower_bound",
            auroc_low >= config.min_auroc_low,
            f"{kind} AUROC lower 95% bound {auroc_low:.3f} (minimum {config.min_auroc_low:.3f})",
        )
    )
    slope = _value(metrics, "xgboost.calibration_slope", where)
    low, high = config.slope_band
    gates.append(
        Gate(
            f"{prefix}calibration_slope",
            low <= slope <= high,
            f"{kind} calibration slope {slope:.3f} (band {low:.2f}-{high:.2f})",
        )
    )
    for comparator in config.comparators:
        key = f"xgboost_minus_{comparator}.auroc_diff"
        diff = _value(metrics, key, where)
        d_low = _value(metrics, f"{key}.low", where)
        d_high = _value(metrics, f"{key}.high", where)
        words = COMPARATOR_NAMES[comparator]
        ci = f"paired 95% CI {d_low:+.3f} to {d_high:+.3f}"
        if diff < 0:
            verdict = f"{words} is better: its {kind} AUROC is {-diff:.3f} above the candidate's"
        else:
            verdict = f"the candidate's {kind} AUROC is {diff:.3f} above {words}'s"
        gates.append(
            Gate(
                f"{prefix}not_worse_than_{comparator}",
                d_low > -config.comparator_margin,
                f"{verdict} ({ci}; the lower bound must be above {-config.comparator_margin:+.3f})",
            )
        )
    return gates


def _external_gates(
    client: MlflowClient,
    run_id: str,
    name: str,
    candidate: _Evaluated,
    config: PromotionConfig,
) -> list[Gate]:
    """The gates on an external evaluation run, which must evaluate this very candidate."""
    try:
        run = client.get_run(run_id)
    except MlflowException as error:
        raise PromotionError(f"evaluation run {run_id}: {error.message}") from None
    tags = run.data.tags
    if tags.get("ctit.run_kind") != "evaluation":
        raise PromotionError(f"run {run_id} is not a `ctit evaluate` run")
    evaluated = (tags.get("ctit.model_name"), tags.get("ctit.model_version"))
    if evaluated != (name, candidate.version):
        return [
            Gate(
                "external_evaluation_of_candidate",
                False,
                f"evaluation run {run_id} evaluated {evaluated[0]} version {evaluated[1]}, "
                f"not the candidate {name} version {candidate.version}",
            )
        ]
    where = f"evaluation run {run_id}"
    cohort = tags.get("ctit.cohort", "an external cohort")
    return [
        Gate(g.name, g.passed, f"{g.detail} [on {cohort}, run {run_id}]")
        for g in performance_gates(dict(run.data.metrics), config, "external", where)
    ]


def _metric(ev: _Evaluated, key: str) -> float:
    if key not in ev.metrics:
        raise PromotionError(f"run {ev.run_id} (version {ev.version}) did not log metric {key!r}")
    return float(ev.metrics[key])


def assess(
    name: str,
    client: MlflowClient | None = None,
    allow_new_data: bool = False,
    evaluation_run: str | None = None,
) -> PromotionDecision:
    """Check the gates for the current @candidate of `name`, without changing anything.

    `evaluation_run` names an external evaluation run (`ctit evaluate`) of this candidate that
    must pass the same gates on its cohort.
    """
    client = client or MlflowClient()
    candidate_version = _alias(client, name, CANDIDATE_ALIAS)
    if candidate_version is None:
        raise PromotionError(f"registered model {name!r} has no @{CANDIDATE_ALIAS} version")
    candidate = _evaluated(client, candidate_version)
    gates_config = _promotion_config(client, candidate.run_id)
    champion_version = _alias(client, name, CHAMPION_ALIAS)
    decision = PromotionDecision(
        name=name,
        candidate_version=candidate.version,
        champion_version=None if champion_version is None else str(champion_version.version),
        promoted=False,
    )
    if champion_version is not None and str(champion_version.version) == candidate.version:
        decision.note = f"version {candidate.version} is already @{CHAMPION_ALIAS}"
        return decision
    where = f"run {candidate.run_id} (version {candidate.version})"

    decision.gates.extend(performance_gates(candidate.metrics, gates_config, "out-of-fold", where))
    if evaluation_run is not None:
        decision.gates.extend(
            _external_gates(client, evaluation_run, name, candidate, gates_config)
        )
    if champion_version is not None:
        champion = _evaluated(client, champion_version)
        same = (
            candidate.fingerprint is not None
            and candidate.fingerprint == champion.fingerprint
            and candidate.label == champion.label
        )
        if same:
            c_auc, k_auc = _metric(candidate, "xgboost.auroc"), _metric(champion, "xgboost.auroc")
            decision.gates.append(
                Gate(
                    "not_worse_auroc",
                    c_auc >= k_auc - gates_config.max_auroc_drop,
                    f"AUROC {c_auc:.3f} vs champion v{champion.version} {k_auc:.3f} "
                    f"(allowed drop {gates_config.max_auroc_drop:.3f})",
                )
            )
            c_b, k_b = _metric(candidate, "xgboost.brier"), _metric(champion, "xgboost.brier")
            decision.gates.append(
                Gate(
                    "not_worse_brier",
                    c_b <= k_b + gates_config.max_brier_increase,
                    f"Brier {c_b:.4f} vs champion v{champion.version} {k_b:.4f} "
                    f"(allowed increase {gates_config.max_brier_increase:.4f})",
                )
            )
        elif allow_new_data:
            decision.note = (
                f"champion v{champion.version} was evaluated {_difference(champion, candidate)}; "
                "not compared head to head (--allow-new-data)"
            )
        else:
            decision.gates.append(
                Gate(
                    "same_evaluation",
                    False,
                    f"champion v{champion.version} was evaluated "
                    f"{_difference(champion, candidate)}, so the two cannot be compared head to "
                    "head; to promote on the candidate's own gates, run again with "
                    "--allow-new-data",
                )
            )
    return decision


def _difference(champion: Any, candidate: Any) -> str:
    """What differs between two evaluations, in words: the label, the cohort, or both."""
    parts = []
    if champion.label != candidate.label:
        parts.append(
            f"with another response label ({champion.label} vs {candidate.label} for the candidate)"
        )
    if champion.fingerprint != candidate.fingerprint or champion.fingerprint is None:
        parts.append(
            f"on another cohort (data fingerprint {str(champion.fingerprint)[:12]} vs "
            f"{str(candidate.fingerprint)[:12]})"
        )
    return " and ".join(parts) or "on other data"


def promote(
    name: str,
    client: MlflowClient | None = None,
    allow_new_data: bool = False,
    evaluation_run: str | None = None,
) -> PromotionDecision:
    """Assess the candidate and, when every gate passes, point @champion at it."""
    client = client or MlflowClient()
    decision = assess(name, client, allow_new_data=allow_new_data, evaluation_run=evaluation_run)
    if decision.note.endswith(f"already @{CHAMPION_ALIAS}"):
        return decision
    if decision.failed:
        log.warning("not promoted: %s", "; ".join(g.detail for g in decision.failed))
        return decision
    client.set_registered_model_alias(name, CHAMPION_ALIAS, decision.candidate_version)
    decision.promoted = True
    log.info("promoted %s version %s to @%s", name, decision.candidate_version, CHAMPION_ALIAS)
    return decision
