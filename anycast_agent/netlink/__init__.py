"""The kernel side: VIP addresses on the PoP's interface, through pyroute2 only."""
