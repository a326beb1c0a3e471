"""`imaging-facade map FILE`: the resources one DICOM file becomes, and where each element came from."""

from __future__ import annotations

import click

from app.cli.common import CONFIG_HELP, fail, load
from app.config import ConfigError


@click.command("map")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option(
    "--source",
    "source_name",
    default=None,
    help="map as this source of the config does (its profile, zone, Endpoint); default: the base profile",
)
@click.option("--config", "config_path", default=None, help=CONFIG_HELP + "; read only with --source")
@click.option("--json", "as_json", is_flag=True, help="print JSON: the resources and each element's origin")
def map_file(file: str, source_name: str | None, config_path: str | None, as_json: bool) -> None:
    """Print the FHIR resources FILE becomes, with the DICOM tags and profile rule behind each element."""
    from dataclasses import replace
    from secrets import token_bytes

    import orjson
    from rich.console import Console

    from app.mapping.context import MappingContext
    from app.sync.explain import ExplainError, explain_file, render

    if source_name:
        config = load(config_path)
        try:
            ctx = config.source(source_name).mapping_context()
        except ConfigError as exc:
            fail(str(exc))
    else:
        ctx = MappingContext(source="explain", timezone="UTC", patient_id_system="urn:imaging-facade:source:explain")
    # without a store at hand, a key of this run's own: the Patient id shown is of the right
    # form, not the one a store would give (that takes the deployment's key)
    ctx = replace(
        ctx, identity=ctx.identity.with_key(ctx.identity.secret.encode() if ctx.identity.secret else token_bytes(32))
    )
    try:
        explanation = explain_file(file, ctx)
    except ExplainError as exc:
        fail(str(exc))
    if as_json:
        click.echo(orjson.dumps(explanation.as_json(), option=orjson.OPT_INDENT_2).decode())
    else:
        render(explanation, Console())
