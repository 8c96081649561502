"""Typed aiohttp application keys shared by the simulator's HTTP modules."""

from __future__ import annotations

from aiohttp import web

from ingestor.sim.faults import Limiters
from ingestor.sim.simulator import Simulator
from ingestor.sim.webhooks import WebhookDeliverer

SIM = web.AppKey("sim", Simulator)
LIMITERS = web.AppKey("limiters", Limiters)
WEBHOOKS = web.AppKey("webhooks", WebhookDeliverer)
