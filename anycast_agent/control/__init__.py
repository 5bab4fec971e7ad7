"""The operator side: the local HTTP control endpoint, status and Prometheus metrics."""

from anycast_agent.control.api import Controller, make_app
from anycast_agent.control.server import ControlServer, load_token

__all__ = ["ControlServer", "Controller", "load_token", "make_app"]
