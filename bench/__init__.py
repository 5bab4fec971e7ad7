"""Benchmarks of anycast-agent beside ExaBGP's healthcheck: `python -m bench` (`make bench`)."""
