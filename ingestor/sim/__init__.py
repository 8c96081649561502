"""Stripe API simulator: events, related objects, faults and ground truth for tests and demos."""

from __future__ import annotations

from ingestor.sim.scenario import Faults, Scenario, load_scenario
from ingestor.sim.server import SimServer, build_app
from ingestor.sim.simulator import Simulator

__all__ = ["Faults", "Scenario", "SimServer", "Simulator", "build_app", "load_scenario"]
