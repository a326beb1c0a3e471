"""`imaging-facade` command line: thin commands over the same functions the tests call."""
from __future__ import annotations

import logging
import sys

import click

from app.config import CONFIG_ENV, ConfigError, load_config

CONFIG_HELP = f"config file (default: ${CONFIG_ENV} or ./config.yaml)"


def _load(path):
    try:
        return load_config(path)
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)


@click.group()
def main():
    """FHIR R4 ImagingStudy facade over DICOM archives."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _security_summary(security) -> str:
    if security.open:
        return "OPEN (no token needed)"
    if security.jwks_uri:
        return f"tokens required: JWTs from {security.issuer} (keys at {security.jwks_uri}), aud {security.audience}"
    if security.introspection:
        return f"tokens required: introspected at {security.introspection.url}, aud {security.audience}"
    return ("tokens required, but no token validator configured (security.jwks_uri or introspection): "
            "every data request gets 401")


@main.command("check-config")
@click.option("--config", "config_path", default=None, help=CONFIG_HELP)
def check_config(config_path):
    """Validate the config file and say what it configures."""
    config = _load(config_path)
    click.echo(f"config OK: {config.path}")
    click.echo(f"  store: {_redact(config.store)}")
    click.echo(f"  FHIR base URL: {config.server.base_url}  (search dates without a zone read in {config.timezone})")
    click.echo(f"  security: {_security_summary(config.security)}")
    for src in config.sources:
        where = {"folder": src.path, "dicomweb": src.url,
                 "dimse": f"{src.host}:{src.port} (called {src.called_aet}, calling {src.calling_aet})"}[src.type]
        click.echo(f"  source {src.name}: {src.type} {where} (local times in {src.timezone})")
        if src.profile is not None:
            click.echo(f"    mapping profile: {' -> '.join(src.profile.layers)}")


def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':')[0]}:***@{host}" if ":" in creds else url
    return url


@main.command()
@click.option("--config", "config_path", default=None, help=CONFIG_HELP)
@click.option("--source", "source_name", default=None, help="sync only this source")
@click.option("--watch", is_flag=True, help="keep syncing until stopped (SIGTERM or Ctrl-C)")
def sync(config_path, source_name, watch):
    """Run one sync of every source (or one) with a progress bar and a summary."""
    from app.store.repository import Store

    config = _load(config_path)
    try:
        sources = [config.source(source_name)] if source_name else config.sources
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)
    if not sources:
        click.echo("no sources configured", err=True)
        sys.exit(2)
    store = Store.from_config(config)
    if watch:
        _watch(store, sources)
        return
    failed = False
    for src in sources:
        summary = _sync_with_progress(store, src)
        failed = failed or bool(summary.error)
    sys.exit(1 if failed else 0)


def _watch(store, sources) -> None:
    """Poll until SIGTERM or SIGINT; the study in hand is finished first."""
    import signal
    import threading

    from app.watch import watch

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())

    def report(summary):
        if summary.error:
            click.echo(f"{summary.source}: poll failed: {summary.error}", err=True)
        elif summary.changed or summary.failed:
            click.echo(f"{summary.source}: {summary.new} new, {summary.updated} updated, {summary.deleted} deleted, "
                       f"{summary.failed} failed")

    names = ", ".join(src.name for src in sources)
    click.echo(f"watching {names}; stop with SIGTERM or Ctrl-C")
    watch(store, sources, stop, report)
    store.close()
    click.echo("stopped")


def _sync_with_progress(store, src):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from app.sync import sync_source

    console = Console(stderr=True)
    columns = [TextColumn(f"[bold]{src.name}[/]"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[rate]:.1f} studies/s"), TimeElapsedColumn()]
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(src.name, total=None, rate=0.0)

        def progress(summary, total):
            elapsed = max(bar.tasks[0].elapsed or 0.0, 1e-6)
            bar.update(task, completed=summary.done, total=total, rate=summary.done / elapsed)

        summary = sync_source(store, src, progress)
    stats = ", ".join(f"{k} {v}" for k, v in summary.source_stats.items())
    click.echo(
        f"{src.name}: {summary.new} new, {summary.updated} updated, {summary.unchanged} unchanged, "
        f"{summary.failed} failed ({summary.repaired} repaired) in {summary.seconds:.1f}s"
        + (f" [{stats}]" if stats else "")
    )
    if summary.failed:
        click.echo(f"{src.name}: {summary.failed} studies quarantined; "
                   f"`imaging-facade quarantine list --source {src.name}` shows why")
    if summary.released:
        click.echo(f"{src.name}: {summary.released} studies left the quarantine")
    if summary.deleted:
        click.echo(f"{src.name}: {summary.deleted} studies are no longer in the archive")
    if summary.incomplete:
        click.echo(f"{src.name}: the archive's listing was incomplete (it caps its answers); deleted studies "
                   "were not looked for", err=True)
    if summary.error:
        click.echo(f"{src.name}: sync stopped: {summary.error}", err=True)
    return summary


@main.group()
def quarantine():
    """Studies a sync could not map, with the reason; each later sync retries them."""


@quarantine.command("list")
@click.option("--config", "config_path", default=None, help=CONFIG_HELP)
@click.option("--source", "source_name", default=None, help="only this source")
def quarantine_list(config_path, source_name):
    """List quarantined studies: source, study UID, where it was found, since when, and why."""
    from app.search.dates import micros_to_instant
    from app.store.repository import Store

    config = _load(config_path)
    if source_name:
        try:
            config.source(source_name)
        except ConfigError as exc:
            click.echo(str(exc), err=True)
            sys.exit(2)
    store = Store.from_config(config)
    entries = store.quarantined(source_name)
    store.close()
    if not entries:
        click.echo("the quarantine is empty")
        return
    click.echo("source\tstudy uid\tlocation\tfirst seen\tlast seen\treason")
    for entry in entries:
        location = entry.key if entry.key != entry.study_uid else "-"
        click.echo("\t".join([entry.source, entry.study_uid or "-", location, micros_to_instant(entry.first_seen),
                              micros_to_instant(entry.last_seen), entry.reason]))
    click.echo(f"{len(entries)} quarantined", err=True)


@main.command("map")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--source", "source_name", default=None,
              help="map as this source of the config does (its profile, zone, Endpoint); default: the base profile")
@click.option("--config", "config_path", default=None, help=CONFIG_HELP + "; read only with --source")
@click.option("--json", "as_json", is_flag=True, help="print JSON: the resources and each element's origin")
def map_file(file, source_name, config_path, as_json):
    """Print the FHIR resources FILE becomes, with the DICOM tags and profile rule behind each element."""
    import orjson
    from rich.console import Console

    from app.explain import ExplainError, explain_file, render
    from app.mapping.context import MappingContext
    from app.sync import mapping_context

    if source_name:
        config = _load(config_path)
        try:
            ctx = mapping_context(config.source(source_name))
        except ConfigError as exc:
            click.echo(str(exc), err=True)
            sys.exit(2)
    else:
        ctx = MappingContext(source="explain", timezone="UTC", patient_id_system="urn:imaging-facade:source:explain")
    try:
        explanation = explain_file(file, ctx)
    except ExplainError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)
    if as_json:
        click.echo(orjson.dumps(explanation.as_json(), option=orjson.OPT_INDENT_2).decode())
    else:
        render(explanation, Console())


def _with_bind(config, host: str, port: int):
    """Links follow a --host/--port override when base_url named the configured address."""
    from dataclasses import replace
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(config.server.base_url)
    if parts.netloc != f"{config.server.host}:{config.server.port}" or (host, port) == (
            config.server.host, config.server.port):
        return config
    base_url = urlunsplit(parts._replace(netloc=f"{host}:{port}"))
    return replace(config, server=replace(config.server, base_url=base_url, host=host, port=port))


@main.command()
@click.option("--config", "config_path", default=None, help=CONFIG_HELP)
@click.option("--host", default=None, help="address to bind (default: server.host)")
@click.option("--port", default=None, type=int, help="port (default: server.port)")
@click.option("--workers", default=None, type=int, help="gunicorn worker processes (default: server.workers)")
def serve(config_path, host, port, workers):
    """Serve the FHIR API at http://HOST:PORT/fhir with gunicorn."""
    from app.security import check_open_mode
    from app.server import run_gunicorn
    from app.store.repository import Store

    config = _load(config_path)
    host = host or config.server.host
    port = port or config.server.port
    workers = workers or config.server.workers
    config = _with_bind(config, host, port)
    try:
        warning = check_open_mode(config, host)
    except SystemExit as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)
    if warning:
        logging.getLogger("imaging_facade").warning(warning)
    store = Store.from_config(config)  # creates tables before workers fork
    store.paging_secret()
    if config.server.sync_on_start:
        for src in config.sources:
            _sync_with_progress(store, src)
    store.close()
    click.echo(f"serving FHIR R4 at http://{host}:{port}/fhir (base URL in links: {config.server.base_url})")
    watcher = _start_watcher(config) if config.server.watch and config.sources else None
    try:
        run_gunicorn(config, host, port, workers)
    finally:
        if watcher is not None:
            watcher.terminate()  # SIGTERM: it finishes the study in hand
            watcher.wait(timeout=60)


def _start_watcher(config):
    """`sync --watch` as a child process: the API workers never wait for an archive."""
    import subprocess

    click.echo("server.watch: syncing continuously in a child process")
    return subprocess.Popen([sys.executable, "-m", "app.cli", "sync", "--watch", "--config", str(config.path)])


from app.cli_identity import identity  # noqa: E402

main.add_command(identity)

if __name__ == "__main__":
    main()
