"""Engines decide who processes which part; they never change what a part contains."""
