"""Background jobs: procrastinate on our PostgreSQL, deferred in the caller's transaction.

`defer.py` is all the request path needs (one statement, no procrastinate import);
`app.py` holds the procrastinate App and the worker; `tasks.py` the tasks.
"""
