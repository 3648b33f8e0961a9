"""Helpers shared by the test modules (numerics, AOT builds)."""
