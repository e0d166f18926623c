"""Liveness, readiness and the database check that load balancers and dashboards poll."""
