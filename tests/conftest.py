"""Test-wide plugins: the netns lab fixtures (pop_lab, pop_lab_factory, exabgp_version)."""

pytest_plugins = ["tests.lab.fixtures"]
