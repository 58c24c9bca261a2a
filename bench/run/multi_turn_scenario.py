"""The multi-turn scenario: one ``bench load --workload multi-turn`` run per number of concurrent sessions."""

from __future__ import annotations

from typing import Any

from bench.load.arrivals import ConcurrencyArrival
from bench.load.config import LoadConfig
from bench.run.scenarios import CellRun
from bench.run.schema import MultiTurnScenario


def multi_turn_config(scenario: MultiTurnScenario, run: CellRun, users: int) -> LoadConfig:
    """The scenario's ``bench load`` options against this cell's server, with ``users`` sessions at once."""
    return run.scenario_config(scenario, ConcurrencyArrival(n=users))


def run_multi_turn_scenario(scenario: MultiTurnScenario, run: CellRun) -> dict[str, Any]:
    """Each point's summary (TTFT/TPOT by turn, sessions achieved) under ``u<users>``."""
    points = {}
    for users in scenario.users:
        run.say(f"{scenario.name} · {users} sessions")
        folder = run.cell_dir / scenario.name / f"u{users}"
        points[f"u{users}"] = run.run(multi_turn_config(scenario, run, users), folder)
    return {"kind": "multi-turn", "points": points}
