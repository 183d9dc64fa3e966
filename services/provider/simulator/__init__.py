"""A DashScope-compatible server with knobs for limits and faults, and counters that prove
what was submitted and billed."""

from services.provider.simulator.engine import SimConfig, Simulator
from services.provider.simulator.server import RunningSimulator, running_simulator, serve

__all__ = ["RunningSimulator", "SimConfig", "Simulator", "running_simulator", "serve"]
