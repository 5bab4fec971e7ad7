"""Fleet coordination over etcd: the edge that talks to the cluster (DESIGN §3.7, FLEET.md)."""
