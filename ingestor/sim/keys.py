"""Typed aiohttp application keys shared by the simulator's HTTP modules."""

from __future__ import annotations

from aiohttp import web

from ingestor.sim.faults import RateLimiter
from ingestor.sim.simulator import Simulator

SIM = web.AppKey("sim", Simulator)
LIMITER = web.AppKey("limiter", RateLimiter)
