"""Literature-grounded simulator of a breast-cancer CTIT cohort treated with hetrombopag.

Writes the cohort contract of DESIGN.md (patients, episodes, labs, regimens, transfusions as CSV,
no outcomes: labels are derived from the simulated counts by the same code as for real data) plus
`oracle.csv`, each episode's exact probability of response given its pre-index state, and
`population.csv`. The model, every parameter and its source are documented in `data/SIMULATOR.md`.

Modules, in the order they run:
- `config`: `SimulationConfig`; `params`: the model's parameters and tables (`ModelParameters`);
- `candidates`: a shard's random streams and candidates (covariates, latent parameters, plans);
- `course`: the day-by-day simulation of a shard (`Course`, one method per event), on the
  platelet dynamics of `dynamics`;
- `oracle`: each episode's probability of response with and without hetrombopag;
- `tables`: the contract tables and their writer; `simulate`: shards, workers, `simulate_cohort`;
- `report`: the cohort set beside its published targets (`ctit simulate --check`).
"""

from data.simulator.config import SimulationConfig
from data.simulator.simulate import Progress, SimulationSummary, simulate_cohort

__all__ = ["Progress", "SimulationConfig", "SimulationSummary", "simulate_cohort"]
