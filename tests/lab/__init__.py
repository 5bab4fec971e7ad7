"""Network-namespace test lab: real BGP daemons, ExaBGP and edge servers in throwaway namespaces.

Use from a test module (or the root conftest) with `pytest_plugins = ["tests.lab.fixtures"]`
(never import tests.lab.fixtures directly: pytest must load it first to rewrite its asserts)::

    def test_withdraw_on_stop(pop_lab: PopLab) -> None:   # runs for ExaBGP 4.2 and 5.0
        exa = pop_lab.start_exabgp()                       # stub API process by default
        pop_lab.bird.wait_route("192.0.2.10/32", timeout_s=10)
        exa.stop()
        pop_lab.bird.wait_route("192.0.2.10/32", present=False, timeout_s=3)

ANYCAST_TEST_EXABGP_42 / ANYCAST_TEST_EXABGP_50 name the ExaBGP binaries; ANYCAST_LAB_KEEP=1
keeps every lab's work dir (it is always kept when the test failed).
"""

from tests.lab.bird import Bird, BirdRoute, ImportCounters
from tests.lab.description import LabDescription, Link, Session
from tests.lab.edges import EdgeServer
from tests.lab.exabgp import (
    Exabgp,
    ExabgpNeighbor,
    ExabgpProcess,
    exabgp_binary,
    render_exabgp_conf,
)
from tests.lab.netns import Netns, veth_pair
from tests.lab.processes import ProcessRegistry
from tests.lab.topology import PopLab
from tests.lab.wait import assert_holds, wait_for

__all__ = [
    "Bird",
    "BirdRoute",
    "EdgeServer",
    "Exabgp",
    "ExabgpNeighbor",
    "ExabgpProcess",
    "ImportCounters",
    "LabDescription",
    "Link",
    "Netns",
    "PopLab",
    "ProcessRegistry",
    "Session",
    "assert_holds",
    "exabgp_binary",
    "render_exabgp_conf",
    "veth_pair",
    "wait_for",
]
