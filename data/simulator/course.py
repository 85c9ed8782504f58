"""The day-by-day simulation of one shard's candidates: cycles, blood draws, hetrombopag episodes
and the platelet dynamics between them, vectorised over candidates."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from data.simulator.candidates import Batch, Streams, _choice
from data.simulator.config import SimulationConfig
from data.simulator.dynamics import (
    DrugState,
    PlateletParams,
    advance,
    advance_drug,
    episode_envelope,
    hetrombopag_stimulation,
    steady_state,
)
from data.simulator.params import (
    ASIAN_SENSITIVE_DRUGS,
    DRUG_EFFECTS,
    GEM_PLATINUM_REGIMENS,
    REGIMEN_TOXICITY,
    REGIMENS,
    HetrombopagModel,
    ModelParameters,
)

MAX_CYCLE_DAYS = 42
_NO_CYCLE = -(10**6)


def _hazard_tables(params: ModelParameters) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(hazard[asian, regimen, cycle day], reserve loss per cycle, gem+platinum flag)."""
    hazard = np.zeros((2, len(REGIMENS), MAX_CYCLE_DAYS))
    reserve = np.zeros(len(REGIMENS))
    for r, regimen in enumerate(REGIMENS):
        for drug in regimen.drugs:
            effect = DRUG_EFFECTS.get(drug)
            if effect is None:
                continue
            h = -np.log1p(-effect.inhibition)
            asian = getattr(params.platelets, ASIAN_SENSITIVE_DRUGS.get(drug, ""), 1.0)
            for day in effect.days:
                lo, hi = day - 1, min(day - 1 + effect.active_days, MAX_CYCLE_DAYS)
                hazard[0, r, lo:hi] += h
                hazard[1, r, lo:hi] += h * asian
            reserve[r] += effect.reserve_loss
    factor = np.array([REGIMEN_TOXICITY.get(r.code, 1.0) for r in REGIMENS])
    hazard *= params.platelets.potency_scale * factor[None, :, None]
    reserve *= params.platelets.reserve_loss_scale * factor
    gem_plat = np.array([r.code in GEM_PLATINUM_REGIMENS for r in REGIMENS])
    return hazard, reserve, gem_plat


# Per-row state of the candidates still followed; `Course.compact` drops finished rows from each.
_ROW_FIELDS = (
    "cand",
    "asian",
    "psi",
    "circ0_base",
    "reserve",
    "damage",
    "line_idx",
    "cycle_no",
    "new_line",
    "cur_reg",
    "cycle_start",
    "last_cycle",
    "next_due",
    "mid_day",
    "nadir_day",
    "recheck",
    "last_draw",
    "pending",
    "base",
    "in_ep",
    "ep_index",
    "ep_next",
    "ep_k",
    "ep_end",
    "ep_stop",
    "stim_max",
    "transfused",
    "n_ep",
    "dose_factor",
    "obs_end",
    "active",
    "max_ep",
)
_VISIT_FIELDS = (
    "cand",
    "day",
    "plt",
    "plt_untreated",
    "transfusion",
    "prolif_ratio",
    "kind",
    "chem",
    "reg",
    "line",
)
_CYCLE_FIELDS = ("cand", "day", "reg", "line", "cycle")
# Kinds of blood draw (`visits["kind"]`).
PRE_CYCLE, MID_CYCLE, MONITORING, SURVEILLANCE = 0, 1, 2, 3


class Course:
    """The day-by-day state of one shard's candidates, one method per event of a day.

    Rows are the candidates still followed (`cand` maps a row to its candidate; finished rows are
    dropped now and then). Each day runs, in this order: hetrombopag monitoring visits, the end
    of episodes, pre-cycle counts (and cycle starts), prompted mid-cycle counts, routine nadir
    counts and rechecks, hetrombopag starts, the end of observation, then the integration of
    the platelet dynamics over the day. The order, and which random stream each event draws
    from, define the cohort of a seed: `events` decides, `noise` measures, `surveillance` draws
    the counts that inform but never decide.
    """

    def __init__(self, batch: Batch, config: SimulationConfig, streams: Streams) -> None:
        prm = config.parameters
        self.batch = batch
        self.pl, self.hp, self.care, self.lm = prm.platelets, prm.hetrombopag, prm.care, prm.labs
        self.ev, self.noise, self.sv = streams.events, streams.noise, streams.surveillance
        pl, hp, care = self.pl, self.hp, self.care
        hazard, self.reserve_loss, _ = _hazard_tables(prm)
        self.hazard = hazard.reshape(-1)
        self.cycle_days = np.array([r.cycle_days for r in REGIMENS])
        self.dt = pl.dt_days
        self.steps = round(1.0 / self.dt)
        self.tx_decay = np.exp(-self.dt / care.transfused_platelet_mean_life_days)
        # acute marrow damage of recent cycles (1 = none) heals with reserve_recovery_days
        self.damage_recovery = np.exp(-1.0 / pl.reserve_recovery_days)
        self.episode_tail = hp.duration_days + 8.0 * hp.offset_tau_days
        recheck_p = np.asarray(care.recheck_interval_shares, dtype=float)
        # Generator.choice(p=...) draws searchsorted(cdf, random(), "right"): same draws
        self.recheck_cdf = recheck_p.cumsum()
        self.recheck_cdf /= self.recheck_cdf[-1]
        self.recheck_k = np.asarray(care.recheck_interval_days)

        n = batch.n
        self.params = PlateletParams(
            batch.ktr,
            batch.kcirc,
            batch.gamma,
            batch.circ0 * batch.reserve0,
            self.feedback_max(batch.reserve0),
            self.dt,
        )
        self.state = steady_state(self.params, pl.n_transit)
        self.drug = DrugState.zeros(n, pl.n_transit - hp.entry_compartment)
        self.cand = np.arange(n)
        self.asian = batch.asian.astype(np.int64)
        self.psi = batch.psi
        self.circ0_base = batch.circ0
        self.reserve = batch.reserve0.copy()
        self.damage = np.ones(n)
        self.line_idx = np.zeros(n, dtype=np.int64)
        self.cycle_no = np.zeros(n, dtype=np.int64)
        self.new_line = np.zeros(n, dtype=bool)
        self.cur_reg = batch.plan[:, 0].copy()
        self.cycle_start = np.full(n, _NO_CYCLE, dtype=np.int64)
        self.last_cycle = np.full(n, _NO_CYCLE, dtype=np.int64)
        self.next_due = np.zeros(n, dtype=np.int64)
        self.mid_day = np.full(n, -1, dtype=np.int64)
        self.nadir_day = np.full(n, -1, dtype=np.int64)
        self.recheck = np.full(n, -1, dtype=np.int64)
        self.last_draw = np.full(n, -1, dtype=np.int64)
        self.pending = np.full(n, -1, dtype=np.int64)
        self.base = np.zeros(n)
        self.in_ep = np.zeros(n, dtype=bool)
        self.ep_index = np.full(n, -1e9)
        self.ep_next = np.full(n, -1, dtype=np.int64)
        self.ep_k = np.ones(n, dtype=np.int64)
        self.ep_end = np.full(n, -1, dtype=np.int64)
        self.ep_stop = np.full(n, -1, dtype=np.int64)
        self.stim_max = np.zeros(n)
        self.transfused = np.zeros(n)
        self.n_ep = np.zeros(n, dtype=np.int64)
        self.dose_factor = np.ones(n)
        self.obs_end = np.full(n, care.horizon_days + 1, dtype=np.int64)
        self.active = np.ones(n, dtype=bool)
        self.max_ep = 1 + (self.ev.random(n) < care.repeat_course_share).astype(np.int64)

        # course level (one course = one line's regimen), over the whole population
        k_lines = batch.plan.shape[1]
        self.course_min = np.full((n, k_lines), np.inf)
        self.course_started = np.zeros((n, k_lines), dtype=bool)
        self.visits: dict[str, list[np.ndarray]] = {k: [] for k in _VISIT_FIELDS}
        # an empty first part keeps the columns when no cycle starts (tiny batches)
        self.cycles: dict[str, list[np.ndarray]] = {
            k: [np.zeros(0, dtype=np.int64)] for k in _CYCLE_FIELDS
        }
        self.episodes: list[dict[str, np.ndarray]] = []

    def feedback_max(self, reserve: np.ndarray) -> np.ndarray:
        """The feedback ceiling of a marrow with this reserve (a depleted marrow amplifies less)."""
        pl = self.pl
        return 1.0 + (pl.feedback_max - 1.0) * reserve**pl.feedback_max_reserve_exponent

    def run(self, tick: Callable[[int], None] | None = None) -> None:
        """Simulate every day of the horizon (until no candidate is followed)."""
        for day in range(self.care.horizon_days):
            if tick is not None:
                tick(day)
            if day % 32 == 0 and day > 0 and not self.compact():
                break
            self.monitoring_visits(day)
            self.end_episodes(day)
            self.pre_cycle_counts(day)
            self.mid_cycle_counts(day)
            self.surveillance_counts(day)
            self.hetrombopag_starts(day)
            self.end_observation(day)
            self.integrate(day)

    def compact(self) -> bool:
        """Drop the rows no longer followed when they are many; False when none is left."""
        keep = np.flatnonzero(self.active)
        if keep.shape[0] == 0:
            return False
        if keep.shape[0] < 0.85 * self.cand.shape[0]:
            for name in _ROW_FIELDS:
                setattr(self, name, getattr(self, name)[keep])
            self.state = self.state.take(keep)
            self.drug = self.drug.take(keep)
            self.params = self.params.take(keep)
        return True

    # -- blood draws ---------------------------------------------------------------------------

    def measure(
        self, sel: np.ndarray, rng: np.random.Generator | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Measured counts of rows `sel` with and without hetrombopag (the same noise)."""
        rng = self.noise if rng is None else rng
        factor = np.exp(self.lm.plt_noise_sd_log * rng.standard_normal(sel.shape[0]))
        own = self.state.circ[sel] + self.transfused[sel]
        untreated = np.round(own * factor)
        treated = np.round((own + self.drug.circ[sel]) * factor)
        return treated, untreated

    def record_visit(
        self,
        sel: np.ndarray,
        day: int,
        plt: tuple[np.ndarray, np.ndarray],
        kind: int,
        chem: float,
        rng: np.random.Generator | None = None,
    ) -> None:
        """Keep a blood draw of rows `sel`; transfuse platelets after a low count."""
        rng = self.ev if rng is None else rng
        care, params = self.care, self.params
        self.last_draw[sel] = day
        treated, untreated = plt
        p_ss = params.kcirc[sel] * params.circ0[sel] / params.ktr[sel]
        c = self.cand[sel]
        li = self.line_idx[sel]
        if kind != MONITORING:
            counted = self.course_started[c, li]
            cc, lc = c[counted], li[counted]
            # a row appears once in `sel`: no repeated (candidate, line) pair
            self.course_min[cc, lc] = np.minimum(self.course_min[cc, lc], treated[counted])
        # platelet transfusion after the count (policy of CarePattern)
        risk = rng.random(sel.shape[0]) < care.bleeding_risk_share
        give = (treated < care.transfuse_below_plt) | (
            risk & (treated < care.transfuse_below_plt_bleeding_risk)
        )
        self.transfused[sel[give]] += care.transfusion_increment_plt
        v = self.visits
        v["cand"].append(c)
        v["day"].append(np.full(sel.shape[0], day, dtype=np.int64))
        v["plt"].append(treated)
        v["plt_untreated"].append(untreated)
        v["transfusion"].append(give)
        v["prolif_ratio"].append(self.state.prolif[sel] / p_ss)
        v["kind"].append(np.full(sel.shape[0], kind, dtype=np.int8))
        v["chem"].append(rng.random(sel.shape[0]) < chem)
        v["reg"].append(self.cur_reg[sel])
        v["line"].append(self.batch.first_line[c] + li)

    def watch(self, sel: np.ndarray, day: int, plt: np.ndarray) -> None:
        """After a count of `sel` (not starting hetrombopag): recheck in 2-4 days while low."""
        k = self.recheck_k[self.recheck_cdf.searchsorted(self.sv.random(sel.shape[0]), "right")]
        self.recheck[sel] = np.where(plt < self.care.recheck_below_plt, day + k, -1)

    def may_treat(self, sel: np.ndarray, day: int) -> np.ndarray:
        """CTIT: a cycle of the current or last line began recently; episodes left."""
        recent = day - self.last_cycle[sel] <= self.care.episode_max_days_since_cycle
        return recent & (self.n_ep[sel] < self.max_ep[sel]) & (day < self.obs_end[sel])

    def free(self) -> np.ndarray:
        """Rows followed, neither in an episode nor about to start one."""
        return self.active & ~self.in_ep & (self.pending < 0)

    # -- events of a day -----------------------------------------------------------------------

    def monitoring_visits(self, day: int) -> None:
        """Counts during hetrombopag (some missed, none after the episode's last visit)."""
        sel = np.flatnonzero(self.active & self.in_ep & (self.ep_next == day))
        if not sel.size:
            return
        plt = self.measure(sel)
        seen = (self.ev.random(sel.shape[0]) >= self.care.episode_visit_missed) & (
            day <= self.ep_stop[sel]
        )
        if seen.any():
            self.record_visit(
                sel[seen],
                day,
                (plt[0][seen], plt[1][seen]),
                MONITORING,
                self.lm.chemistry_share_other,
            )
        self.ep_next[sel] += self.ep_k[sel]

    def end_episodes(self, day: int) -> None:
        done = self.active & self.in_ep & (day >= self.ep_end)
        self.in_ep[done] = False

    def pre_cycle_counts(self, day: int) -> None:
        """The count before a cycle decides: start it, delay it, or start hetrombopag."""
        care = self.care
        sel = np.flatnonzero(self.free() & (self.next_due == day))
        if not sel.size:
            return
        plt = self.measure(sel)
        self.record_visit(sel, day, plt, PRE_CYCLE, self.lm.chemistry_share_pre_cycle)
        count = plt[0]
        share = np.where(
            count < 50.0, care.treat_share_pre_cycle_below_50, care.treat_share_pre_cycle
        )
        treat = (
            (count < care.trigger_plt)
            & self.may_treat(sel, day)
            & (self.ev.random(sel.shape[0]) < share)
        )
        go = (count >= care.cycle_start_min_plt) & ~treat
        # a patient never treated here whose count is too low does not start therapy
        never = (self.last_cycle[sel] == _NO_CYCLE) & ~go
        self.active[sel[never]] = False
        delay = ~treat & ~go & ~never
        self.next_due[sel[delay]] = day + care.delay_days
        self.watch(sel[delay], day, count[delay])
        if treat.any():
            self.trigger(sel[treat], day, count[treat])
        if go.any():
            self.start_cycles(sel[go], day)

    def start_cycles(self, g: np.ndarray, day: int) -> None:
        """Cycle starts (the next line after the last cycle of one): marrow loss, next visits."""
        batch, care, pl = self.batch, self.care, self.pl
        nl = self.new_line[g]
        self.line_idx[g] += nl
        self.cycle_no[g] = np.where(nl, 0, self.cycle_no[g])
        self.new_line[g] = False
        over = self.line_idx[g] >= batch.plan.shape[1]
        self.active[g[over]] = False
        g = g[~over]
        if not g.size:
            return
        c = self.cand[g]
        li = self.line_idx[g]
        self.course_started[c, li] = True
        reg = batch.plan[c, li]
        self.cur_reg[g] = reg
        self.cycle_no[g] += 1
        self.cycle_start[g] = day
        self.last_cycle[g] = day
        loss = self.reserve_loss[reg] * self.dose_factor[g] * self.psi[g]
        self.reserve[g] *= np.exp(-loss)
        self.damage[g] *= np.exp(-pl.acute_damage_scale * loss)
        r_now = self.reserve[g] * self.damage[g]
        self.params.set_point(g, self.circ0_base[g] * r_now, self.feedback_max(r_now))
        last = self.cycle_no[g] >= batch.plan_cycles[c, li]
        self.new_line[g] = last
        self.next_due[g] = day + self.cycle_days[reg] + np.where(last, batch.line_gap[c, li], 0)
        self.recheck[g] = -1
        lo, hi = care.mid_cycle_day_range
        mid = self.ev.random(g.shape[0]) < care.mid_cycle_check_share
        mid_day = day + self.ev.integers(lo, hi + 1, g.shape[0]) - 1
        self.mid_day[g] = np.where(mid, mid_day, -1)
        lo, hi = care.nadir_check_day_range
        nadir = self.sv.random(g.shape[0]) < care.nadir_check_share
        nadir_day = day + self.sv.integers(lo, hi + 1, g.shape[0]) - 1
        self.nadir_day[g] = np.where(nadir, nadir_day, -1)
        cy = self.cycles
        cy["cand"].append(c)
        cy["day"].append(np.full(g.shape[0], day, dtype=np.int64))
        cy["reg"].append(reg)
        cy["line"].append(batch.first_line[c] + li)
        cy["cycle"].append(self.cycle_no[g])

    def mid_cycle_counts(self, day: int) -> None:
        """A clinically prompted count within the cycle; a low one may start hetrombopag."""
        care = self.care
        sel = np.flatnonzero(self.free() & (self.mid_day == day))
        if not sel.size:
            return
        plt = self.measure(sel)
        self.record_visit(sel, day, plt, MID_CYCLE, self.lm.chemistry_share_other)
        self.mid_day[sel] = -1
        count = plt[0]
        share = np.where(
            count < 50.0, care.treat_share_pre_cycle_below_50, care.treat_share_mid_cycle
        )
        treat = (
            (count < care.trigger_plt)
            & self.may_treat(sel, day)
            & (self.ev.random(sel.shape[0]) < share)
        )
        self.watch(sel[~treat], day, count[~treat])
        if treat.any():
            self.trigger(sel[treat], day, count[treat])

    def surveillance_counts(self, day: int) -> None:
        """Routine nadir counts and rechecks while low: they inform, never trigger."""
        sv = self.sv
        sel = np.flatnonzero(self.free() & ((self.nadir_day == day) | (self.recheck == day)))
        if not sel.size:
            return
        rechecking = self.recheck[sel] == day
        self.nadir_day[sel] = np.where(self.nadir_day[sel] == day, -1, self.nadir_day[sel])
        plt = self.measure(sel, sv)
        seen = (sv.random(sel.shape[0]) >= self.care.recheck_missed) & (self.last_draw[sel] != day)
        if seen.any():
            self.record_visit(
                sel[seen],
                day,
                (plt[0][seen], plt[1][seen]),
                SURVEILLANCE,
                self.lm.chemistry_share_other,
                sv,
            )
            self.watch(sel[seen], day, plt[0][seen])
        # a missed recheck is rescheduled; a missed nadir count is not
        again = sel[~seen & rechecking]
        if again.size:
            self.watch(again, day, np.zeros(again.shape[0]))

    def trigger(self, sel: np.ndarray, day: int, plt: np.ndarray) -> None:
        """Hetrombopag is decided: chemotherapy is withheld, the index date is today or next."""
        self.cycle_start[sel] = _NO_CYCLE
        self.mid_day[sel] = -1
        self.nadir_day[sel] = -1
        self.recheck[sel] = -1
        lag = (self.ev.random(sel.shape[0]) >= self.care.index_lag_shares[0]).astype(np.int64)
        self.pending[sel] = day + lag
        self.base[sel] = plt

    def hetrombopag_starts(self, day: int) -> None:
        """Index dates: dose, exposure and stimulation, monitoring schedule and follow-up."""
        sel = np.flatnonzero(self.active & (self.pending == day))
        if not sel.size:
            return
        batch, care, hp, pl, ev = self.batch, self.care, self.hp, self.pl, self.ev
        m = sel.shape[0]
        c = self.cand[sel]
        dose = np.where(
            ev.random(m) < hp.dose_mg_shares[0], hp.dose_mg_levels[0], hp.dose_mg_levels[1]
        )
        line = batch.first_line[c] + self.line_idx[sel]
        base = self.base[sel]
        reserve, damage = self.reserve[sel], self.damage[sel]
        exposure = _relative_exposure(dose, batch.tbil0[c], batch.crea0[c], batch.liver[c], hp)
        fixed = _stimulation_fixed(
            reserve, damage, exposure, batch.marrow[c], batch.ecog[c], line, hp
        )
        low = base < care.episode_interval_low_below_plt
        shares = np.where(
            low[:, None],
            np.asarray(care.episode_interval_shares_low),
            np.asarray(care.episode_interval_shares_high),
        )
        k = np.asarray(care.episode_interval_days)[_choice(ev, shares)]
        offset = 1 + (ev.random(m) * k).astype(np.int64)
        f_lo, f_hi = care.episode_follow_up_days_range
        follow = ev.integers(f_lo, f_hi + 1, m)
        lost = ev.random(m) < care.episode_lost_to_follow_up
        d_lo, d_hi = care.episode_dropout_day_range
        dropout = ev.random(m) < care.episode_dropout_share
        stop = np.where(dropout, day + ev.integers(d_lo, d_hi + 1, m), day + follow)
        stop = np.where(lost, day, stop)
        self.in_ep[sel] = True
        self.pending[sel] = -1
        self.ep_index[sel] = day
        self.ep_next[sel] = day + offset
        self.ep_k[sel] = k
        self.ep_end[sel] = day + follow
        self.ep_stop[sel] = stop
        self.stim_max[sel] = hetrombopag_stimulation(
            fixed, batch.latent[c], hp.latent_omega, hp.latent_cap, hp.stimulation_ceiling
        )
        n_ep = self.n_ep[sel]
        first = n_ep == 0
        self.n_ep[sel] = n_ep + 1
        self.dose_factor[sel] = np.maximum(
            self.dose_factor[sel] * pl.dose_reduction_after_episode, pl.dose_factor_min
        )
        self.next_due[sel] = np.maximum(self.next_due[sel], day + follow + 1)
        lo, hi = care.observation_after_first_episode_days
        extra = ev.integers(lo, hi + 1, m)
        self.obs_end[sel] = np.where(first, day + follow + extra, self.obs_end[sel])
        state, drug, params = self.state, self.drug, self.params
        self.episodes.append(
            {
                "cand": c,
                "day": np.full(m, day, dtype=np.int64),
                "number": n_ep + 1,
                "dose": dose,
                "line": line,
                "reg": self.cur_reg[sel],
                "base": base,
                "low": low,
                "exposure": exposure,
                "stim_fixed": fixed,
                "latent": batch.latent[c],
                "lost": lost,
                "dropout_day": np.where(dropout & ~lost, stop - day, -1),
                "days_since_cycle": day - self.last_cycle[sel],
                "prolif": state.prolif[sel],
                "t1": state.transit[0][sel],
                "t2": state.transit[1][sel],
                "t3": state.transit[2][sel],
                "circ": state.circ[sel],
                "dtransit": np.stack([t[sel] for t in drug.transit], axis=1),
                "dcirc": drug.circ[sel],
                "transfused": self.transfused[sel],
                "ktr": params.ktr[sel],
                "kcirc": params.kcirc[sel],
                "gamma": params.gamma[sel],
                "circ0": params.circ0[sel],
                "feedback_max": params.feedback_max[sel],
                "reserve": reserve,
                "damage": damage,
                "circ0_base": batch.circ0[c],
                "psi": batch.psi[c],
            }
        )

    def end_observation(self, day: int) -> None:
        ended = self.active & ~self.in_ep & (self.pending < 0) & (day >= self.obs_end)
        self.active[ended] = False

    def integrate(self, day: int) -> None:
        """The day's chemotherapy exposure, two steps of the platelet dynamics (own, added by
        hetrombopag near an episode, transfused), then a day of marrow healing."""
        hp, dt = self.hp, self.dt
        n_reg = len(REGIMENS)
        cd = day - self.cycle_start
        on = (cd >= 0) & (cd < MAX_CYCLE_DAYS) & self.active
        h = np.zeros(self.cand.shape[0])
        if on.any():
            idx = np.flatnonzero(on)
            key = (self.asian[idx] * n_reg + self.cur_reg[idx]) * MAX_CYCLE_DAYS + cd[idx]
            h[idx] = self.hazard[key] * self.psi[idx] * self.dose_factor[idx]
        inhibition = -np.expm1(-h)
        since = day - self.ep_index
        near = np.flatnonzero((since >= 0.0) & (since < self.episode_tail))
        if near.size:
            stim_near = self.stim_max[near]
            near_params = self.params.take(near)
            since_near = since[near]
            drug_near = self.drug.take(near)
        has_tx = np.flatnonzero(self.transfused > 0.0)
        for sub in range(self.steps):
            if near.size:
                envelope = episode_envelope(
                    since_near + sub * dt, hp.duration_days, hp.onset_tau_days, hp.offset_tau_days
                )
                drug_near = advance_drug(
                    drug_near, near_params, stim_near * envelope, self.state.prolif[near]
                )
            self.state = advance(self.state, self.params, inhibition, self.pl.pool_max)
            if has_tx.size:
                self.transfused[has_tx] *= self.tx_decay
        if near.size:
            for j, t in enumerate(drug_near.transit):
                self.drug.transit[j][near] = t
            self.drug.circ[near] = drug_near.circ
        self.transfused[self.transfused < 0.05] = 0.0
        # every row at once: a healed row's set point is recomputed to the value it has
        healing = self.damage < 0.9999
        self.damage = np.where(
            healing, 1.0 - (1.0 - self.damage) * self.damage_recovery, self.damage
        )
        r_now = self.reserve * self.damage
        self.params.set_point(slice(None), self.circ0_base * r_now, self.feedback_max(r_now))

    def results(
        self,
    ) -> tuple[
        dict[str, np.ndarray], dict[str, np.ndarray], dict[str, np.ndarray], dict[str, np.ndarray]
    ]:
        """(visits, cycles, episodes, course-level counts of the whole population)."""
        visits = (
            {k: np.concatenate(v) for k, v in self.visits.items()} if self.visits["cand"] else {}
        )
        cycles = {k: np.concatenate(v) for k, v in self.cycles.items()}
        episodes = (
            {k: np.concatenate([e[k] for e in self.episodes]) for k in self.episodes[0]}
            if self.episodes
            else {}
        )
        population = _population_counts(self.batch, self.course_started, self.course_min)
        return visits, cycles, episodes, population


def run_batch(
    batch: Batch,
    config: SimulationConfig,
    streams: Streams,
    tick: Callable[[int], None] | None = None,
) -> tuple[
    dict[str, np.ndarray], dict[str, np.ndarray], dict[str, np.ndarray], dict[str, np.ndarray]
]:
    """Simulate every candidate of the batch day by day; return visits, cycles, episodes and the
    course-level counts of the whole population (`_population_counts`)."""
    course = Course(batch, config, streams)
    course.run(tick)
    return course.results()


def _population_counts(
    batch: Batch, started: np.ndarray, course_min: np.ndarray
) -> dict[str, np.ndarray]:
    """Courses per regimen (and Asian or not) with their lowest measured PLT below 50, 75, 100."""
    n_reg = len(REGIMENS)
    reg = batch.plan[started]
    asian = np.broadcast_to(batch.asian[:, None], started.shape)[started].astype(np.int64)
    low = course_min[started]
    key = asian * n_reg + reg
    size = 2 * n_reg
    return {
        "courses": np.bincount(key, minlength=size),
        "below_50": np.bincount(key, weights=low < 50, minlength=size).astype(np.int64),
        "below_75": np.bincount(key, weights=low < 75, minlength=size).astype(np.int64),
        "below_100": np.bincount(key, weights=low < 100, minlength=size).astype(np.int64),
        "candidates": np.array([batch.n]),
        "treated": np.array([int(started.any(axis=1).sum())]),
    }


def _relative_exposure(
    dose: np.ndarray,
    tbil: np.ndarray,
    crea: np.ndarray,
    liver_mets: np.ndarray,
    hp: HetrombopagModel,
) -> np.ndarray:
    """Hetrombopag exposure relative to the reference dose in a patient with reference organ
    function: hepatic clearance falls as bilirubin rises (liver metastases add to it), renal
    function adds a smaller share."""
    bilirubin = tbil * np.where(liver_mets, 1.4, 1.0) / hp.bilirubin_reference_umol
    renal = crea / hp.creatinine_reference_umol
    return (
        dose
        / hp.reference_dose_mg
        * bilirubin**hp.exposure_bilirubin_exponent
        * renal**hp.exposure_creatinine_exponent
    )


def _stimulation_fixed(
    reserve: np.ndarray,
    damage: np.ndarray,
    exposure: np.ndarray,
    marrow: np.ndarray,
    ecog: np.ndarray,
    line: np.ndarray,
    hp: HetrombopagModel,
) -> np.ndarray:
    """Smax before the patient's unexplained variation: lasting marrow reserve (prior lines,
    radiotherapy, infiltration, cumulative cycles) and acute damage of the last cycles x
    exposure effect x marrow-infiltration, frailty and pretreatment factors (progenitors left
    after many lines answer less, beyond what the reserve says: Al-Samkari 2021)."""
    e = exposure**hp.exposure_hill
    effect = e / (e + hp.ec50_relative_exposure**hp.exposure_hill)
    return (
        hp.emax_max
        * reserve**hp.reserve_exponent
        * damage**hp.damage_exponent
        * effect
        * np.where(marrow, hp.factor_marrow, 1.0)
        * np.where(ecog >= 2, hp.factor_ecog_ge2, 1.0)
        * hp.factor_per_prior_line ** (line - 1)
    )
