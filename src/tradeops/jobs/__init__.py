"""Background jobs: procrastinate on our PostgreSQL, deferred in the caller's transaction.

`defer.py` is all the request path needs (one statement, no procrastinate import);
`registry.py` holds the procrastinate App, `tasks.py` the tasks that register on it, and
`app.py` the worker that runs them.
"""
