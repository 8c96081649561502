"""SimServer (async context manager on a real socket) and `ingestor sim`'s blocking main."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator

from aiohttp import web

from ingestor.resource import AsyncResource
from ingestor.sim import api, control
from ingestor.sim.edge import stripe_edge
from ingestor.sim.faults import Limiters
from ingestor.sim.keys import LIMITERS, SIM, WEBHOOKS
from ingestor.sim.scenario import Scenario, load_scenario
from ingestor.sim.simulator import Simulator
from ingestor.sim.webhooks import WebhookDeliverer


def build_app(sim: Simulator, webhooks: WebhookDeliverer | None = None) -> web.Application:
    """The simulator's app; its webhook deliverer (the scenario's destinations unless given)
    runs from the app's start-up to its clean-up once it has a destination."""
    app = web.Application(middlewares=[stripe_edge], client_max_size=32 * 1024**2)
    app[SIM] = sim
    app[LIMITERS] = Limiters()
    app[WEBHOOKS] = WebhookDeliverer(sim, sim.scenario.webhooks) if webhooks is None else webhooks
    app.cleanup_ctx.append(_run_webhooks)
    api.add_routes(app)
    control.add_routes(app)
    return app


async def _run_webhooks(app: web.Application) -> AsyncIterator[None]:
    deliverer = app[WEBHOOKS]
    if deliverer.destinations:
        await deliverer.start()
    yield
    await deliverer.close()


class SimServer(AsyncResource):
    """The simulator on 127.0.0.1 (port 0 = a free one); `url` is valid inside the context."""

    def __init__(
        self,
        scenario: Scenario | None = None,
        *,
        seed: int = 0,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.scenario = scenario
        self.seed = seed
        self.host = host
        self.port = port
        self.url = ""
        self._sim: Simulator | None = None
        self._runner: web.AppRunner | None = None

    @property
    def sim(self) -> Simulator:
        if self._sim is None:
            raise RuntimeError("SimServer is not started")
        return self._sim

    async def start(self) -> None:
        # Building a large history is CPU work; do it off the loop so other tasks keep running.
        self._sim = await asyncio.to_thread(Simulator, self.scenario, seed=self.seed)
        runner = web.AppRunner(build_app(self._sim), access_log=None, handle_signals=False)
        await runner.setup()
        self._runner = runner
        site = web.TCPSite(runner, self.host, self.port, reuse_address=True)
        await site.start()
        host, port = runner.addresses[0][:2]
        self.port = port
        self.url = f"http://{host}:{port}"

    async def close(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()


async def serve(host: str, port: int, scenario: Scenario, seed: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with SimServer(scenario, seed=seed, host=host, port=port) as server:
        sim = server.sim
        print(
            f"stripe simulator on {server.url} (scenario {scenario.name!r}, seed {seed}, "
            f"{len(sim.events)} events)",
            flush=True,
        )
        for destination in scenario.webhooks:
            print(f"  pushing {destination.kind} events to {destination.url}", flush=True)
        await stop.wait()


def main(*, host: str, port: int, scenario: str | None, seed: int | None) -> int:
    """Runs until SIGTERM/SIGINT, then exits 0; 2 for a bad scenario."""
    try:
        loaded = load_scenario(scenario)
    except (OSError, ValueError) as exc:
        print(f"ingestor sim: bad scenario: {exc}", file=sys.stderr)
        return 2
    asyncio.run(serve(host, port, loaded, 0 if seed is None else seed))
    return 0
