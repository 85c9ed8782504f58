"""Literature-grounded simulator of a breast-cancer CTIT cohort treated with hetrombopag.

Writes the cohort contract of DESIGN.md (patients, episodes, labs, regimens as CSV, no outcomes:
labels are derived from the simulated counts by the same code as for real data) plus `oracle.csv`,
each episode's exact probability of response given its pre-index state. The model, every parameter
and its source are documented in `data/SIMULATOR.md`.

Vectorised over patients: one loop over days (two integration steps per day); events (blood draws,
cycle starts, hetrombopag starts) are handled for the patients they concern with numpy masks.
Candidates are simulated in shards with their own random streams (in worker processes); each
shard's patients with an episode, their lab values and oracle are appended to the files in shard
order as shards finish.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from data.simulator.candidates import Batch, Streams
from data.simulator.config import SimulationConfig
from data.simulator.course import run_batch
from data.simulator.oracle import episode_probabilities
from data.simulator.tables import CohortRecords, CohortWriter

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class SimulationSummary:
    """What was written, with the oracle's own figures."""

    out_dir: Path
    files: dict[str, Path]
    n_patients: int
    n_episodes: int
    n_lab_rows: int
    n_regimen_rows: int
    n_candidates: int
    multi_episode_share: float
    asian_share: float
    oracle_mean: float
    oracle_max_error: float
    seconds: float


@dataclass
class _Totals:
    """Running counts over the parts written, for the summary."""

    patients: int = 0
    episodes: int = 0
    lab_rows: int = 0
    regimen_rows: int = 0
    multi_episode: int = 0
    asian: int = 0
    p_sum: float = 0.0
    p_max_error: float = 0.0

    def add(self, part: CohortRecords) -> None:
        self.patients += part.n_patients
        self.episodes += part.n_episodes
        self.lab_rows += part.n_lab_rows
        self.regimen_rows += part.n_regimen_rows
        self.multi_episode += part.n_multi_episode
        self.asian += part.n_asian
        self.p_sum += float(part.oracle["p_response"].sum())
        self.p_max_error = max(self.p_max_error, float(part.oracle["p_response_se"].max()))


_SHARD = 10_000
# Share of candidates with a CTIT episode assumed before any shard is back. It sizes the first
# round of shards (and so the cohort: shard sizes set the random streams), so it stays at the
# figure the cohort was calibrated with; the real share (about half) only means that the later
# shards of a round are not needed, and they are not simulated (see `_simulate_patients`).
_EXPECTED_YIELD = 0.25
# Shards are submitted ahead only while those in flight are not expected to fill the cohort with
# this margin; a shortfall costs one more shard, a surplus a shard simulated for nothing.
_SUBMIT_MARGIN = 1.03
_ORACLE_CHUNK = 512


def _simulate_shard(
    config: SimulationConfig, shard: int, size: int
) -> tuple[CohortRecords | None, dict[str, np.ndarray]]:
    """Simulate `size` candidates with the random streams of shard number `shard`; return those
    with a CTIT episode (None if none had one), with their lab values and oracle probabilities,
    and the course-level counts of all `size` candidates."""
    streams = Streams(config.seed, shard)
    batch = Batch(size, config, streams)
    visits, cycles, episodes, population = run_batch(batch, config, streams, None)
    records = CohortRecords.from_batch(batch, visits, cycles, episodes, config, streams)
    if records is not None:
        records.oracle = episode_probabilities(
            records.episodes, config.parameters, config.oracle_draws, _ORACLE_CHUNK
        )
    return records, population


def _in_order(
    pool: ProcessPoolExecutor | None,
    args: list[tuple[SimulationConfig, int, int]],
    ahead: int,
    wanted: Callable[[int], bool],
) -> Iterator[tuple[CohortRecords | None, dict[str, np.ndarray]]]:
    """Results of `_simulate_shard(*a)` for each of `args`, in order (the caller stops reading
    when it has enough). At most `ahead` shards are in flight, and a shard is submitted ahead
    only while `wanted(candidates in flight)` says those in flight may not be enough; without a
    pool, shards run here one by one. What is submitted never changes a result, only how much
    is simulated for nothing."""
    pending: deque[tuple[int, Future]] = deque()
    queue = deque(args)
    while queue or pending:
        if pool is None:
            yield _simulate_shard(*queue.popleft())
            continue
        while queue and len(pending) < ahead:
            if pending and not wanted(sum(size for size, _ in pending)):
                break
            a = queue.popleft()
            pending.append((a[2], pool.submit(_simulate_shard, *a)))
        yield pending.popleft()[1].result()


def _simulate_patients(
    config: SimulationConfig,
    pool: ProcessPoolExecutor | None,
    advance_to: Callable[[int], None],
    consume: Callable[[CohortRecords], None],
    population: dict[str, np.ndarray],
) -> int:
    """Simulate candidates shard by shard until enough of them had a CTIT episode; hand the kept
    patients of each shard, in shard order, to `consume`; return the number of candidates.

    Shards have a fixed size and their own random streams, and are read in order until the
    cohort is full, so the cohort and `population` (the shards read) do not depend on how many
    processes ran them.
    """
    n_kept = n_candidates = shard = 0
    n_with_episode = 0
    yield_rate = _EXPECTED_YIELD

    def wanted(in_flight: int) -> bool:
        seen = n_with_episode / n_candidates if n_candidates else 2 * _EXPECTED_YIELD
        return n_kept + seen * in_flight < config.n_patients * _SUBMIT_MARGIN

    while n_kept < config.n_patients:
        need = config.n_patients - n_kept
        size = int(np.ceil(need / yield_rate * 1.02)) + 20
        sizes = [min(_SHARD, size - a) for a in range(0, size, _SHARD)]
        args = [(config, shard + i, m) for i, m in enumerate(sizes)]
        results = _in_order(pool, args, config.workers + 1, wanted)
        round_candidates = round_with_episode = 0
        for i, (records, counts) in enumerate(results):
            for key, value in counts.items():
                population[key] = population.get(key, 0) + value
            n_candidates += sizes[i]
            round_candidates += sizes[i]
            if records is not None:
                n_with_episode += records.n_patients
                round_with_episode += records.n_patients
                part = records.head(config.n_patients - n_kept)
                n_kept += part.n_patients
                if part.n_patients:
                    consume(part)
            advance_to(90 * n_kept // config.n_patients)
            if n_kept >= config.n_patients:
                break
        shard += len(sizes)
        yield_rate = max(round_with_episode / round_candidates, 0.05)
        logger.info("%d candidates simulated, %d patients kept", n_candidates, n_kept)
        if shard > 1000:
            raise RuntimeError("the simulator kept too few patients; check the parameters")
    return n_candidates


def simulate_cohort(
    config: SimulationConfig, out_dir: Path | str, progress: Progress | None = None
) -> SimulationSummary:
    """Simulate the cohort of `config` and write it (CSV tables and `oracle.csv`) into `out_dir`.

    Args:
        progress: called as `progress(advance, total)` as the work proceeds.
    """
    began = time.perf_counter()
    out = Path(out_dir)
    total = 100
    done = [0]

    def advance_to(units: int) -> None:
        if progress is not None and units > done[0]:
            progress(units - done[0], total)
            done[0] = units

    workers = min(config.workers, os.cpu_count() or 1)
    pool = (
        ProcessPoolExecutor(max_workers=workers, mp_context=get_context("fork"))
        if workers > 1
        else None
    )
    totals = _Totals()

    def consume(part: CohortRecords) -> None:
        writer.write(part)
        totals.add(part)

    population: dict[str, np.ndarray] = {}
    try:
        with CohortWriter(out, config) as writer:
            n_candidates = _simulate_patients(config, pool, advance_to, consume, population)
            writer.write_population(population, n_candidates)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    advance_to(total)
    n, n_ep = totals.patients, totals.episodes
    summary = SimulationSummary(
        out_dir=out,
        files={name: out / path.name for name, path in writer.paths.items()},
        n_patients=n,
        n_episodes=n_ep,
        n_lab_rows=totals.lab_rows,
        n_regimen_rows=totals.regimen_rows,
        n_candidates=n_candidates,
        multi_episode_share=totals.multi_episode / n,
        asian_share=totals.asian / n,
        oracle_mean=totals.p_sum / n_ep if n_ep else float("nan"),
        oracle_max_error=totals.p_max_error if n_ep else float("nan"),
        seconds=time.perf_counter() - began,
    )
    logger.info("simulated %d patients, %d episodes", summary.n_patients, summary.n_episodes)
    return summary
