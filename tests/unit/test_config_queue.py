"""The `queue` section (a distributed sync's broker) and how `sync --distributed` and `worker`
refuse to start without what they need: each names the key at fault, none shows a traceback.

No broker runs here: an address nothing listens on stands for a broker that is down, which is
what a user with a wrong address or a stopped RabbitMQ meets.
"""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from app.cli import main
from testbed.orthanc import free_port
from tests.support.configs import config_problems, load_text

BROKER = "amqp://guest:guest@127.0.0.1:5672//"
SOURCE = "sources: [{name: web, type: dicomweb, url: 'http://127.0.0.1:9/dicom-web'}]\n"
#: a PostgreSQL store nobody listens on: the commands must stop before they reach it
PG = "postgresql+psycopg://facade@127.0.0.1:9/facade"


def test_no_queue_section_means_no_broker(tmp_path):
    assert load_text(tmp_path, "store: sqlite:///facade.db\n").queue is None


def test_the_queue_section_with_its_defaults(tmp_path):
    queue = load_text(tmp_path, f"store: sqlite:///facade.db\nqueue: {{broker: '{BROKER}'}}\n").queue
    assert queue is not None
    assert (queue.broker, queue.studies_per_task, queue.name) == (BROKER, 20, "imaging-facade-sync")


def test_a_broker_password_comes_from_the_environment(tmp_path):
    text = "store: sqlite:///facade.db\nqueue: {broker: 'amqp://facade:${MQ_PASSWORD}@mq:5672//'}\n"
    queue = load_text(tmp_path, text, environ={"MQ_PASSWORD": "s3cret"}).queue
    assert queue is not None and queue.broker == "amqp://facade:s3cret@mq:5672//"


@pytest.mark.parametrize(
    "queue, key, reason",
    [
        ("{}", "queue.broker", "Missing data"),
        ("{broker: 'http://mq:5672'}", "queue.broker", "must be a broker URL"),
        ("{broker: 'amqp://facade:s3cret@mq:5672//'}", "queue.broker", "password must not be written"),
        (f"{{broker: '{BROKER}', studies_per_task: 0}}", "queue.studies_per_task", "greater than or equal to 1"),
        (f"{{broker: '{BROKER}', name: 'a queue'}}", "queue.name", "must be a queue name"),
        (f"{{broker: '{BROKER}', brokers: 2}}", "queue.brokers", "Unknown field"),
    ],
)
def test_a_bad_queue_section_names_its_key(tmp_path, queue, key, reason):
    problems = config_problems(tmp_path, f"store: sqlite:///facade.db\nqueue: {queue}\n")
    assert key in problems and any(reason in p for p in problems[key]), problems


def _run(tmp_path, text: str, *args: str):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return CliRunner().invoke(main, [*args, "--config", str(path)])


def _refused(result, status: int, *words: str) -> None:
    assert result.exit_code == status, result.output
    assert isinstance(result.exception, SystemExit)  # a message, never a traceback
    assert "Traceback" not in result.output
    for word in words:
        assert word in result.stderr, result.stderr


COMMANDS = [("sync", "--distributed"), ("sync", "--watch", "--distributed"), ("worker",)]


@pytest.mark.parametrize("command", COMMANDS)
def test_without_a_queue_section_the_command_names_the_key(tmp_path, command):
    result = _run(tmp_path, f"store: {PG}\n{SOURCE}", *command)
    _refused(result, 2, "queue:", "needs a broker")


@pytest.mark.parametrize("command", COMMANDS)
def test_an_sqlite_store_is_refused(tmp_path, command):
    result = _run(tmp_path, f"store: sqlite:///facade.db\nqueue: {{broker: '{BROKER}'}}\n{SOURCE}", *command)
    _refused(result, 2, "store:", "needs a PostgreSQL store")
    assert not (tmp_path / "facade.db").exists()  # refused before anything was made


@pytest.mark.parametrize("command", COMMANDS)
def test_an_unreachable_broker_is_named_without_its_password(tmp_path, command):
    port = free_port()  # nothing listens there
    broker = f"amqp://guest:guest@127.0.0.1:{port}//"
    result = _run(tmp_path, f"store: {PG}\nqueue: {{broker: '{broker}'}}\n{SOURCE}", *command)
    _refused(result, 1, f"cannot reach the broker at amqp://guest:**@127.0.0.1:{port}// (queue.broker)")
    assert "guest:guest" not in result.stderr


def test_check_config_shows_the_broker_without_its_password(tmp_path):
    result = _run(tmp_path, f"store: sqlite:///facade.db\nqueue: {{broker: '{BROKER}'}}\n", "check-config")
    assert result.exit_code == 0, result.output
    assert "distributed sync: broker amqp://guest:***@127.0.0.1:5672//, queue imaging-facade-sync" in result.output
