"""Turn the simulator's records into contract tables (ids, dates, lab coding, units); write them."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from data.simulator.candidates import Batch, Streams
from data.simulator.config import SimulationConfig
from data.simulator.dynamics import hetrombopag_stimulation
from data.simulator.params import (
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
    "latent",
    "alt0",
    "tbil0",
    "crea0",
)
# Columns of a blood draw kept for writing `labs.csv`.
VISIT_FIELDS = (
    "cand",
    "day",
    "minute",
    "profile",
    "shown",
    "present",
    "transfusion",
    "red_cells",
)


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
    def n_episodes(self) -> int:
        return int(self.episodes["cand"].shape[0])

    @property
    def n_regimen_rows(self) -> int:
        return int(self.cycles["cand"].shape[0])

    @property
    def n_lab_rows(self) -> int:
        return int(self.visits["present"].sum())

    @property
    def n_multi_episode(self) -> int:
        """Patients with more than one episode."""
        return int((np.bincount(self.episodes["cand"], minlength=self.n_patients) > 1).sum())

    @property
    def n_asian(self) -> int:
        return int(self.patients["asian"].sum())

    @classmethod
    def from_batch(
        cls,
        batch: Batch,
        visits: dict[str, np.ndarray],
        cycles: dict[str, np.ndarray],
        episodes: dict[str, np.ndarray],
        config: SimulationConfig,
        streams: Streams,
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

    def _add_lab_values(self, config: SimulationConfig, streams: Streams) -> None:
        """Draw the other analytes of each blood draw from patient effects and the latent state."""
        lm: LabModel = config.parameters.labs
        rng = streams.labs
        p, v = self.patients, self.visits
        n, m = self.n_patients, v["cand"].shape[0]
        z = rng.standard_normal((7, n))
        anc_i = lm.anc_median * np.exp(lm.anc_omega * z[0])
        lymph_i = lm.lymph_median * np.exp(0.3 * z[1])
        hgb_i = lm.hgb_mean + lm.hgb_sd * z[2]
        alt_i, tbil_i, crea_i = p["alt0"], p["tbil0"], p["crea0"]
        alb_i = lm.alb_mean + lm.alb_sd * z[6]
        c = v["cand"]
        ratio = np.clip(v["prolif_ratio"], 0.05, 1.3)
        prior_lines = v["line"] - 1
        e = rng.standard_normal((8, m))
        codes = [r.code for r in REGIMENS]
        reg = v["reg"]
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
            * np.where(reg == codes.index("T-DM1"), lm.alt_tdm1_factor, 1.0)
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
            * np.where(reg == codes.index("GP"), lm.crea_cisplatin_factor, 1.0)
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
        v["red_cells"] = values["HGB"] < config.parameters.care.red_cells_below_hgb
        v["profile"] = _site_profiles(
            p["site"][c], p["start_offset"][c] + v["day"], config.parameters.site.lab_profile
        )
        v["shown"] = _as_shown(values, v["profile"])
        v["present"] = np.stack([present[a] for a in ANALYTE_ORDER], axis=1)
        self.visits = {k: v[k] for k in VISIT_FIELDS}
        self.static_missing = {
            k: rng.random(n) < share for k, share in sorted(STATIC_MISSING.items())
        }


def _as_shown(values: dict[str, np.ndarray], profile: np.ndarray) -> np.ndarray:
    """Values in the units and rounding of each draw's laboratory profile, (draws, analytes).

    Rounding to d decimals is `rint(x * 10**d) / 10**d`, as `np.round` computes it.
    """
    out = np.empty((profile.shape[0], len(ANALYTE_ORDER)))
    for j, analyte in enumerate(ANALYTE_ORDER):
        factor = np.array([spec[analyte][2] for spec in LAB_PROFILES])[profile]
        if analyte == "PLT":
            np.multiply(np.rint(values[analyte]), factor, out=out[:, j])
            continue
        scale = np.array([10.0 ** spec[analyte][3] for spec in LAB_PROFILES])[profile]
        shown = values[analyte] * factor
        shown *= scale
        np.rint(shown, out=shown)
        np.divide(shown, scale, out=out[:, j])
    return out


_CSV_OPTIONS = pacsv.WriteOptions(quoting_style="needed")
TABLES = ("patients", "episodes", "labs", "regimens", "transfusions", "oracle")
_LAB_CHUNK_VISITS = 100_000


def _dates(epoch: np.datetime64, days: np.ndarray) -> pa.Array:
    return pa.array((epoch + days.astype("timedelta64[D]")).astype("datetime64[D]"))


def _bool_column(values: np.ndarray, missing: np.ndarray | None = None) -> pa.Array:
    out = np.where(values, "true", "false").astype(object)
    if missing is not None:
        out[missing] = None
    return pa.array(out, type=pa.string())


def _site_profiles(site: np.ndarray, day: np.ndarray, only: int | None = None) -> np.ndarray:
    """Laboratory coding profile of each draw: by site, with one site migrating its system.

    `only` (SiteShift.lab_profile): every draw uses that profile.
    """
    if only is not None:
        return np.full(site.shape, only, dtype=np.int64)
    profile = site % len(LAB_PROFILES)
    migration_day = 3 * 365
    migrating = site == MIGRATING_SITE
    before, after = MIGRATION_PROFILES
    return np.where(migrating, np.where(day < migration_day, before, after), profile)


class CohortWriter:
    """Writes patients, episodes, labs, regimens and `oracle.csv`, a part of patients at a time.

    Parts come in patient order. Patient i gets the i-th smallest of the opaque ids of 0..n-1, so
    writing parts in order keeps every table sorted by patient id (then time) without holding the
    cohort in memory. Episode ids are the opaque ids of the episodes' running number.
    """

    def __init__(self, out_dir: Path, config: SimulationConfig) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        # Tables grow in a hidden folder and move into place only when the whole cohort is
        # written: an interrupted run never leaves a smaller cohort that looks complete.
        self._out_dir = out_dir
        self._staging = Path(tempfile.mkdtemp(prefix=".simulating-", dir=out_dir))
        self.paths = {name: self._staging / f"{name}.csv" for name in (*TABLES, "population")}
        self._config = config
        self._epoch = np.datetime64(f"{config.start_year}-01-01")
        ids = sorted(opaque_ids("PT", np.arange(config.n_patients), config.seed, 1))
        self._pid = pa.array(ids, type=pa.string())
        self._writers: dict[str, tuple[pacsv.CSVWriter, pa.Schema]] = {}
        self._n_patients = self._n_episodes = 0
        self._tests = sorted({LOINC[a] for a in ANALYTE_ORDER} | set(ANALYTE_ORDER))
        self._units = sorted({spec[a][1] for spec in LAB_PROFILES for a in ANALYTE_ORDER})
        # test code and unit of each (profile, analyte)
        self._test_of = np.array(
            [
                [self._tests.index(LOINC[a] if p_[a][0] else a) for a in ANALYTE_ORDER]
                for p_ in LAB_PROFILES
            ]
        )
        self._unit_of = np.array(
            [[self._units.index(p_[a][1]) for a in ANALYTE_ORDER] for p_ in LAB_PROFILES]
        )
        self._minute_text = pa.array([f"T{m // 60:02d}:{m % 60:02d}:00" for m in range(24 * 60)])

    def __enter__(self) -> CohortWriter:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.close()
        if exc_type is None:
            for path in self.paths.values():
                if path.exists():
                    os.replace(path, self._out_dir / path.name)
        shutil.rmtree(self._staging, ignore_errors=True)

    def close(self) -> None:
        """Flush and close every file."""
        for writer, _ in self._writers.values():
            writer.close()
        self._writers.clear()

    def write_population(self, counts: dict[str, np.ndarray], n_candidates: int) -> None:
        """`population.csv`: per regimen and ancestry, the courses of the whole simulated
        population (before keeping the patients with an episode) and how many reached a
        measured PLT below 50, 75 and 100 x10^9/L."""
        n_reg = len(REGIMENS)
        codes = [r.code for r in REGIMENS]
        table = pa.table(
            {
                "regimen": pa.array(codes * 2),
                "asian": pa.array(["false"] * n_reg + ["true"] * n_reg),
                "courses": pa.array(counts["courses"], type=pa.int64()),
                "below_50": pa.array(counts["below_50"], type=pa.int64()),
                "below_75": pa.array(counts["below_75"], type=pa.int64()),
                "below_100": pa.array(counts["below_100"], type=pa.int64()),
                "candidates": pa.array([n_candidates] * (2 * n_reg), type=pa.int64()),
                "treated": pa.array([int(counts["treated"][0])] * (2 * n_reg), type=pa.int64()),
            }
        )
        pacsv.write_csv(table, self.paths["population"], write_options=_CSV_OPTIONS)

    def write(self, records: CohortRecords) -> None:
        """Append the rows of the next `records.n_patients` patients."""
        n, n_ep = records.n_patients, records.n_episodes
        if self._n_patients + n > len(self._pid):
            raise ValueError(
                f"more patients written ({self._n_patients + n}) than configured ({len(self._pid)})"
            )
        pid = self._pid.slice(self._n_patients, n)
        eid = pa.array(
            opaque_ids("EP", self._n_episodes + np.arange(n_ep), self._config.seed, 2),
            type=pa.string(),
        )
        ep = records.episodes
        ep_order = np.lexsort((ep["day"], ep["cand"]))
        self._put("patients", self._patients_table(records, pid))
        self._put("episodes", self._episodes_table(records, pid, eid).take(ep_order))
        self._put("regimens", self._regimens_table(records, pid))
        self._put("oracle", self._oracle_table(records, eid).take(ep_order))
        self._write_labs(records, pid)
        self._put("transfusions", self._transfusions_table(records, pid))
        self._n_patients += n
        self._n_episodes += n_ep

    def _put(self, name: str, table: pa.Table) -> None:
        if name not in self._writers:
            writer = pacsv.CSVWriter(self.paths[name], table.schema, write_options=_CSV_OPTIONS)
            self._writers[name] = (writer, table.schema)
        writer, schema = self._writers[name]
        writer.write_table(table.cast(schema))

    def _patients_table(self, records: CohortRecords, pid: pa.Array) -> pa.Table:
        p, miss = records.patients, records.static_missing
        start = p["start_offset"]
        race_other = np.asarray(RACES_NON_ASIAN)[p["race_other"]]
        race = np.where(p["asian"], "Asian", race_other)
        birth_days = start - np.round(p["age"] * 365.25).astype(np.int64) - p["birth_jitter"]
        ecog = pa.array(np.where(miss["ecog"], np.nan, p["ecog"].astype(float)), from_pandas=True)
        return pa.table(
            {
                "patient_id": pid,
                "sex": pa.array(np.where(p["male"], "M", "F")),
                "birth_date": _dates(self._epoch, birth_days),
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

    def _episodes_table(self, records: CohortRecords, pid: pa.Array, eid: pa.Array) -> pa.Table:
        p, ep = records.patients, records.episodes
        return pa.table(
            {
                "episode_id": eid,
                "patient_id": pid.take(pa.array(ep["cand"])),
                "index_date": _dates(self._epoch, p["start_offset"][ep["cand"]] + ep["day"]),
                "dose_mg": pa.array(ep["dose"], type=pa.float64()),
            }
        )

    def _regimens_table(self, records: CohortRecords, pid: pa.Array) -> pa.Table:
        cy = records.cycles
        reg_codes = np.array([r.code for r in REGIMENS], dtype=object)
        reg_drugs = np.array([";".join(r.drugs) for r in REGIMENS], dtype=object)
        reg_len = np.array([r.cycle_days for r in REGIMENS])
        cy_start = records.patients["start_offset"][cy["cand"]] + cy["day"]
        table = pa.table(
            {
                "patient_id": pid.take(pa.array(cy["cand"])),
                "start_date": _dates(self._epoch, cy_start),
                "end_date": _dates(self._epoch, cy_start + reg_len[cy["reg"]] - 1),
                "drugs": pa.array(reg_drugs[cy["reg"]], type=pa.string()),
                "regimen": pa.array(reg_codes[cy["reg"]], type=pa.string()),
                "line": pa.array(cy["line"], type=pa.int64()),
                "cycle": pa.array(cy["cycle"], type=pa.int64()),
            }
        )
        return table.take(np.lexsort((cy["day"], cy["cand"])))

    def _oracle_table(self, records: CohortRecords, eid: pa.Array) -> pa.Table:
        """p_response with and without hetrombopag, the numerical error and the latent
        parameters per episode."""
        ep, p = records.episodes, records.patients
        hp = self._config.parameters.hetrombopag
        smax = hetrombopag_stimulation(
            ep["stim_fixed"], ep["latent"], hp.latent_omega, hp.latent_cap, hp.stimulation_ceiling
        )
        return pa.table(
            {
                "episode_id": eid,
                "p_response": np.round(records.oracle["p_response"], 6),
                "p_response_untreated": np.round(records.oracle["p_response_untreated"], 6),
                "p_response_se": np.round(records.oracle["p_response_se"], 8),
                "latent_responsiveness": np.round(ep["latent"], 6),
                "hetrombopag_smax": np.round(smax, 6),
                "hetrombopag_smax_fixed": np.round(ep["stim_fixed"], 6),
                "relative_exposure": np.round(ep["exposure"], 6),
                "plt_true_at_index": np.round(ep["circ"] + ep["dcirc"] + ep["transfused"], 4),
                "prolif_ratio_at_index": np.round(
                    ep["prolif"] * ep["ktr"] / (ep["kcirc"] * ep["circ0"]), 6
                ),
                "plt_setpoint": np.round(ep["circ0"], 4),
                "plt_setpoint_untreated": np.round(p["circ0"][ep["cand"]], 4),
                "marrow_reserve": np.round(ep["reserve"], 6),
                "feedback_max": np.round(ep["feedback_max"], 6),
                "mtt_days": np.round(4.0 / ep["ktr"], 6),
                "feedback_gamma": np.round(ep["gamma"], 6),
                "drug_sensitivity": np.round(ep["psi"], 6),
                "days_since_cycle": ep["days_since_cycle"],
                "lost_to_follow_up": _bool_column(ep["lost"]),
                "dropout_day": ep["dropout_day"],
            }
        )

    def _transfusions_table(self, records: CohortRecords, pid: pa.Array) -> pa.Table:
        """Platelet and red-cell transfusions, two hours after the count that prompted them."""
        v, p = records.visits, records.patients
        rows, products = [], []
        for flag, product in ((v["transfusion"], "platelets"), (v["red_cells"], "red_cells")):
            idx = np.flatnonzero(flag)
            rows.append(idx)
            products.append(np.full(idx.shape[0], product, dtype=object))
        idx = np.concatenate(rows)
        product = np.concatenate(products)
        cand = v["cand"][idx]
        abs_day = p["start_offset"][cand] + v["day"][idx]
        minute = np.minimum(v["minute"][idx] + 120, 24 * 60 - 1)
        order = np.lexsort((product, minute, abs_day, cand))
        idx, cand, abs_day, minute, product = (
            a[order] for a in (idx, cand, abs_day, minute, product)
        )
        dates = (self._epoch + abs_day.astype("timedelta64[D]")).astype("datetime64[D]")
        times = pc.binary_join_element_wise(
            pa.array(dates.astype(str), type=pa.string()),
            self._minute_text.take(pa.array(minute, type=pa.int64())),
            "",
        )
        return pa.table(
            {
                "patient_id": pid.take(pa.array(cand, type=pa.int64())),
                "time": times,
                "product": pa.array(product, type=pa.string()),
                "units": pa.array(np.ones(idx.shape[0], dtype=np.int64)),
            }
        )

    def _write_labs(self, records: CohortRecords, pid: pa.Array) -> None:
        """One row per analyte drawn, sorted by patient, time and analyte.

        The blood draws (not the rows) are sorted; each draw expands to its analytes in
        `ANALYTE_ORDER`, so rows come out in order, written in chunks of draws (bounded memory).
        """
        v, p = records.visits, records.patients
        cand = v["cand"]
        abs_day = p["start_offset"][cand] + v["day"]
        first = int(abs_day.min())
        days = np.arange(first, int(abs_day.max()) + 1).astype("timedelta64[D]")
        date_text = pa.array((self._epoch + days).astype(str))
        test_text, unit_text = pa.array(self._tests), pa.array(self._units)
        order = np.lexsort((v["minute"], abs_day, cand))
        for a in range(0, order.shape[0], _LAB_CHUNK_VISITS):
            idx = order[a : a + _LAB_CHUNK_VISITS]
            prof = v["profile"][idx]
            mask = v["present"][idx]
            draw = pa.array(np.repeat(np.arange(idx.shape[0]), mask.sum(axis=1)))
            times = pc.binary_join_element_wise(
                date_text.take(pa.array(abs_day[idx] - first)),
                self._minute_text.take(pa.array(v["minute"][idx])),
                "",
            )
            table = pa.table(
                {
                    "patient_id": pid.take(pa.array(cand[idx])).take(draw),
                    "time": times.take(draw),
                    "test": test_text.take(pa.array(self._test_of[prof][mask])),
                    "value": pa.array(v["shown"][idx][mask], type=pa.float64()),
                    "unit": unit_text.take(pa.array(self._unit_of[prof][mask])),
                }
            )
            self._put("labs", table)


__all__ = ["TABLES", "CohortRecords", "CohortWriter", "INTERNATIONAL_SITES", "opaque_ids"]
