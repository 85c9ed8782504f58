"""A fast, contract-valid cohort with a known signal, for training tests that must not wait for
the simulator: response depends on baseline PLT, marrow involvement and gemcitabine/platinum."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REGIMENS = [
    ("gemcitabine;carboplatin", "GCb"),
    ("docetaxel;trastuzumab;pertuzumab", "THP"),
    ("trastuzumab deruxtecan", "T-DXd"),
    ("capecitabine", "X"),
    ("palbociclib;letrozole", "palbo+AI"),
]


def _day(index: pd.Timestamp, offset: int) -> str:
    return (index + pd.Timedelta(days=offset)).isoformat()


def make_signal_tables(n_patients: int = 160, seed: int = 0) -> dict[str, pd.DataFrame]:
    """Contract tables for `n_patients` (about 1.3 episodes each) with a logistic response."""
    rng = np.random.default_rng(seed)
    pid = np.array([f"S{seed}-{i:04d}" for i in range(n_patients)])
    marrow = rng.random(n_patients) < 0.15
    patients = pd.DataFrame(
        {
            "patient_id": pid,
            "sex": "F",
            "birth_date": [f"{y}-06-15" for y in rng.integers(1950, 1990, n_patients)],
            "site": rng.choice(["north", "south", "east"], n_patients),
            "ecog": rng.integers(0, 3, n_patients),
            "subtype": rng.choice(["HR+/HER2-", "HER2+", "TNBC"], n_patients),
            "bone_mets": rng.random(n_patients) < 0.5,
            "liver_mets": rng.random(n_patients) < 0.3,
            "marrow_involvement": marrow,
            "splenomegaly": False,
            "prior_radiotherapy": rng.random(n_patients) < 0.2,
        }
    )
    episodes, labs, regimens = [], [], []
    for i, p in enumerate(pid):
        for k in range(1 + int(rng.random() < 0.3)):
            index = pd.Timestamp("2022-01-01") + pd.Timedelta(
                days=int(rng.integers(0, 700)) + 200 * k
            )
            eid = f"{p}-E{k}"
            plt0 = float(rng.integers(12, 75))
            r = int(rng.integers(0, len(REGIMENS)))
            gp = r == 0
            logit = -0.3 + 0.06 * (plt0 - 45) - 2.0 * marrow[i] - 1.0 * gp
            responds = rng.random() < 1 / (1 + np.exp(-logit))
            episodes.append(
                {
                    "episode_id": eid,
                    "patient_id": p,
                    "index_date": index.date().isoformat(),
                    "dose_mg": 7.5,
                }
            )
            start = index - pd.Timedelta(days=int(rng.integers(8, 20)))
            drugs, name = REGIMENS[r]
            regimens.append(
                {
                    "patient_id": p,
                    "start_date": start.date().isoformat(),
                    "end_date": "",
                    "drugs": drugs,
                    "regimen": name,
                    "line": int(rng.integers(1, 4)),
                    "cycle": int(rng.integers(1, 6)),
                }
            )
            labs += [
                (p, _day(index, -20), "PLT", float(rng.integers(120, 250)), "10*9/L"),
                (p, _day(index, -7), "PLT", plt0 + float(rng.integers(5, 40)), "10*9/L"),
                (p, _day(index, -1), "PLT", plt0, "10*9/L"),
                (p, _day(index, -1), "HGB", float(rng.normal(100, 15)), "g/L"),
                (p, _day(index, -1), "ALB", float(rng.normal(38, 4)), "g/L"),
                (p, _day(index, 7), "PLT", 130.0 if responds else plt0 + 10, "10*9/L"),
                # a count on day 12 keeps non-responders evaluable (data.labels: day >= 10)
                (p, _day(index, 12), "PLT", 140.0 if responds else plt0 + 12, "10*9/L"),
            ]
    return {
        "patients": patients,
        "episodes": pd.DataFrame(episodes),
        "labs": pd.DataFrame(labs, columns=["patient_id", "time", "test", "value", "unit"]),
        "regimens": pd.DataFrame(regimens),
    }


@pytest.fixture
def signal_cohort_dir(tmp_path: Path) -> Path:
    return write_signal_cohort(tmp_path / "signal_cohort")


def write_signal_cohort(directory: Path, n_patients: int = 160, seed: int = 0) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, frame in make_signal_tables(n_patients, seed).items():
        frame.to_csv(directory / f"{name}.csv", index=False)
    return directory


def signal_frame(n_patients: int, seed: int) -> tuple[pd.DataFrame, pd.Series, pd.Series]:
    """Model-ready features (with `plt_last`), response and patient ids; continuous and unique."""
    rng = np.random.default_rng(seed)
    n_episodes = rng.integers(1, 3, n_patients)
    groups = np.repeat([f"P{i}" for i in range(n_patients)], n_episodes)
    n = len(groups)
    X = pd.DataFrame(
        {
            "plt_last": rng.uniform(5, 75, n),
            "hgb_last": rng.normal(100, 15, n),
            "marrow_involvement": (rng.random(n) < 0.15).astype(float),
            "noise": rng.normal(size=n),
        },
        index=pd.Index([f"E{i}" for i in range(n)], name="episode_id"),
    )
    X.loc[rng.random(n) < 0.1, "hgb_last"] = np.nan
    logit = -0.3 + 0.06 * (X["plt_last"] - 40) - 2.0 * X["marrow_involvement"]
    y = pd.Series((rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int), index=X.index, name="y")
    return X, y, pd.Series(groups, index=X.index, name="groups")


@pytest.fixture(scope="module")
def data() -> tuple[pd.DataFrame, pd.Series, pd.Series]:
    return signal_frame(n_patients=120, seed=3)


@pytest.fixture(scope="module")
def signal_cohort_module_dir(tmp_path_factory) -> Path:
    """A slightly larger signal cohort shared by a module's tests (150 patients)."""
    return write_signal_cohort(tmp_path_factory.mktemp("signal"), n_patients=150, seed=7)
