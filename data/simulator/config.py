"""What to simulate: the simulator's one configuration object."""

from __future__ import annotations

from dataclasses import dataclass, field

from data.simulator.params import ModelParameters


@dataclass(frozen=True)
class SimulationConfig:
    """What to simulate.

    Attributes:
        n_patients: patients written (each has at least one CTIT episode).
        seed: seed of every random draw; the same config writes byte-identical files.
        start_year: calendar year of the earliest treatment start.
        n_years: years over which patients start treatment.
        n_sites: hospitals (1-10), each with its own laboratory coding and units.
        oracle_draws: quadrature nodes (midpoint rule on normal quantiles) over the episode's
            responsiveness effect; the oracle's error is estimated against half as many nodes.
        workers: processes used (1 = in this process); the files do not depend on it.
        parameters: the model's parameters (defaults documented in SIMULATOR.md).
    """

    n_patients: int = 2000
    seed: int = 2024
    start_year: int = 2019
    n_years: int = 6
    n_sites: int = 6
    oracle_draws: int = 64
    workers: int = 2
    parameters: ModelParameters = field(default_factory=ModelParameters)

    def __post_init__(self) -> None:
        problems = []
        if not 1 <= self.n_patients <= 5_000_000:
            problems.append(f"n_patients must be between 1 and 5,000,000, got {self.n_patients}")
        if not 0 <= self.seed < 2**63:
            problems.append(f"seed must be a non-negative integer below 2**63, got {self.seed}")
        if not 1990 <= self.start_year <= 2100:
            problems.append(f"start_year must be between 1990 and 2100, got {self.start_year}")
        if not 1 <= self.n_years <= 30:
            problems.append(f"n_years must be between 1 and 30, got {self.n_years}")
        if not 1 <= self.n_sites <= 10:
            problems.append(f"n_sites must be between 1 and 10, got {self.n_sites}")
        if not 4 <= self.oracle_draws <= 1000:
            problems.append(f"oracle_draws must be between 4 and 1000, got {self.oracle_draws}")
        if not 1 <= self.workers <= 64:
            problems.append(f"workers must be between 1 and 64, got {self.workers}")
        if problems:
            raise ValueError("invalid simulation config: " + "; ".join(problems))
