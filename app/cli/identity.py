"""`imaging-facade identity …`: the review queue and link decisions from the command line.

Thin commands over app/identity/review.py, the functions the admin API calls too. Output is
tab-separated (list) or JSON (link, unlink, explain); it shows patient ids, never names.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import click

from app.cli.common import config_option, fail, load, open_store

if TYPE_CHECKING:
    from app.identity.settings import IdentityConfig
    from app.store.repository import Store

T = TypeVar("T")


def _run(config_path: str | None, action: Callable[[Store, IdentityConfig], T]) -> T:
    """`action(store, identity rules)` on the configured store; a refusal ends the command."""
    from app.identity.review import IdentityError

    config = load(config_path)
    store = open_store(config)
    try:
        return action(store, config.identity)
    except IdentityError as exc:
        fail(str(exc))
    finally:
        store.close()


@click.group()
def identity() -> None:
    """Patient identity across archives: the review queue, links and why."""


@identity.command("list")
@config_option
@click.option(
    "--status",
    default="review",
    show_default=True,
    type=click.Choice(["review", "linked", "manual-link", "manual-unlink", "all"]),
)
@click.option("--patient", default=None, help="only pairs with this Patient id")
@click.option("--limit", default=1000, show_default=True, type=click.IntRange(1, 10000), help="pairs on one page")
@click.option("--cursor", default=None, help="the page after the one that printed this cursor")
@click.option("--all", "every", is_flag=True, help="every page, one after the other")
def identity_list(
    config_path: str | None, status: str, patient: str | None, limit: int, cursor: str | None, every: bool
) -> None:
    """Scored pairs of Patients, best first: patient a, patient b, status, points.

    One page at a time; the end says how many pairs there are in all and, when more follow,
    the command that prints the next page (or --all prints them all)."""
    wanted = None if status == "all" else status
    patient = patient.removeprefix("Patient/") if patient else None
    _run(config_path, lambda store, _rules: _print_pages(store, status, wanted, patient, limit, cursor, every))


def _print_pages(
    store: Store, status: str, wanted: str | None, patient: str | None, limit: int, cursor: str | None, every: bool
) -> None:
    from app.identity.review import page_pairs

    printed, total = 0, 0
    while True:
        page = page_pairs(store, wanted, patient, limit, cursor, counted=printed == 0)
        total = page["total"] if printed == 0 else total
        if total == 0:
            click.echo(f"no pairs ({status})")
            return
        if printed == 0 and page["pairs"]:
            click.echo("patient a\tpatient b\tstatus\tpoints")
        for p in page["pairs"]:
            click.echo("\t".join([*p["patients"], p["status"], f"{p['points']:g}"]))
        printed += len(page["pairs"])
        cursor = page["next"]
        if not (every and cursor):
            break
    click.echo(f"{printed} pairs printed, {total} in all ({status})", err=True)
    if cursor:
        more = f" --patient {patient}" if patient else ""
        click.echo(
            f"next page: imaging-facade identity list --status {status}{more} --limit {limit} --cursor {cursor}",
            err=True,
        )


def _pair_command(name: str, action_name: str, help_text: str) -> click.Command:
    @identity.command(name, help=help_text)
    @config_option
    @click.argument("a")
    @click.argument("b")
    def command(config_path: str | None, a: str, b: str) -> None:
        from app.identity import review

        action = getattr(review, action_name)
        result = _run(
            config_path,
            lambda store, rules: action(store, a.removeprefix("Patient/"), b.removeprefix("Patient/"), rules),
        )
        click.echo(json.dumps(result, indent=2))

    return command


_pair_command("link", "link", "Link two Patients as one person (remembered: scoring never undoes it).")
_pair_command("unlink", "unlink", "Unlink two Patients for good (remembered: never linked automatically again).")
_pair_command("explain", "explain", "Score two Patients feature by feature, and say what is decided.")


@identity.command("rematch")
@config_option
def identity_rematch(config_path: str | None) -> None:
    """Score every Patient again, e.g. after changing the thresholds (a person's decisions stay)."""
    from app.identity.review import rematch

    changed = _run(config_path, rematch)
    click.echo(f"links changed on {changed} Patients")
