"""`imaging-facade check-config`: validate the config file and say what it configures."""

from __future__ import annotations

import click

from app.cli.common import config_option, load
from app.config import SecurityConfig


def _security_summary(security: SecurityConfig) -> str:
    if security.open:
        return "OPEN (no token needed)"
    if security.jwks_uri:
        return f"tokens required: JWTs from {security.issuer} (keys at {security.jwks_uri}), aud {security.audience}"
    if security.introspection:
        return f"tokens required: introspected at {security.introspection.url}, aud {security.audience}"
    return (
        "tokens required, but no token validator configured (security.jwks_uri or introspection): "
        "every data request gets 401"
    )


def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':')[0]}:***@{host}" if ":" in creds else url
    return url


@click.command("check-config")
@config_option
def check_config(config_path: str | None) -> None:
    """Validate the config file and say what it configures."""
    config = load(config_path)
    click.echo(f"config OK: {config.path}")
    click.echo(f"  store: {_redact(config.store)}")
    click.echo(f"  FHIR base URL: {config.server.base_url}  (search dates without a zone read in {config.timezone})")
    click.echo(f"  security: {_security_summary(config.security)}")
    if config.queue is not None:
        click.echo(
            f"  distributed sync: broker {_redact(config.queue.broker)}, queue {config.queue.name}, "
            f"{config.queue.studies_per_task} studies per task"
        )
    for src in config.sources:
        click.echo(f"  source {src.name}: {src.type} {src.protocol.where()} (local times in {src.timezone})")
        if src.profile is not None:
            click.echo(f"    mapping profile: {' -> '.join(src.profile.layers)}")
