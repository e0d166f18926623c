"""Database layer: connection pool, unit of work with request context, embedded PostgreSQL, error
mapping."""
