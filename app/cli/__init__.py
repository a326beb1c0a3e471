"""`imaging-facade` command line: thin commands over the same functions the tests call."""

from __future__ import annotations

import logging

import click

from app.cli import check_config, db, explain, identity, quarantine, serve, sync, worker


@click.group()
def main() -> None:
    """FHIR R4 ImagingStudy facade over DICOM archives."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Alembic says at INFO what it assumes of each connection; `db upgrade` turns it back on
    logging.getLogger("alembic").setLevel(logging.WARNING)


main.add_command(check_config.check_config)
main.add_command(sync.sync)
main.add_command(quarantine.quarantine)
main.add_command(explain.map_file)
main.add_command(serve.serve)
main.add_command(identity.identity)
main.add_command(db.db)
main.add_command(worker.worker)
