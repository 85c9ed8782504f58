"""The simulator: a cohort that validates, meets every target (LITERATURE.md and the simulator
issue) through the real label code at three seeds, an oracle consistent with the labels, a drug
that never lowers a count, and byte-identical files for the same seed."""

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from ctit.cli import app
from data.cohort import load_cohort
from data.labels import derive_labels, get_definition
from data.simulator import SimulationConfig, simulate_cohort
from data.simulator.dynamics import (
    DrugState,
    PlateletParams,
    advance,
    advance_drug,
    steady_state,
)
from data.simulator.oracle import quantile_nodes
from data.simulator.report import compare_to_targets, episode_table, read_population
from data.simulator.tables import opaque_ids

TABLES = ("patients", "episodes", "labs", "regimens", "transfusions", "oracle", "population")
SEEDS = (1, 2, 3)


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """The issue's yardstick: 3,000 patients at seeds 1, 2 and 3, written by `ctit simulate`
    with `--check` (exit status 0 only when every target is met)."""
    out = {}
    for seed in SEEDS:
        path = tmp_path_factory.mktemp(f"sim{seed}") / "cohort"
        result = CliRunner().invoke(
            app,
            [
                "simulate",
                "--n-patients",
                "3000",
                "--seed",
                str(seed),
                "--out",
                str(path),
                "--check",
            ],
        )
        assert result.exit_code == 0, result.output
        out[seed] = path
    return out


@pytest.fixture(scope="module")
def simulated(cohorts: dict[int, Path]) -> Path:
    return cohorts[1]


@pytest.fixture(scope="module")
def episodes(simulated: Path) -> pd.DataFrame:
    return episode_table(simulated)


def _digest(directory: Path) -> dict[str, str]:
    return {t: hashlib.sha256((directory / f"{t}.csv").read_bytes()).hexdigest() for t in TABLES}


def test_cohort_validates_with_the_cli(simulated: Path) -> None:
    result = CliRunner().invoke(app, ["validate", str(simulated)])
    assert result.exit_code == 0, result.output
    assert "Cohort is valid" in result.output


@pytest.mark.parametrize("seed", SEEDS)
def test_every_target_is_met_at_three_seeds(cohorts: dict[int, Path], seed: int) -> None:
    checks = compare_to_targets(episode_table(cohorts[seed]), read_population(cohorts[seed]))
    failed = [c for c in checks if not c.ok]
    names = " ".join(c.name for c in checks)
    for target in (
        "untreated response",
        "mean benefit",
        "p_response < p_response_untreated",
        "courses with PLT < 50, cisplatin + gemcitabine",
        "gemcitabine + platinum at onset",
        "regimen class at onset",
        "7.5 mg vs 5 mg",
        "ECOG 0-1 vs >= 2",
        "previous episode responded",
        "oracle AUROC",
    ):
        assert target in names
    assert len(checks) >= 36
    assert not failed, failed


def test_targets_checked_explicitly(simulated: Path, episodes: pd.DataFrame) -> None:
    cohort = load_cohort(simulated)
    default = derive_labels(cohort, get_definition("plt100_or_rise50_d14"))
    labelled = default[default["label"].notna()]
    rate = labelled["label"].astype(int).mean()
    assert 0.65 <= rate <= 0.85
    plt75 = derive_labels(cohort, get_definition("plt75_d14"))
    assert plt75["label"].dropna().astype(int).mean() >= rate
    ttr = labelled.loc[labelled["label"] == 1, "days_to_response"]
    assert 4 <= ttr.median() <= 8
    base = default["baseline_plt"].dropna()
    assert base.max() < 75
    assert 0.60 <= (base >= 50).mean() <= 0.85
    assert len(labelled) > 2000  # enough episodes that sampling error cannot flip the checks


def test_oracle_is_consistent_with_labels(episodes: pd.DataFrame) -> None:
    lab = episodes[episodes["label"].notna()]
    y = lab["label"].astype(int).to_numpy()
    p = lab["p_response"].to_numpy()
    assert (episodes["p_response_se"] < 0.01).all()
    assert ((p >= 0) & (p <= 1)).all()
    # calibration by quintile of the oracle: observed rates within 4 binomial standard errors
    bins = pd.qcut(p, 5, labels=False, duplicates="drop")
    for b in np.unique(bins):
        pb, yb = p[bins == b], y[bins == b]
        se = np.sqrt((pb * (1 - pb)).sum()) / len(pb) + 1e-3
        assert abs(yb.mean() - pb.mean()) <= 4 * se, (b, yb.mean(), pb.mean())


def test_form_is_realistic(simulated: Path) -> None:
    labs = pd.read_csv(simulated / "labs.csv")
    units = set(zip(labs["test"], labs["unit"], strict=True))
    assert {("777-3", "10*3/uL"), ("PLT", "/uL"), ("718-7", "g/dL"), ("2160-0", "mg/dL")} <= units
    assert ("1975-2", "mg/dL") in units
    patients = pd.read_csv(simulated / "patients.csv")
    assert patients["patient_id"].is_unique
    assert patients["patient_id"].str.fullmatch(r"PT[0-9a-f]{12}").all()
    asian = (patients["race"] == "Asian").mean()
    assert 0.85 <= asian <= 0.99
    assert patients["site"].nunique() == 6
    episodes = pd.read_csv(simulated / "episodes.csv", parse_dates=["index_date"])
    assert episodes["episode_id"].is_unique
    assert episodes["index_date"].dt.year.nunique() >= 4
    assert (episodes["patient_id"].value_counts() > 1).any()
    regimens = pd.read_csv(simulated / "regimens.csv")
    assert {"line", "cycle", "end_date"} <= set(regimens.columns)
    assert regimens["line"].max() >= 5
    assert {"T-DM1", "T-DXd", "SG", "GP", "Palbo+AI", "E", "N"} <= set(regimens["regimen"])


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    a = _digest_after(tmp_path / "a", SimulationConfig(n_patients=300, seed=5, workers=1))
    b = _digest_after(tmp_path / "b", SimulationConfig(n_patients=300, seed=5, workers=2))
    c = _digest_after(tmp_path / "c", SimulationConfig(n_patients=300, seed=6, workers=1))
    assert a == b
    assert all(a[t] != c[t] for t in TABLES if t != "transfusions")


def _digest_after(out: Path, config: SimulationConfig) -> dict[str, str]:
    simulate_cohort(config, out)
    return _digest(out)


def test_cli_simulate_writes_and_reports(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    args = ["simulate", "--n-patients", "150", "--seed", "3", "--out", str(out), "--workers", "1"]
    result = CliRunner().invoke(app, args)
    # 150 patients are too few for the effect checks (each must be 2 standard errors from 0):
    # without a flag the table is printed and the misses are named, status 0
    assert result.exit_code == 0, result.output
    assert "oracle AUROC" in result.output
    assert "untreated response" in result.output
    assert "use --check to fail on them" in result.output
    assert all((out / f"{t}.csv").exists() for t in TABLES)
    # with --check the same misses give status 1
    strict = CliRunner().invoke(app, [*args, "--check"])
    assert strict.exit_code == 1, strict.output
    assert "targets missed" in strict.output


def test_cli_compares_a_large_cohort_only_when_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a flag, a cohort above the size limit is written but not compared (loading a
    100,000-patient cohort takes longer than simulating it); --check still compares it."""
    monkeypatch.setattr("ctit.cmd_simulate.COMPARE_BY_DEFAULT_MAX_PATIENTS", 20)
    args = ["simulate", "--n-patients", "30", "--seed", "3", "--out", str(tmp_path / "big")]
    result = CliRunner().invoke(app, [*args, "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "Targets not compared" in result.output
    assert "oracle AUROC" not in result.output
    strict = CliRunner().invoke(app, [*args, "--workers", "1", "--check"])
    assert "oracle AUROC" in strict.output


def test_cli_rejects_bad_config(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["simulate", "--n-patients", "0", "--out", str(tmp_path / "x"), "--no-check"]
    )
    assert result.exit_code == 1
    assert "n_patients must be between" in result.output


def test_config_errors_name_every_problem() -> None:
    with pytest.raises(ValueError, match="n_sites.*oracle_draws"):
        SimulationConfig(n_sites=0, oracle_draws=1)


def test_steady_state_stays_put() -> None:
    n = 3
    params = PlateletParams(
        ktr=np.full(n, 0.8),
        kcirc=np.full(n, 0.8),
        gamma=np.full(n, 0.25),
        circ0=np.array([100.0, 200.0, 300.0]),
        feedback_max=np.full(n, 4.0),
        dt=0.5,
    )
    state = steady_state(params, 3)
    for _ in range(20):
        state = advance(state, params, 0.0, 4.0)
    np.testing.assert_allclose(state.circ, [100.0, 200.0, 300.0], rtol=1e-12)


def test_inhibition_lowers_counts_and_the_drug_adds_platelets() -> None:
    params = PlateletParams(
        np.full(2, 0.8), np.full(2, 0.8), np.full(2, 0.25), np.full(2, 150.0), np.full(2, 4.0), 0.5
    )
    low = own = steady_state(params, 3)
    drug = DrugState.zeros(2, 3)
    for _ in range(40):
        low = advance(low, params, np.array([0.5, 0.5]), 4.0)
        drug = advance_drug(drug, params, np.array([0.0, 1.0]), own.prolif)
        own = advance(own, params, 0.0, 4.0)
    assert (low.circ < 150).all()
    # no stimulation adds nothing; stimulation 1 on a steady pool of 150 adds up to 150
    assert drug.circ[0] == 0.0
    assert 100.0 < drug.circ[1] <= 150.0


def test_quantile_nodes_integrate_a_step_and_a_smooth_function() -> None:
    x, w = quantile_nodes(64)
    assert w.sum() == pytest.approx(1.0)
    assert (w * (x > 0)).sum() == pytest.approx(0.5)
    assert (w * x**2).sum() == pytest.approx(1.0, abs=0.03)


def test_ids_are_unique_and_opaque() -> None:
    ids = opaque_ids("PT", np.arange(100_000), seed=1, salt=1)
    assert len(set(ids)) == 100_000
    assert ids[:3] != sorted(ids[:3]) or ids[0][2:] != "000000000000"
    assert opaque_ids("PT", np.arange(5), seed=2, salt=1) != ids[:5]


def test_an_interrupted_simulation_leaves_no_cohort_behind(tmp_path: Path) -> None:
    out = tmp_path / "cohort"
    interrupted = []

    def interrupt(advance: int, total: int) -> None:
        written = [p for p in out.glob(".simulating-*/labs.csv") if p.stat().st_size > 0]
        if written and not interrupted:
            interrupted.append(written[0])
            raise KeyboardInterrupt  # Ctrl-C once some patients' rows were already written

    with pytest.raises(KeyboardInterrupt):
        simulate_cohort(SimulationConfig(n_patients=3000, seed=3, workers=1), out, interrupt)
    assert interrupted, "the run finished before any rows were written"
    assert sorted(p.name for p in out.iterdir()) == []
