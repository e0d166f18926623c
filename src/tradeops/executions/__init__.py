"""Executions: fills reported by venues and the OMS, applied to orders and positions."""
