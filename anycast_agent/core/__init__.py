"""The pure, synchronous core: health state machines, policy decisions and the route diff."""
