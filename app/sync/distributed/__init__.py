"""Distributed sync on Celery: a full sync whose studies are read and stored by workers on any
host, through a broker (RabbitMQ), into one PostgreSQL store.

coordinator.py  `sync --distributed`: list, hand out tasks, wait, settle the run
work.py         what one task does: read the listed studies it was given, store them
tasks.py        the Celery app, its delivery rules and the task, for workers and coordinator

Nothing here is imported unless a distributed sync or a worker runs: the embedded default
needs neither Celery nor a broker.
"""
