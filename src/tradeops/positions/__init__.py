"""Positions and portfolios: what clients hold, at what cost, and what it is worth."""
