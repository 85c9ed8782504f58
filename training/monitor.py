"""After deployment: input, score and missingness drift, and performance once outcomes arrive.

`monitor_audit(...)` reads the model inputs the scoring service recorded in its audit log
(`serving.audit`, table `score_inputs`: one row per score, hashes only) and compares them with the
model's training reference (the labelled episodes' features and out-of-fold raw predictions the
training run logged under `train_result/`):

- input drift per feature: population stability index (PSI) over reference-quantile bins (the
  reference's own values for features with few levels), with the usual bands (< 0.1 stable,
  0.1-0.25 moderate, >= 0.25 major) and, so that small samples do not raise alarms, a test of the
  PSI against its null distribution (PSI ~ (1/n + 1/m) chi2(bins - 1) under no shift, Bonferroni
  over features); a feature drifts when both the effect and the test say so; top drifting first;
- missingness drift: each feature's missing share against the reference (two-proportion test and
  an absolute change of at least `missing_alert`);
- score drift: PSI of the calibrated probability against the deployed calibrator applied to the
  reference's out-of-fold raw predictions, and a two-sample Kolmogorov-Smirnov test (scipy);
- before outcomes: the expected response rate and the expected AUROC if the model is calibrated at
  this site (the idea of NannyML's confidence-based performance estimation), labelled estimates;
- once outcomes are joined (through the salted episode hash only; raw ids are hashed and dropped
  on load): O/E with a Poisson CI, calibration slope with a Wald CI, AUROC with a DeLong CI,
  overall and per time window.

Why no Evidently or NannyML: both pull large dependency trees (Evidently: plotly, nltk, litestar
...; NannyML: pins of pandas/numpy older than ours) into a product whose scoring image must stay
small, and neither knows the audit log, the salted join or the registry; what is needed here is a
histogram, scipy's distributions and tests, and the project's own calibration metrics
(`training.metrics`), in a few vectorised lines that scale to millions of audit rows by reading
the log in chunks.

Exit codes (for alerting, see `ctit monitor`): 0 no alert, 1 alert, 2 nothing to monitor or bad
input.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import re
import sqlite3
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from itertools import compress
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats
from scipy.special import expit, logit

from serving.http.audit import feature_set_id, salted_hash
from training.templates import environment

log = logging.getLogger(__name__)

EXIT_OK, EXIT_ALERT, EXIT_ERROR = 0, 1, 2
_CHUNK = 100_000
_EPS = 1e-6


class MonitorError(RuntimeError):
    """Monitoring cannot run (empty audit log, no reference, bad outcomes); says why."""


@dataclass(frozen=True)
class MonitorConfig:
    """Thresholds of the drift and performance checks."""

    psi_bins: int = 10
    psi_moderate: float = 0.1
    psi_major: float = 0.25
    alpha: float = 0.01  # family-wise, over the features (Bonferroni)
    missing_alert: float = 0.10  # absolute change of a feature's missing share
    window: str = "month"  # "month" or "week" of the score time (UTC)
    min_window: int = 30  # fewer joined episodes: the window is listed, its metrics are not
    oe_band: tuple[float, float] = (0.9, 1.1)
    slope_band: tuple[float, float] = (0.8, 1.2)
    max_auroc_drop: float = 0.05

    def __post_init__(self) -> None:
        if self.window not in ("month", "week"):
            raise ValueError(f"window must be 'month' or 'week', got {self.window!r}")
        if self.psi_bins < 2:
            raise ValueError("psi_bins must be at least 2")
        if not 0 < self.alpha < 1:
            raise ValueError("alpha must be inside (0, 1)")


@dataclass
class Reference:
    """The training distribution a deployed model is compared with.

    `features` (n, k) float64 in the model's feature order, NaN = missing; `raw` the reference's
    out-of-fold raw (uncalibrated) probabilities, or None; `auroc` the logged AUROC, or None.
    """

    feature_names: list[str]
    features: np.ndarray
    raw: np.ndarray | None = None
    auroc: float | None = None
    source: str = ""


# -- reference ----------------------------------------------------------------------------------


def reference_from_dir(directory: str | Path, feature_names: Sequence[str]) -> Reference:
    """A reference from a saved `TrainResult` directory (X.parquet, and oof.parquet if present).

    A directory logged by `training.recalibrate` (monitor_reference/) has the same layout.
    """
    directory = Path(directory)
    x_path = directory / "X.parquet"
    if not x_path.is_file():
        raise MonitorError(f"reference {directory}: no X.parquet (a saved train_result directory)")
    X = pd.read_parquet(x_path)
    missing = [name for name in feature_names if name not in X.columns]
    if missing:
        raise MonitorError(
            f"reference {directory}: X.parquet lacks the model's features {', '.join(missing[:5])}"
            + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        )
    features = X[list(feature_names)].to_numpy(dtype=np.float64, na_value=np.nan)
    raw = None
    oof_path = directory / "oof.parquet"
    if oof_path.is_file():
        oof = pd.read_parquet(oof_path)
        if "repeat" in oof.columns:
            oof = oof[oof["repeat"] == oof["repeat"].min()]
        column = "p_xgb_raw" if "p_xgb_raw" in oof.columns else "p_raw"
        if column in oof.columns:
            raw = oof[column].to_numpy(dtype=np.float64)
    auroc = None
    meta_path = directory / "reference.json"
    if meta_path.is_file():
        auroc = json.loads(meta_path.read_text(encoding="utf-8")).get("auroc")
    return Reference(list(feature_names), features, raw, auroc, str(directory))


def reference_from_registry(model_uri: str, feature_names: Sequence[str], tmp: Path) -> Reference:
    """The reference logged with the run behind a `models:/` or `runs:/` URI.

    Looks for `monitor_reference/` (a recalibration run) then `train_result/` (a training run).
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    try:
        if model_uri.startswith("runs:/"):
            run_id = model_uri.removeprefix("runs:/").split("/", 1)[0]
        elif model_uri.startswith("models:/"):
            rest = model_uri.removeprefix("models:/").strip("/")
            if "@" in rest:
                name, alias = rest.split("@", 1)
                version = client.get_model_version_by_alias(name, alias)
            else:
                name, _, number = rest.partition("/")
                version = client.get_model_version(name, number)
            run_id = version.run_id
        else:
            raise MonitorError(
                f"model {model_uri} is a local path: give --reference (a saved train_result "
                "directory) for the training distribution"
            )
        run = client.get_run(run_id)
    except MlflowException as exc:
        raise MonitorError(f"model {model_uri}: cannot find its run ({exc.message})") from None
    auroc = run.data.metrics.get("xgboost.auroc")
    for folder in ("monitor_reference", "train_result"):
        target = tmp / folder
        target.mkdir(parents=True, exist_ok=True)
        local = None
        for name in ("X.parquet", "oof.parquet", "reference.json"):
            try:
                path = Path(client.download_artifacts(run_id, f"{folder}/{name}", str(target)))
            except (MlflowException, OSError):
                if name == "X.parquet":
                    break
                continue
            local = local or path.parent
        if local is None:
            continue
        reference = reference_from_dir(local, feature_names)
        reference.auroc = reference.auroc if reference.auroc is not None else auroc
        reference.source = f"run {run_id} ({folder}/)"
        return reference
    raise MonitorError(
        f"model {model_uri}: its run {run_id} logged no train_result/ or monitor_reference/ "
        "artifacts; give --reference"
    )


# -- audit log ----------------------------------------------------------------------------------


def _connect(path: str | Path) -> sqlite3.Connection:
    path = Path(path)
    if not path.is_file():
        raise MonitorError(f"audit log {path}: no such file")
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        db.execute("SELECT name FROM sqlite_master LIMIT 1").fetchall()
    except sqlite3.DatabaseError as exc:
        raise MonitorError(f"audit log {path}: not a readable SQLite database ({exc})") from None
    return db


def _tables(db: sqlite3.Connection) -> set[str]:
    return {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def audit_salt(path: str | Path, configured: str | None = None) -> bytes:
    """The salt of the log's hashes: the configured one (CTIT_AUDIT_SALT) or the one it keeps."""
    if configured:
        return configured.encode("utf-8")
    db = _connect(path)
    try:
        row = None
        if "meta" in _tables(db):
            row = db.execute("SELECT value FROM meta WHERE key = 'salt'").fetchone()
    finally:
        db.close()
    if row is None:
        raise MonitorError(
            f"audit log {path}: keeps no salt; set CTIT_AUDIT_SALT to the service's salt to "
            "join outcomes"
        )
    return str(row[0]).encode("utf-8")


# -- outcomes -----------------------------------------------------------------------------------


def outcomes_from_file(path: str | Path) -> pd.DataFrame:
    """`episode_id`, `response` (0/1) from a CSV or Parquet outcomes table; errors name the row."""
    from data.issues import CohortError, Issue

    path = Path(path)
    if not path.is_file():
        raise MonitorError(f"outcomes {path}: no such file")
    is_csv = path.suffix.lower() != ".parquet"
    try:
        frame = (
            pd.read_csv(path, dtype={"episode_id": str}, keep_default_na=False)
            if is_csv
            else pd.read_parquet(path)
        )
    except (ValueError, OSError) as exc:
        raise MonitorError(f"outcomes {path}: cannot be read ({exc})") from None
    problems = []
    for column in ("episode_id", "response"):
        if column not in frame.columns:
            problems.append(Issue("outcomes", None, column, "required column is missing"))
    if problems:
        raise MonitorError(str(CohortError(problems)))
    response = pd.to_numeric(frame["response"], errors="coerce")
    offset = 2 if is_csv else 0
    for i in np.flatnonzero(~response.isin([0, 1]).to_numpy())[:50]:
        problems.append(
            Issue(
                "outcomes", int(i) + offset, "response", f"{frame['response'].iat[i]!r} is not 0/1"
            )
        )
    ids = frame["episode_id"].astype(str)
    for i in np.flatnonzero((ids.str.strip() == "").to_numpy())[:50]:
        problems.append(Issue("outcomes", int(i) + offset, "episode_id", "empty episode id"))
    if problems:
        raise MonitorError(str(CohortError(problems)))
    return pd.DataFrame({"episode_id": ids.to_numpy(), "response": response.astype(int).to_numpy()})


def outcomes_from_cohort(directory: str | Path, label_definition: str) -> pd.DataFrame:
    """Labels of a cohort directory by the model's label definition (`data.labels`)."""
    from data.cohort import load_cohort
    from data.issues import CohortError
    from data.labels import derive_labels, get_definition

    try:
        cohort = load_cohort(directory)
    except CohortError as exc:
        raise MonitorError(f"cohort {directory} is invalid:\n{exc}") from None
    labels = derive_labels(cohort, get_definition(label_definition))
    labels = labels[labels["label"].notna()]
    return pd.DataFrame(
        {
            "episode_id": labels["episode_id"].astype(str).to_numpy(),
            "response": labels["label"].astype(int).to_numpy(),
        }
    )


def hash_outcomes(outcomes: pd.DataFrame, salt: bytes) -> pd.DataFrame:
    """`episode_hash`, `response`: the outcomes keyed as the audit log keys scores (ids dropped)."""
    hashes = [salted_hash(salt, episode_id) for episode_id in outcomes["episode_id"]]
    out = pd.DataFrame({"episode_hash": hashes, "response": outcomes["response"].to_numpy()})
    return out.drop_duplicates("episode_hash", keep="last")


# -- statistics ---------------------------------------------------------------------------------


def bin_edges(reference: np.ndarray, n_bins: int) -> tuple[np.ndarray, bool]:
    """Inner cut points of a feature's bins from its present reference values, and if discrete.

    A feature with at most `n_bins` distinct reference values gets one bin per value (cuts
    half-way between neighbours); otherwise the cuts are the reference's quantiles.
    """
    present = reference[~np.isnan(reference)]
    if present.size == 0:
        return np.empty(0), True
    levels = np.unique(present)
    if levels.size <= n_bins:
        return (levels[:-1] + levels[1:]) / 2, True
    cuts = np.unique(np.quantile(present, np.linspace(0, 1, n_bins + 1)[1:-1]))
    return cuts, False


def bin_counts(values: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    """Counts of the present values in the bins of `cuts` (len(cuts) + 1 bins)."""
    present = values[~np.isnan(values)]
    return np.bincount(np.searchsorted(cuts, present, side="right"), minlength=cuts.size + 1)


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index of two count vectors (half a count added to every bin)."""
    e = (expected + 0.5) / (expected.sum() + 0.5 * expected.size)
    a = (actual + 0.5) / (actual.sum() + 0.5 * actual.size)
    return float(np.sum((a - e) * np.log(a / e)))


def psi_p_value(value: float, n_ref: int, n_cur: int, n_bins: int) -> float:
    """P(PSI >= value) without a shift: PSI ~ (1/n + 1/m) chi2(bins - 1) (its Pearson limit)."""
    if n_ref == 0 or n_cur == 0 or n_bins < 2:
        return 1.0
    return float(stats.chi2.sf(value / (1 / n_ref + 1 / n_cur), n_bins - 1))


def two_proportion_p(k1: int, n1: int, k2: int, n2: int) -> float:
    """Two-sided p-value of equal proportions (pooled z test)."""
    if n1 == 0 or n2 == 0:
        return 1.0
    pooled = (k1 + k2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return 1.0 if k1 / n1 == k2 / n2 else 0.0
    return float(2 * stats.norm.sf(abs(k1 / n1 - k2 / n2) / se))


def expected_auroc(p: np.ndarray) -> float:
    """AUROC expected if `p` are the true probabilities (CBPE idea): pairs weigh p_i (1 - p_j)."""
    p = np.sort(np.asarray(p, dtype=np.float64))
    if p.size < 2:
        return float("nan")
    # Sorted ascending: a positive at i outranks negatives below it; ties count one half.
    uniq, start = np.unique(p, return_index=True)
    neg = 1 - p
    cum_neg = np.concatenate([[0.0], np.cumsum(neg)])
    counts = np.diff(np.append(start, p.size))
    below = cum_neg[start]  # negative mass strictly below each level
    tie_neg = cum_neg[start + counts] - below
    pos_mass = np.add.reduceat(p, start)
    numerator = np.sum(pos_mass * (below + 0.5 * tie_neg)) - 0.5 * np.sum(p * neg)
    denominator = p.sum() * neg.sum() - np.sum(p * neg)
    return float(numerator / denominator) if denominator > 0 else float("nan")


def delong_auroc(y: np.ndarray, p: np.ndarray) -> tuple[float, float, float]:
    """AUROC with a 95% DeLong CI (midranks; Sun and Xu 2014)."""
    y = np.asarray(y, dtype=int)
    p = np.asarray(p, dtype=np.float64)
    pos, neg = p[y == 1], p[y == 0]
    m, n = pos.size, neg.size
    if m < 2 or n < 2:
        return float("nan"), float("nan"), float("nan")
    rank_all = stats.rankdata(np.concatenate([pos, neg]))
    rank_pos, rank_neg = stats.rankdata(pos), stats.rankdata(neg)
    v10 = (rank_all[:m] - rank_pos) / n
    v01 = 1 - (rank_all[m:] - rank_neg) / m
    auc = float(v10.mean())
    se = math.sqrt(np.var(v10, ddof=1) / m + np.var(v01, ddof=1) / n)
    if se == 0:
        return auc, auc, auc
    # on the logit scale, so the interval stays inside (0, 1)
    lg = math.log(auc / (1 - auc)) if 0 < auc < 1 else None
    if lg is None:
        return auc, max(0.0, auc - 1.96 * se), min(1.0, auc + 1.96 * se)
    half = 1.96 * se / (auc * (1 - auc))
    return auc, float(expit(lg - half)), float(expit(lg + half))


def oe_with_ci(y: np.ndarray, p: np.ndarray) -> tuple[float, float, float]:
    """Observed/expected responders with a 95% CI (log scale, Poisson SE 1/sqrt(O))."""
    observed, expected = float(np.sum(y)), float(np.sum(p))
    if expected <= 0:
        return float("nan"), float("nan"), float("nan")
    ratio = observed / expected
    if observed == 0:
        return ratio, 0.0, float(stats.chi2.ppf(0.975, 2) / 2 / expected)
    half = 1.96 / math.sqrt(observed)
    return ratio, ratio * math.exp(-half), ratio * math.exp(half)


def slope_with_ci(y: np.ndarray, p: np.ndarray) -> tuple[float, float, float, float]:
    """Calibration slope b (logit P(y) = a + b logit p) with a 95% Wald CI, and the intercept a."""
    y = np.asarray(y, dtype=np.float64)
    x = logit(np.clip(np.asarray(p, dtype=np.float64), _EPS, 1 - _EPS))
    if np.unique(y).size < 2:
        return float("nan"), float("nan"), float("nan"), float("nan")
    a, b = 0.0, 1.0
    info = np.eye(2)
    for _ in range(100):
        mu = expit(a + b * x)
        v = mu * (1 - mu)
        grad = np.array([np.sum(y - mu), np.sum((y - mu) * x)])
        info = np.array([[v.sum(), (v * x).sum()], [(v * x).sum(), (v * x * x).sum()]])
        try:
            step = np.linalg.solve(info, grad)
        except np.linalg.LinAlgError:
            return float("nan"), float("nan"), float("nan"), float("nan")
        a, b = a + step[0], b + step[1]
        if np.max(np.abs(step)) < 1e-10:
            break
    try:
        se = math.sqrt(np.linalg.inv(info)[1, 1])
    except (np.linalg.LinAlgError, ValueError):
        se = float("nan")
    return float(b), float(b - 1.96 * se), float(b + 1.96 * se), float(a)


def performance(y: np.ndarray, p: np.ndarray) -> dict[str, Any]:
    """n, events, O/E, calibration slope/intercept and AUROC with 95% CIs."""
    oe, oe_low, oe_high = oe_with_ci(y, p)
    slope, s_low, s_high, intercept = slope_with_ci(y, p)
    auc, a_low, a_high = delong_auroc(y, p)
    return {
        "n": int(y.size),
        "events": int(np.sum(y)),
        "observed_rate": float(np.mean(y)) if y.size else None,
        "expected_rate": float(np.mean(p)) if y.size else None,
        "oe_ratio": _ci(oe, oe_low, oe_high),
        "calibration_slope": _ci(slope, s_low, s_high),
        "calibration_intercept": _finite(intercept),
        "auroc": _ci(auc, a_low, a_high),
    }


def _ci(estimate: float, low: float, high: float) -> dict[str, float | None]:
    return {"estimate": _finite(estimate), "low": _finite(low), "high": _finite(high)}


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


# -- the scan -----------------------------------------------------------------------------------


@dataclass
class _Scan:
    n: int = 0
    counts: list[np.ndarray] = field(default_factory=list)
    missing: np.ndarray | None = None
    probabilities: list[np.ndarray] = field(default_factory=list)
    versions: dict[str, int] = field(default_factory=dict)
    first: str | None = None
    last: str | None = None


_SELECTED = "model_name = ? AND feature_set = ? AND time >= ?"
#: The latest score of each episode: one grouping pass, kept as a sorted array of row ids, so the
#: scans below read the table once in row order and drop earlier scores with a vectorised lookup
#: (an `id IN (subquery)` filter costs SQLite a probe per row: 3x slower on 1M rows).
_LATEST_IDS = f"SELECT MAX(id) FROM score_inputs WHERE {_SELECTED} GROUP BY episode_hash"
_ROWS = (
    "SELECT id, time, model_version, probability, features FROM score_inputs "
    f"WHERE {_SELECTED} ORDER BY id"
)
_JOINED = (
    "SELECT s.id, substr(s.time, 1, 10), s.probability, o.response FROM score_inputs AS s "
    "JOIN temp.outcome AS o ON o.episode_hash = s.episode_hash "
    "WHERE s.model_name = ? AND s.feature_set = ? AND s.time >= ?"
)


def _latest_ids(db: sqlite3.Connection, query: tuple) -> tuple[np.ndarray, int]:
    """Sorted row ids of each episode's latest score, and how many rows the selection has."""
    rows = db.execute(_LATEST_IDS, query).fetchall()
    ids = np.sort(np.asarray(rows, dtype=np.int64).reshape(-1))
    total = db.execute(f"SELECT COUNT(*) FROM score_inputs WHERE {_SELECTED}", query).fetchone()[0]
    return ids, int(total)


def _is_latest(ids: np.ndarray, latest: np.ndarray) -> np.ndarray:
    if latest.size == 0:
        return np.zeros(ids.size, dtype=bool)
    where = np.minimum(np.searchsorted(latest, ids), latest.size - 1)
    return latest[where] == ids


def _scan(
    db: sqlite3.Connection,
    query: tuple,
    latest: np.ndarray,
    every: bool,
    cuts: list[np.ndarray],
    k: int,
) -> _Scan:
    scan = _Scan(counts=[np.zeros(c.size + 1, dtype=np.int64) for c in cuts])
    scan.missing = np.zeros(k, dtype=np.int64)
    cursor = db.execute(_ROWS, query)
    while True:
        rows = cursor.fetchmany(_CHUNK)
        if not rows:
            break
        ids, times, versions, probabilities, blobs = zip(*rows, strict=True)
        X = np.frombuffer(b"".join(blobs), dtype="<f4").reshape(len(rows), k)
        p = np.asarray(probabilities, dtype=np.float64)
        if not every:  # some episodes were scored more than once: keep their latest score
            keep = _is_latest(np.asarray(ids, dtype=np.int64), latest)
            X, p = X[keep], p[keep]
            times = list(compress(times, keep))
            versions = list(compress(versions, keep))
            if not times:
                continue
        scan.n += len(times)
        scan.missing += np.isnan(X).sum(axis=0)
        for j, c in enumerate(cuts):
            scan.counts[j] += bin_counts(X[:, j], c)
        scan.probabilities.append(p)
        for version, count in Counter(versions).items():
            scan.versions[version] = scan.versions.get(version, 0) + count
        scan.first = min(scan.first or times[0], min(times))
        scan.last = max(scan.last or times[-1], max(times))
    return scan


def _window_of(day: str, window: str) -> str:
    date = dt.date.fromisoformat(day)
    if window == "week":
        year, week, _ = date.isocalendar()
        return f"{year}-W{week:02d}"
    return day[:7]


def monitor_audit(
    *,
    audit_path: str | Path,
    model_info: Mapping[str, str],
    feature_names: Sequence[str],
    calibrator: Any,
    reference: Reference,
    outcomes: pd.DataFrame | None = None,
    since: str | None = None,
    config: MonitorConfig | None = None,
) -> dict[str, Any]:
    """The monitoring summary (JSON-able dict) of the model's scores in the audit log.

    Args:
        model_info: `name`, `version`, `label_definition` of the model (its name selects rows).
        calibrator: the deployed calibrator (maps the reference's raw predictions to scores).
        outcomes: `episode_hash`, `response` (see `hash_outcomes`), or None before outcomes.
        since: ISO date; only scores at or after it (UTC).

    Raises:
        MonitorError: no scores of this model with its feature set in the log (says what is there).
    """
    config = config or MonitorConfig()
    feature_names = list(feature_names)
    k = len(feature_names)
    name = str(model_info["name"])
    set_id = feature_set_id(feature_names)
    since_text = since or ""
    db = _connect(audit_path)
    try:
        tables = _tables(db)
        if "score_inputs" not in tables:
            raise MonitorError(
                f"audit log {audit_path}: no score_inputs table (not a ctit audit log, or written "
                "by a version that did not record model inputs)"
            )
        query = (name, set_id, since_text)
        cuts, discrete = [], []
        for j in range(k):
            c, d = bin_edges(reference.features[:, j], config.psi_bins)
            cuts.append(c)
            discrete.append(d)
        latest, total = _latest_ids(db, query)
        scan = _scan(db, query, latest, latest.size == total, cuts, k)
        if scan.n == 0:
            raise MonitorError(_empty_message(db, audit_path, name, set_id, since))
        joined = None
        if outcomes is not None:
            db.execute("CREATE TEMP TABLE outcome (episode_hash TEXT PRIMARY KEY, response INT)")
            db.executemany(
                "INSERT OR REPLACE INTO temp.outcome VALUES (?, ?)",
                zip(
                    outcomes["episode_hash"], outcomes["response"].astype(int).tolist(), strict=True
                ),
            )
            joined = pd.DataFrame(
                db.execute(_JOINED, query).fetchall(),
                columns=["id", "day", "probability", "response"],
            )
            joined = joined[_is_latest(joined["id"].to_numpy(np.int64), latest)]
    finally:
        db.close()

    probabilities = np.concatenate(scan.probabilities)
    n_ref = reference.features.shape[0]
    summary: dict[str, Any] = {
        "model": dict(model_info),
        "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "audit": {
            "path": str(audit_path),
            "since": since,
            "episodes": scan.n,
            "first_score": scan.first,
            "last_score": scan.last,
            "versions": scan.versions,
        },
        "reference": {"source": reference.source, "episodes": n_ref, "auroc": reference.auroc},
        "config": asdict(config),
    }
    summary["features"] = _feature_drift(reference, scan, cuts, discrete, config)
    summary["score"] = _score_drift(reference, calibrator, probabilities, config)
    summary["estimate"] = {
        "label": "estimate: assumes the model is calibrated at this site (no outcomes used)",
        "expected_response_rate": float(np.mean(probabilities)),
        "expected_response_rate_ci": _poisson_binomial_ci(probabilities),
        "expected_auroc": _finite(expected_auroc(probabilities)),
        "reference_auroc": reference.auroc,
    }
    summary["outcomes"] = (
        _outcome_metrics(joined, outcomes, config) if outcomes is not None else None
    )
    summary["alerts"] = _alerts(summary, config)
    summary["status"] = "alert" if summary["alerts"] else "ok"
    summary["exit_code"] = EXIT_ALERT if summary["alerts"] else EXIT_OK
    return summary


def _empty_message(
    db: sqlite3.Connection, path: str | Path, name: str, set_id: str, since: str | None
) -> str:
    total = db.execute("SELECT COUNT(*) FROM score_inputs").fetchone()[0]
    scores = (
        db.execute("SELECT COUNT(*) FROM scores").fetchone()[0] if "scores" in _tables(db) else 0
    )
    if total == 0 and scores == 0:
        return f"audit log {path} is empty: no scores have been recorded yet; nothing to monitor"
    if total == 0:
        return (
            f"audit log {path} holds {scores} scores but no model inputs (the service ran with "
            "CTIT_AUDIT_MODEL_INPUTS=false); input drift cannot be monitored"
        )
    names = [row[0] for row in db.execute("SELECT DISTINCT model_name FROM score_inputs")]
    if name not in names:
        return f"audit log {path} has no scores of model {name!r} (it has: {', '.join(names)})"
    of_set = db.execute(
        "SELECT COUNT(*) FROM score_inputs WHERE model_name = ? AND feature_set = ?", (name, set_id)
    ).fetchone()[0]
    if of_set == 0:
        return (
            f"audit log {path}: the scores of model {name!r} were made with other features than "
            "this model's (another feature set); nothing comparable to monitor"
        )
    return f"audit log {path}: no scores of model {name!r} since {since}"


def _feature_drift(
    reference: Reference,
    scan: _Scan,
    cuts: list[np.ndarray],
    discrete: list[bool],
    config: MonitorConfig,
) -> list[dict[str, Any]]:
    k = len(reference.feature_names)
    n_ref = reference.features.shape[0]
    ref_missing = np.isnan(reference.features).sum(axis=0)
    rows = []
    for j, name in enumerate(reference.feature_names):
        expected = bin_counts(reference.features[:, j], cuts[j])
        actual = scan.counts[j]
        n_e, n_a = int(expected.sum()), int(actual.sum())
        value = psi(expected, actual) if n_e and n_a and expected.size > 1 else 0.0
        p_value = psi_p_value(value, n_e, n_a, expected.size)
        significant = p_value < config.alpha / k
        if value >= config.psi_major and significant:
            status = "major"
        elif value >= config.psi_moderate and significant:
            status = "moderate"
        else:
            status = "stable"
        miss_ref = float(ref_missing[j] / n_ref) if n_ref else float("nan")
        miss_cur = float(scan.missing[j] / scan.n)
        miss_p = two_proportion_p(int(ref_missing[j]), n_ref, int(scan.missing[j]), scan.n)
        missing_drift = (
            abs(miss_cur - miss_ref) >= config.missing_alert and miss_p < config.alpha / k
        )
        rows.append(
            {
                "feature": name,
                "psi": value,
                "p_value": p_value,
                "bins": int(expected.size),
                "discrete": discrete[j],
                "status": status,
                "present_reference": n_e,
                "present_current": n_a,
                "missing_reference": miss_ref,
                "missing_current": miss_cur,
                "missing_p_value": miss_p,
                "missing_drift": bool(missing_drift),
            }
        )
    order = {"major": 0, "moderate": 1, "stable": 2}
    rows.sort(key=lambda r: (order[r["status"]], -r["psi"]))
    return rows


def _score_drift(
    reference: Reference, calibrator: Any, probabilities: np.ndarray, config: MonitorConfig
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "mean_current": float(np.mean(probabilities)),
        "quantiles_current": np.quantile(probabilities, [0.1, 0.5, 0.9]).tolist(),
    }
    if reference.raw is None or reference.raw.size == 0:
        out.update(status="unknown", note="the reference has no out-of-fold predictions")
        return out
    ref_scores = calibrator.transform(reference.raw)
    cuts = np.unique(np.quantile(ref_scores, np.linspace(0, 1, config.psi_bins + 1)[1:-1]))
    expected, actual = bin_counts(ref_scores, cuts), bin_counts(probabilities, cuts)
    value = psi(expected, actual)
    p_value = psi_p_value(value, int(expected.sum()), int(actual.sum()), expected.size)
    ks = stats.ks_2samp(ref_scores, probabilities)
    if value >= config.psi_major and p_value < config.alpha:
        status = "major"
    elif value >= config.psi_moderate and p_value < config.alpha:
        status = "moderate"
    else:
        status = "stable"
    out.update(
        mean_reference=float(np.mean(ref_scores)),
        quantiles_reference=np.quantile(ref_scores, [0.1, 0.5, 0.9]).tolist(),
        psi=value,
        p_value=p_value,
        ks_statistic=float(ks.statistic),
        ks_p_value=float(ks.pvalue),
        status=status,
    )
    return out


def _poisson_binomial_ci(p: np.ndarray) -> list[float]:
    se = math.sqrt(float(np.sum(p * (1 - p)))) / p.size
    mean = float(np.mean(p))
    return [max(0.0, mean - 1.96 * se), min(1.0, mean + 1.96 * se)]


def _outcome_metrics(
    joined: pd.DataFrame | None, outcomes: pd.DataFrame, config: MonitorConfig
) -> dict[str, Any]:
    assert joined is not None
    out: dict[str, Any] = {
        "given": int(len(outcomes)),
        "joined": int(len(joined)),
        "note": "outcomes joined to scores by salted episode hash only",
    }
    if joined.empty:
        out["overall"] = None
        out["windows"] = []
        return out
    y = joined["response"].to_numpy(dtype=np.float64)
    p = joined["probability"].to_numpy(dtype=np.float64)
    out["overall"] = performance(y, p)
    days = joined["day"].unique()
    windows = joined["day"].map({day: _window_of(day, config.window) for day in days})
    rows = []
    for window in sorted(windows.unique()):
        mask = (windows == window).to_numpy()
        if mask.sum() < config.min_window:
            rows.append(
                {
                    "window": window,
                    "n": int(mask.sum()),
                    "events": int(y[mask].sum()),
                    "note": f"fewer than {config.min_window} episodes",
                }
            )
            continue
        rows.append({"window": window, **performance(y[mask], p[mask])})
    out["windows"] = rows
    return out


def _excludes_one(ci: Mapping[str, float | None]) -> bool:
    """Whether a 95% CI is known and excludes 1."""
    low, high = ci.get("low"), ci.get("high")
    return low is not None and high is not None and not low <= 1 <= high


def _alerts(summary: dict[str, Any], config: MonitorConfig) -> list[str]:
    alerts = []
    major = [r for r in summary["features"] if r["status"] == "major"]
    if major:
        names = ", ".join(f"{r['feature']} (PSI {r['psi']:.2f})" for r in major[:5])
        alerts.append(f"input drift: {len(major)} feature(s) with major shift: {names}")
    missing = [r for r in summary["features"] if r["missing_drift"]]
    if missing:
        names = ", ".join(
            f"{r['feature']} ({r['missing_reference']:.0%} -> {r['missing_current']:.0%})"
            for r in missing[:5]
        )
        alerts.append(f"missingness drift: {len(missing)} feature(s): {names}")
    if summary["score"].get("status") == "major":
        alerts.append(f"score drift: PSI {summary['score']['psi']:.2f}")
    overall = (summary.get("outcomes") or {}).get("overall")
    if overall:
        oe = overall["oe_ratio"]
        low, high = config.oe_band
        if oe["estimate"] is not None and not low <= oe["estimate"] <= high and _excludes_one(oe):
            alerts.append(
                f"calibration-in-the-large: O/E {oe['estimate']:.2f} "
                f"(95% CI {oe['low']:.2f}-{oe['high']:.2f}; band {low}-{high})"
            )
        slope = overall["calibration_slope"]
        low, high = config.slope_band
        if (
            slope["estimate"] is not None
            and not low <= slope["estimate"] <= high
            and _excludes_one(slope)
        ):
            alerts.append(
                f"calibration slope {slope['estimate']:.2f} "
                f"(95% CI {slope['low']:.2f}-{slope['high']:.2f}; band {low}-{high})"
            )
        auc, ref = overall["auroc"], summary["reference"]["auroc"]
        known = auc["estimate"] is not None and ref is not None and auc["high"] is not None
        if known and auc["estimate"] < ref - config.max_auroc_drop and auc["high"] < ref:
            alerts.append(
                f"discrimination: AUROC {auc['estimate']:.3f} (95% CI {auc['low']:.3f}-"
                f"{auc['high']:.3f}) below the reference {ref:.3f}"
            )
    return alerts


# -- outputs ------------------------------------------------------------------------------------


def _report_css() -> str:
    """The reviewer report's stylesheet, so the monitoring page looks like the report."""
    try:
        text = resources.files("training").joinpath("templates/report.html").read_text("utf-8")
    except OSError:
        return ""
    found = re.search(r"<style>(.*?)</style>", text, flags=re.S)
    return found.group(1) if found else ""


def render_html(summary: Mapping[str, Any]) -> str:
    """The monitoring page: self-contained HTML in the style of the reviewer report."""
    template = environment({"num": _num, "pct": _pct}).get_template("monitor.html")
    return template.render(s=summary, css=_report_css())


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _num(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, float) and value != 0 and abs(value) < 10 ** (-digits):
        return f"{value:.1e}"
    return f"{value:.{digits}f}"


def summary_json(summary: Mapping[str, Any]) -> str:
    """The summary as JSON (strict: a non-finite number is written as null)."""
    return json.dumps(_strict(summary), indent=2, allow_nan=False, default=_json_default) + "\n"


def _strict(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _strict(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_strict(v) for v in value]
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer | np.bool_):
        return value.item()
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def log_to_mlflow(
    summary: Mapping[str, Any], html: str, experiment_name: str = "ctit-monitoring"
) -> str:
    """Log the summary as a run of `experiment_name` (metrics, tags, JSON and HTML); its id.

    The tracking URI must be set by the caller (`mlflow.set_tracking_uri`).
    """
    import mlflow

    experiment = mlflow.get_experiment_by_name(experiment_name)
    experiment_id = (
        experiment.experiment_id
        if experiment is not None
        else mlflow.create_experiment(experiment_name)
    )
    model = summary["model"]
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"monitor {model['name']}") as run:
        mlflow.set_tags(
            {
                "ctit.monitored_model": str(model["name"]),
                "ctit.monitored_version": str(model["version"]),
                "ctit.monitor_status": str(summary["status"]),
            }
        )
        metrics: dict[str, float] = {
            "episodes": float(summary["audit"]["episodes"]),
            "alerts": float(len(summary["alerts"])),
            "features_major": float(sum(r["status"] == "major" for r in summary["features"])),
            "features_missing_drift": float(sum(r["missing_drift"] for r in summary["features"])),
            "expected_response_rate": float(summary["estimate"]["expected_response_rate"]),
        }
        if summary["estimate"]["expected_auroc"] is not None:
            metrics["expected_auroc"] = float(summary["estimate"]["expected_auroc"])
        if summary["score"].get("psi") is not None:
            metrics["score_psi"] = float(summary["score"]["psi"])
        if summary["features"]:
            metrics["max_feature_psi"] = float(max(r["psi"] for r in summary["features"]))
        overall = (summary.get("outcomes") or {}).get("overall")
        if overall:
            for key in ("oe_ratio", "calibration_slope", "auroc"):
                for kind in ("estimate", "low", "high"):
                    value = overall[key][kind]
                    if value is not None:
                        suffix = "" if kind == "estimate" else f".{kind}"
                        metrics[f"{key}{suffix}"] = float(value)
        mlflow.log_metrics(metrics)
        mlflow.log_text(summary_json(summary), "monitor/summary.json")
        mlflow.log_text(html, "monitor/monitor.html")
        return run.info.run_id
