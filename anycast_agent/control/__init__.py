"""The operator side: the local HTTP control endpoint, status and Prometheus metrics."""
