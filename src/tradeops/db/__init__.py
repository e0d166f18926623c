"""Database layer: engine, unit of work with request context, embedded PostgreSQL, error mapping."""
