"""Instruments: what can be traded, with the lot and tick sizes orders must respect."""
