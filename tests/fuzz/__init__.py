"""Seeded, reproducible fuzzing of every surface that takes outside input (issue "Hostile
input II"): `make fuzz` runs 100,000 inputs per surface; tests/unit/test_fuzz.py a small budget.
"""
