"""anycast-agent: health checks beside ExaBGP that announce and withdraw anycast routes."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("anycast-agent")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+source"
