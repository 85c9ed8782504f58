"""Turn the simulator's records into contract tables (ids, dates, lab coding, units); write them."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from data.simulator_dynamics import hetrombopag_emax
from data.simulator_params import (
    ANALYTE_ORDER,
    INTERNATIONAL_SITES,
    LAB_PROFILES,
    LOINC,
    RACES_NON_ASIAN,
    REGIMENS,
    SITE_CODES,
    SUBTYPES,
    LabModel,
)

if TYPE_CHECKING:
    from data.simulator import SimulationConfig, _Batch, _Streams

_MASK48 = np.uint64((1 << 48) - 1)
# Share of missing static clinical entries (prior): the EHR does not always record them.
STATIC_MISSING = {"ecog": 0.06, "bone_mets": 0.02, "liver_mets": 0.02, "splenomegaly": 0.05}
# Site with a laboratory-system migration: profile before and after 1 January of year 4.
MIGRATING_SITE = 1
MIGRATION_PROFILES = (1, 2)


def opaque_ids(prefix: str, index: np.ndarray, seed: int, salt: int) -> list[str]:
    """Unique, opaque ids: a seeded bijection of the 48-bit index space, written in hex."""
    key = np.random.SeedSequence([seed, salt]).generate_state(2, dtype=np.uint64)
    x = (index.astype(np.uint64) + key[0]) & _MASK48
    with np.errstate(over="ignore"):
        x = (x * np.uint64(0x9E3779B97F4B)) & _MASK48
        x ^= x >> np.uint64(21)
        x = (x * np.uint64(0xBF58476D1CE5)) & _MASK48
        x ^= x >> np.uint64(17)
        x ^= key[1] & _MASK48
    return [f"{prefix}{v:012x}" for v in x.tolist()]


# Static columns of a patient kept from the simulated batch.
PATIENT_FIELDS = (
    "site",
    "asian",
    "race_other",
    "male",
    "age",
    "subtype",
    "ecog",
    "bone",
    "liver",
    "marrow",
    "spleen",
    "radiotherapy",
    "first_line",
    "start_offset",
    "birth_jitter",
    "circ0",
    "psi",
)
# Columns of a blood draw kept for writing `labs.csv`.
VISIT_FIELDS = ("cand", "day", "minute", "profile", "shown", "present")


@dataclass
class CohortRecords:
    """Patients, their episodes, cycles and blood draws, indexed by patient number 0..n-1.

    `visits` holds per blood draw the analyte values as written (`shown`, in the site's units and
    rounding, one column per analyte of `ANALYTE_ORDER`) and which were drawn (`present`); `oracle`
    holds `p_response` and `p_response_se` per episode.
    """

    patients: dict[str, np.ndarray]
    episodes: dict[str, np.ndarray]
    cycles: dict[str, np.ndarray]
    visits: dict[str, np.ndarray]
    static_missing: dict[str, np.ndarray]
    oracle: dict[str, np.ndarray]

    @property
    def n_patients(self) -> int:
        return int(self.patients["site"].shape[0])

    @property
    def n_regimen_rows(self) -> int:
        return int(self.cycles["cand"].shape[0])

    @property
    def n_lab_rows(self) -> int:
        return int(self.visits["present"].sum())

    @property
    def multi_episode_share(self) -> float:
        counts = np.bincount(self.episodes["cand"], minlength=self.n_patients)
        return float((counts > 1).mean()) if self.n_patients else 0.0

    @property
    def asian_share(self) -> float:
        return float(self.patients["asian"].mean()) if self.n_patients else 0.0

    @classmethod
    def from_batch(
        cls,
        batch: _Batch,
        visits: dict[str, np.ndarray],
        cycles: dict[str, np.ndarray],
        episodes: dict[str, np.ndarray],
        config: SimulationConfig,
        streams: _Streams,
    ) -> CohortRecords | None:
        """The candidates of a batch with a CTIT episode, renumbered 0..m-1 in batch order, with
        the other analytes of their blood draws (None if no candidate had an episode)."""
        if not episodes:
            return None
        has_ep = np.zeros(batch.n, dtype=bool)
        has_ep[episodes["cand"]] = True
        chosen = np.flatnonzero(has_ep)
        remap = np.full(batch.n, -1, dtype=np.int64)
        remap[chosen] = np.arange(chosen.shape[0])
        patients = {k: getattr(batch, k)[chosen] for k in PATIENT_FIELDS}
        tables = []
        for table in (episodes, cycles, visits):
            keep = has_ep[table["cand"]]
            sub = {k: v[keep] for k, v in table.items()}
            sub["cand"] = remap[sub["cand"]]
            tables.append(sub)
        ep, cy, vis = tables
        records = cls(patients, ep, cy, vis, {}, {})
        records._add_lab_values(config, streams)
        return records

    def head(self, n: int) -> CohortRecords:
        """The first `n` patients and their rows."""
        if n >= self.n_patients:
            return self

        def first(table: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            keep = table["cand"] < n
            return {k: v[keep] for k, v in table.items()}

        keep_ep = self.episodes["cand"] < n
        return CohortRecords(
            {k: v[:n] for k, v in self.patients.items()},
            first(self.episodes),
            first(self.cycles),
            first(self.visits),
            {k: v[:n] for k, v in self.static_missing.items()},
            {k: v[keep_ep] for k, v in self.oracle.items()},
        )

    @classmethod
    def concat(cls, parts: list[CohortRecords]) -> CohortRecords:
        """Join the records of consecutive batches, renumbering patients in batch order."""
        offsets = np.cumsum([0] + [r.n_patients for r in parts[:-1]])

        def cat(name: str, renumber: bool) -> dict[str, np.ndarray]:
            tables = [getattr(r, name) for r in parts]
            out = {k: np.concatenate([t[k] for t in tables]) for k in tables[0]}
            if renumber:
                out["cand"] = np.concatenate(
                    [t["cand"] + o for t, o in zip(tables, offsets, strict=True)]
                )
            return out

        return cls(
            cat("patients", False),
            cat("episodes", True),
            cat("cycles", True),
            cat("visits", True),
            cat("static_missing", False),
            cat("oracle", False),
        )

    def _add_lab_values(self, config: SimulationConfig, streams: _Streams) -> None:
        """Draw the other analytes of each blood draw from patient effects and the latent state."""
        lm: LabModel = config.parameters.labs
        rng = streams.labs
        p, v = self.patients, self.visits
        n, m = self.n_patients, v["cand"].shape[0]
        z = rng.standard_normal((7, n))
        anc_i = lm.anc_median * np.exp(lm.anc_omega * z[0])
        lymph_i = lm.lymph_median * np.exp(0.3 * z[1])
        hgb_i = lm.hgb_mean + lm.hgb_sd * z[2]
        alt_i = lm.alt_median * np.exp(lm.alt_omega * z[3])
        tbil_i = lm.tbil_median * np.exp(lm.tbil_omega * z[4])
        crea_i = lm.crea_median * np.exp(lm.crea_omega * z[5])
        alb_i = lm.alb_mean + lm.alb_sd * z[6]
        c = v["cand"]
        ratio = np.clip(v["prolif_ratio"], 0.05, 1.3)
        prior_lines = v["line"] - 1
        e = rng.standard_normal((8, m))
        codes = np.array([r.code for r in REGIMENS])
        reg = codes[v["reg"]]
        anc = anc_i[c] * ratio**lm.anc_prolif_exponent * np.exp(lm.anc_noise_sd_log * e[0])
        wbc = anc + lymph_i[c] * np.exp(0.2 * e[1]) + 0.4
        hgb = (
            hgb_i[c]
            + lm.hgb_per_prior_line * prior_lines
            + lm.hgb_marrow * p["marrow"][c]
            + lm.hgb_prolif * (np.minimum(ratio, 1.2) - 1.0)
            + lm.hgb_noise_sd * e[2]
        )
        alt = (
            alt_i[c]
            * np.where(p["liver"][c], lm.alt_liver_mets_factor, 1.0)
            * np.where(reg == "T-DM1", lm.alt_tdm1_factor, 1.0)
            * np.exp(lm.lab_noise_sd_log * e[3])
        )
        ast = alt * lm.ast_to_alt * np.exp(lm.lab_noise_sd_log * e[4])
        tbil = (
            tbil_i[c]
            * np.where(p["liver"][c], lm.tbil_liver_mets_factor, 1.0)
            * np.exp(lm.lab_noise_sd_log * e[5])
        )
        crea = (
            crea_i[c]
            * (1.0 + lm.crea_per_year_over_50 * (p["age"][c] - 50.0))
            * np.where(reg == "GP", lm.crea_cisplatin_factor, 1.0)
            * np.exp(lm.crea_noise_sd_log * e[6])
        )
        alb = (
            alb_i[c]
            + lm.alb_per_ecog * p["ecog"][c]
            + lm.alb_liver_mets * p["liver"][c]
            + lm.alb_marrow * p["marrow"][c]
            + lm.alb_per_prior_line * prior_lines
            + lm.alb_noise_sd * e[7]
        )
        u = rng.random((4, m))
        chem = v["chem"]
        values = {
            "PLT": v["plt"],
            "HGB": np.clip(hgb, 50.0, 170.0),
            "WBC": np.maximum(wbc, 0.1),
            "ANC": np.maximum(anc, 0.02),
            "ALT": np.maximum(alt, 4.0),
            "AST": np.maximum(ast, 5.0),
            "TBIL": np.maximum(tbil, 2.0),
            "CREA": np.maximum(crea, 25.0),
            "ALB": np.clip(alb, 18.0, 52.0),
        }
        present = {
            "PLT": np.ones(m, dtype=bool),
            "HGB": np.ones(m, dtype=bool),
            "WBC": np.ones(m, dtype=bool),
            "ANC": u[0] >= lm.anc_missing,
            "ALT": chem,
            "AST": chem,
            "TBIL": chem & (u[1] >= lm.tbil_missing),
            "CREA": chem,
            "ALB": chem & (u[2] >= lm.alb_missing),
        }
        v["minute"] = (7 * 60 + u[3] * 240).astype(np.int64)
        v["profile"] = _site_profiles(p["site"][c], p["start_offset"][c] + v["day"])
        v["shown"] = _as_shown(values, v["profile"])
        v["present"] = np.stack([present[a] for a in ANALYTE_ORDER], axis=1)
        self.visits = {k: v[k] for k in VISIT_FIELDS}
        self.static_missing = {
            k: rng.random(n) < share for k, share in sorted(STATIC_MISSING.items())
        }


def _as_shown(values: dict[str, np.ndarray], profile: np.ndarray) -> np.ndarray:
    """Values in the units and rounding of each draw's laboratory profile, (draws, analytes)."""
    out = np.empty((profile.shape[0], len(ANALYTE_ORDER)))
    for j, analyte in enumerate(ANALYTE_ORDER):
        value = values[analyte]
        for k, spec in enumerate(LAB_PROFILES):
            _, _, factor, decimals = spec[analyte]
            sel = profile == k
            if analyte == "PLT":
                out[sel, j] = np.round(value[sel]) * factor
            else:
                out[sel, j] = np.round(value[sel] * factor, decimals)
    return out


_CSV_OPTIONS = pacsv.WriteOptions(quoting_style="needed")


def _write(table: pa.Table, path: Path) -> None:
    pacsv.write_csv(table, path, _CSV_OPTIONS)


def _dates(epoch: np.datetime64, days: np.ndarray) -> pa.Array:
    return pa.array((epoch + days.astype("timedelta64[D]")).astype("datetime64[D]"))


def _bool_column(values: np.ndarray, missing: np.ndarray | None = None) -> pa.Array:
    out = np.where(values, "true", "false").astype(object)
    if missing is not None:
        out[missing] = None
    return pa.array(out, type=pa.string())


def _ids(records: CohortRecords, config: SimulationConfig) -> tuple[np.ndarray, np.ndarray]:
    """Patient ids and the rank of each patient in id order (the sort order of every table)."""
    n = records.n_patients
    pid = np.array(opaque_ids("PT", np.arange(n), config.seed, 1), dtype=object)
    rank = np.empty(n, dtype=np.int64)
    rank[np.argsort(pid, kind="stable")] = np.arange(n)
    return pid, rank


def write_oracle(records: CohortRecords, out_dir: Path, config: SimulationConfig) -> Path:
    """Write `oracle.csv`: p_response, its numerical error and the latent parameters per episode."""
    ep, p = records.episodes, records.patients
    pid, rank = _ids(records, config)
    eid = np.array(opaque_ids("EP", np.arange(ep["cand"].shape[0]), config.seed, 2), dtype=object)
    ep_order = np.lexsort((ep["day"], rank[ep["cand"]]))
    mtt = 4.0 / ep["ktr"]
    oracle = pa.table(
        {
            "episode_id": pa.array(eid, type=pa.string()),
            "p_response": np.round(records.oracle["p_response"], 6),
            "p_response_se": np.round(records.oracle["p_response_se"], 8),
            "eta_sensitivity": np.round(ep["eta"], 6),
            "hetrombopag_emax": np.round(
                hetrombopag_emax(
                    ep["logit_fixed"],
                    ep["eta"],
                    ep["emax_cap"],
                    config.parameters.hetrombopag.eta_omega,
                ),
                6,
            ),
            "sensitivity_logit_fixed": np.round(ep["logit_fixed"], 6),
            "production_log_multiplier": np.round(
                ep["prod_fixed"] + config.parameters.hetrombopag.production_kappa * ep["eta"], 6
            ),
            "plt_true_at_index": np.round(ep["circ"], 4),
            "prolif_ratio_at_index": np.round(
                ep["prolif"] * ep["ktr"] / (ep["kcirc"] * ep["circ0"]), 6
            ),
            "plt_setpoint": np.round(ep["circ0"], 4),
            "plt_setpoint_untreated": np.round(p["circ0"][ep["cand"]], 4),
            "marrow_reserve": np.round(ep["reserve"], 6),
            "feedback_max": np.round(ep["feedback_max"], 6),
            "mtt_days": np.round(mtt, 6),
            "feedback_gamma": np.round(ep["gamma"], 6),
            "drug_sensitivity": np.round(ep["psi"], 6),
            "lost_to_follow_up": _bool_column(ep["lost"]),
        }
    )
    path = out_dir / "oracle.csv"
    _write(oracle.take(ep_order), path)
    return path


def write_cohort(
    records: CohortRecords,
    out_dir: Path,
    config: SimulationConfig,
) -> dict[str, Path]:
    """Write patients, episodes, labs and regimens as CSV; return the paths by table name."""
    out_dir.mkdir(parents=True, exist_ok=True)
    p, ep, cy = records.patients, records.episodes, records.cycles
    epoch = np.datetime64(f"{config.start_year}-01-01")
    start = p["start_offset"]
    pid, rank = _ids(records, config)
    miss = records.static_missing

    race_other = np.asarray(RACES_NON_ASIAN)[p["race_other"]]
    race = np.where(p["asian"], "Asian", race_other)
    birth_days = start - np.round(p["age"] * 365.25).astype(np.int64) - p["birth_jitter"]
    ecog = pa.array(np.where(miss["ecog"], np.nan, p["ecog"].astype(float)), from_pandas=True)
    patients = pa.table(
        {
            "patient_id": pa.array(pid, type=pa.string()),
            "sex": pa.array(np.where(p["male"], "M", "F")),
            "birth_date": _dates(epoch, birth_days),
            "race": pa.array(race),
            "site": pa.array(np.asarray(SITE_CODES)[p["site"]]),
            "ecog": pc.cast(ecog, pa.int64()),
            "subtype": pa.array(np.asarray(SUBTYPES)[p["subtype"]]),
            "bone_mets": _bool_column(p["bone"], miss["bone_mets"]),
            "liver_mets": _bool_column(p["liver"], miss["liver_mets"]),
            "marrow_involvement": _bool_column(p["marrow"]),
            "splenomegaly": _bool_column(p["spleen"], miss["splenomegaly"]),
            "prior_radiotherapy": _bool_column(p["radiotherapy"]),
        }
    )
    order = np.argsort(pid, kind="stable")
    _write(patients.take(order), out_dir / "patients.csv")

    n_ep = ep["cand"].shape[0]
    eid = np.array(opaque_ids("EP", np.arange(n_ep), config.seed, 2), dtype=object)
    ep_order = np.lexsort((ep["day"], rank[ep["cand"]]))
    episodes = pa.table(
        {
            "episode_id": pa.array(eid, type=pa.string()),
            "patient_id": pa.array(pid[ep["cand"]], type=pa.string()),
            "index_date": _dates(epoch, start[ep["cand"]] + ep["day"]),
            "dose_mg": pa.array(ep["dose"]),
        }
    )
    _write(episodes.take(ep_order), out_dir / "episodes.csv")

    reg_codes = np.array([r.code for r in REGIMENS], dtype=object)
    reg_drugs = np.array([";".join(r.drugs) for r in REGIMENS], dtype=object)
    reg_len = np.array([r.cycle_days for r in REGIMENS])
    cy_start = start[cy["cand"]] + cy["day"]
    regimens = pa.table(
        {
            "patient_id": pa.array(pid[cy["cand"]], type=pa.string()),
            "start_date": _dates(epoch, cy_start),
            "end_date": _dates(epoch, cy_start + reg_len[cy["reg"]] - 1),
            "drugs": pa.array(reg_drugs[cy["reg"]], type=pa.string()),
            "regimen": pa.array(reg_codes[cy["reg"]], type=pa.string()),
            "line": pa.array(cy["line"]),
            "cycle": pa.array(cy["cycle"]),
        }
    )
    cy_order = np.lexsort((cy["day"], rank[cy["cand"]]))
    _write(regimens.take(cy_order), out_dir / "regimens.csv")

    _write_labs(records, pid, rank, epoch, out_dir / "labs.csv", config.workers)
    return {name: out_dir / f"{name}.csv" for name in ("patients", "episodes", "labs", "regimens")}


def _site_profiles(site: np.ndarray, day: np.ndarray) -> np.ndarray:
    """Laboratory coding profile of each draw: by site, with one site migrating its system."""
    profile = site % len(LAB_PROFILES)
    migration_day = 3 * 365
    migrating = site == MIGRATING_SITE
    before, after = MIGRATION_PROFILES
    return np.where(migrating, np.where(day < migration_day, before, after), profile)


_LAB_CHUNK_VISITS = 100_000


def _write_labs(
    records: CohortRecords,
    pid: np.ndarray,
    rank: np.ndarray,
    epoch: np.datetime64,
    path: Path,
    threads: int,
) -> None:
    """Write `labs.csv`, one row per analyte drawn, sorted by patient id, time and analyte.

    The blood draws (not the rows) are sorted; each draw expands to its analytes in
    `ANALYTE_ORDER`, so rows come out in order and are written in chunks of draws (bounded memory).
    """
    v, p = records.visits, records.patients
    cand = v["cand"]
    abs_day = p["start_offset"][cand] + v["day"]
    profile = v["profile"]
    tests = sorted({LOINC[a] for a in ANALYTE_ORDER} | set(ANALYTE_ORDER))
    units = sorted({spec[a][1] for spec in LAB_PROFILES for a in ANALYTE_ORDER})
    # test code and unit of each (profile, analyte)
    test_of = np.array(
        [[tests.index(LOINC[a] if p_[a][0] else a) for a in ANALYTE_ORDER] for p_ in LAB_PROFILES]
    )
    unit_of = np.array([[units.index(p_[a][1]) for a in ANALYTE_ORDER] for p_ in LAB_PROFILES])
    first = int(abs_day.min()) if cand.shape[0] else 0
    last = int(abs_day.max()) if cand.shape[0] else 0
    date_text = pa.array((epoch + np.arange(first, last + 1).astype("timedelta64[D]")).astype(str))
    minute_text = pa.array([f"T{m // 60:02d}:{m % 60:02d}:00" for m in range(24 * 60)])
    pid_text = pa.array(pid, type=pa.string())
    test_text, unit_text = pa.array(tests), pa.array(units)
    order = np.lexsort((v["minute"], abs_day, rank[cand]))
    n_visits = order.shape[0]

    def chunk_csv(a: int) -> pa.Buffer:
        """CSV text of the rows of sorted draws a.., with the header for the first chunk."""
        idx = order[a : a + _LAB_CHUNK_VISITS]
        prof = profile[idx]
        mask = v["present"][idx]
        draw = pa.array(np.repeat(np.arange(idx.shape[0]), mask.sum(axis=1)))
        times = pc.binary_join_element_wise(
            date_text.take(pa.array(abs_day[idx] - first)),
            minute_text.take(pa.array(v["minute"][idx])),
            "",
        )
        table = pa.table(
            {
                "patient_id": pid_text.take(pa.array(cand[idx])).take(draw),
                "time": times.take(draw),
                "test": test_text.take(pa.array(test_of[prof][mask])),
                "value": pa.array(v["shown"][idx][mask], type=pa.float64()),
                "unit": unit_text.take(pa.array(unit_of[prof][mask])),
            }
        )
        sink = pa.BufferOutputStream()
        options = pacsv.WriteOptions(quoting_style="needed", include_header=a == 0)
        pacsv.write_csv(table, sink, options)
        return sink.getvalue()

    # numpy and arrow release the GIL: chunks are formatted in parallel, written in order
    starts = range(0, max(n_visits, 1), _LAB_CHUNK_VISITS)
    with path.open("wb") as f, ThreadPoolExecutor(max_workers=threads) as pool:
        for a in range(0, len(starts), 2 * threads):
            for text in pool.map(chunk_csv, starts[a : a + 2 * threads]):
                f.write(text)


__all__ = ["CohortRecords", "INTERNATIONAL_SITES", "opaque_ids", "write_cohort", "write_oracle"]
