"""Desks: the trading units that own clients and orders, and scope who sees what."""
