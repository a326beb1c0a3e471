"""`imaging-facade quarantine list`: what a sync could not map, and why."""

from __future__ import annotations

import click

from app.cli.common import config_option, fail, load, open_store
from app.config import ConfigError


@click.group()
def quarantine() -> None:
    """Studies a sync could not map, with the reason; each later sync retries them."""


@quarantine.command("list")
@config_option
@click.option("--source", "source_name", default=None, help="only this source")
def quarantine_list(config_path: str | None, source_name: str | None) -> None:
    """List quarantined studies: source, study UID, where it was found, since when, and why."""
    from app.clock import micros_to_instant

    config = load(config_path)
    if source_name:
        try:
            config.source(source_name)
        except ConfigError as exc:
            fail(str(exc))
    store = open_store(config)
    entries = store.quarantine.entries(source_name)
    store.close()
    if not entries:
        click.echo("the quarantine is empty")
        return
    click.echo("source\tstudy uid\tlocation\tfirst seen\tlast seen\treason")
    for entry in entries:
        location = entry.key if entry.key != entry.study_uid else "-"
        click.echo(
            "\t".join(
                [
                    entry.source,
                    entry.study_uid or "-",
                    location,
                    micros_to_instant(entry.first_seen),
                    micros_to_instant(entry.last_seen),
                    entry.reason,
                ]
            )
        )
    click.echo(f"{len(entries)} quarantined", err=True)
