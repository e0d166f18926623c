"""Idempotency-Key handling: a retried request replays the first response, never acts twice."""
