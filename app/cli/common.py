"""What every command shares: the --config option and how a bad config or name ends a command."""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, NoReturn

import click

from app.config import CONFIG_ENV, Config, ConfigError, load_config
from app.logs import LogSettings, configure

if TYPE_CHECKING:
    from celery import Celery

    from app.config import QueueConfig
    from app.store.repository import Store

CONFIG_HELP = f"config file (default: ${CONFIG_ENV} or ./config.yaml)"

config_option = click.option("--config", "config_path", default=None, help=CONFIG_HELP)


#: set by `load` when the config asks for JSON logs: then what a command says goes into the log
_json_logs = False


def say(message: str, err: bool = False) -> None:
    """Tell the operator: a plain line on stdout (stderr when `err`), or, when the config asks
    for JSON logs, a log record, so that a server's output is one JSON object per line."""
    if _json_logs:
        logging.getLogger("imaging_facade.cli").log(logging.WARNING if err else logging.INFO, message)
    else:
        click.echo(message, err=err)


def json_logs() -> bool:
    return _json_logs


def fail(message: str, status: int = 2) -> NoReturn:
    """End the command with `message` on stderr (exit status 2: the command was asked wrongly)."""
    click.echo(message, err=True)
    sys.exit(status)


def load(path: str | None) -> Config:
    """The config, or the end of the command naming every bad key."""
    try:
        config = load_config(path)
    except ConfigError as exc:
        fail(str(exc))
    global _json_logs
    if config.logging != LogSettings():  # the command line already logs plain lines at INFO
        configure(config.logging)
    _json_logs = config.logging.format == "json"
    return config


def open_store(config: Config) -> Store:
    """The configured store, or the end of the command when its schema is not this release's or
    its Patient ids are not re-keyed yet (saying what to run: `imaging-facade db upgrade`), or
    when the config's `identity.secret` is not the key its Patient ids were made with."""
    from app.store.patient_ids import KeyMismatch
    from app.store.repository import Store
    from app.store.schema import SchemaMismatch

    try:
        store = Store.from_config(config)
    except SchemaMismatch as exc:
        fail(exc.advice(str(config.path)))
    try:
        store.patient_id_key(config.identity.secret)
    except KeyMismatch as exc:
        store.close()
        fail(f"invalid configuration in {config.path}:\n  {exc}")
    return store


def task_queue(config: Config, command: str) -> tuple[Celery, QueueConfig]:
    """The Celery app of a distributed sync and its settings, or the end of the command naming
    the key at fault: no `queue` section, a store other than PostgreSQL (the workers of many
    hosts share it), or a broker that cannot be reached."""
    if config.queue is None:
        fail(
            f"invalid configuration in {config.path}:\n  queue: `{command}` needs a broker: add "
            "queue:\n    broker: amqp://user:${BROKER_PASSWORD}@host:5672//"
        )
    if not config.store.startswith("postgresql"):
        fail(
            f"invalid configuration in {config.path}:\n  store: `{command}` needs a PostgreSQL store "
            "(postgresql+psycopg://…) that every worker reaches; SQLite is one process's"
        )
    from app.taskqueue import broker_problem, make_app

    app = make_app(config.queue.broker, config.queue.name, config.store)
    problem = broker_problem(app)
    if problem:
        fail(problem, status=1)
    return app, config.queue
