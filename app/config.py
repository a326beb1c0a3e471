"""Configuration: one YAML file, checked by a marshmallow schema before anything runs.

Every error names the key (as a dotted path such as `sources[1].url`) and the reason, so an
integration engineer can fix a hand-written file without reading code. Secrets are never
literal in the file: they are `${ENV_VAR}` references resolved at load time.
"""

from __future__ import annotations

import os
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from marshmallow import (
    RAISE,
    Schema,
    ValidationError,
    fields,
    validate,
    validates,
    validates_schema,
)
from sqlalchemy.engine import make_url

from app.export.settings import ExportSchema, ExportSettings, export_settings
from app.identity.settings import DEFAULT as IDENTITY_DEFAULT
from app.identity.settings import IdentityConfig, IdentitySchema
from app.logs import LogSettings
from app.mapping.profile import Profile, ProfileError, source_profile
from app.mapping.profile_yaml import YamlProblem, load_marked
from app.notify.settings import NotifySchema, NotifySettings
from app.sources.http import Credentials
from app.sources.settings import (
    OnDemandSettings,
    SourceSchema,
    SourceSettings,
    check_zone,
    protocol_settings,
    source_tls,
)

DEFAULT_CONFIG = "config.yaml"
CONFIG_ENV = "IMAGING_FACADE_CONFIG"
ENV_REF = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")
ENV_IN_TEXT = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
SECRET_KEYS = ("password", "token", "secret", "client_secret")


class ConfigError(Exception):
    """A configuration problem; `problems` maps each dotted key to its reasons."""

    def __init__(self, source: str, problems: dict[str, list[str]]):
        self.source = source
        self.problems = problems
        lines = [f"{key}: {reason}" for key, reasons in sorted(problems.items()) for reason in reasons]
        super().__init__(f"invalid configuration in {source}:\n  " + "\n  ".join(lines))


class Strict(Schema):
    class Meta:
        unknown = RAISE


def gateway_url(base_url: str) -> str:
    """The WADO-RS gateway's public address, next to the FHIR base (…/fhir -> …/wado-rs)."""
    return base_url.rstrip("/").rsplit("/", 1)[0] + "/wado-rs"


class TlsSchema(Strict):
    certfile = fields.String(required=True, validate=validate.Length(min=1))
    keyfile = fields.String(required=True, validate=validate.Length(min=1))
    #: RFC 6797 Strict-Transport-Security max-age; 0 sends none
    hsts_max_age = fields.Integer(load_default=31536000, validate=validate.Range(min=0))
    reload_check = fields.Float(load_default=10.0, validate=validate.Range(min=1, max=3600))


@dataclass(frozen=True)
class TlsSettings:
    """`server.tls`: HTTPS served by the server itself (app/server.py)."""

    certfile: Path
    keyfile: Path
    hsts_max_age: int = 31536000
    #: seconds between looks at the files' modification times; a change reloads the workers
    reload_check: float = 10.0


class ServerSchema(Strict):
    base_url = fields.URL(load_default="http://127.0.0.1:8080/fhir", require_tld=False, schemes={"http", "https"})
    host = fields.String(load_default="127.0.0.1")
    port = fields.Integer(load_default=8080, validate=validate.Range(min=1, max=65535))
    workers = fields.Integer(load_default=2, validate=validate.Range(min=1, max=64))
    sync_on_start = fields.Boolean(load_default=False)
    watch = fields.Boolean(load_default=False)
    default_count = fields.Integer(load_default=50, validate=validate.Range(min=1))
    max_count = fields.Integer(load_default=1000, validate=validate.Range(min=1))
    secret = fields.String(load_default=None)
    page_ttl = fields.Integer(load_default=3600, validate=validate.Range(min=1, max=7 * 86400))
    wado_gateway = fields.Boolean(load_default=False)
    trusted_proxies = fields.Integer(load_default=0, validate=validate.Range(min=0, max=5))
    tls = fields.Nested(TlsSchema, load_default=None)
    max_chain_depth = fields.Integer(load_default=3, validate=validate.Range(min=1, max=20))
    max_chains = fields.Integer(load_default=5, validate=validate.Range(min=0, max=50))
    max_includes = fields.Integer(load_default=1000, validate=validate.Range(min=1, max=100_000))
    statement_timeout = fields.Float(load_default=10.0, validate=validate.Range(min=0.1, max=60))

    @validates_schema
    def _counts(self, data: dict[str, Any], **_: Any) -> None:
        if data["default_count"] > data["max_count"]:
            raise ValidationError("must not exceed server.max_count", "default_count")

    @validates_schema
    def _https_links(self, data: dict[str, Any], **_: Any) -> None:
        if data.get("tls") and not data["base_url"].startswith("https://"):
            raise ValidationError("must be an https:// URL when server.tls is set (links name it)", "base_url")


#: JWS algorithms a token may be signed with: asymmetric only (RFC 8725 §3.1; SMART asks for
#: RS384/ES384); "none" and the HMAC family never, since a public key must not act as a secret
TOKEN_ALGORITHMS = ("RS256", "RS384", "ES256", "ES384")
#: codes of http://terminology.hl7.org/CodeSystem/smart-capabilities an authorization server may offer
SMART_CAPABILITIES = (
    "launch-ehr",
    "launch-standalone",
    "authorize-post",
    "client-public",
    "client-confidential-symmetric",
    "client-confidential-asymmetric",
    "sso-openid-connect",
    "context-passthrough-banner",
    "context-passthrough-style",
    "context-ehr-patient",
    "context-ehr-encounter",
    "context-standalone-patient",
    "context-standalone-encounter",
    "permission-offline",
    "permission-online",
    "permission-patient",
    "permission-user",
    "permission-v1",
    "permission-v2",
    "smart-app-state",
)
_ORIGIN = re.compile(r"^https?://[^/\s?#]+$")


class IntrospectionSchema(Strict):
    url = fields.URL(required=True, require_tld=False, schemes={"http", "https"})
    client_id = fields.String(required=True, validate=validate.Length(min=1))
    client_secret = fields.String(required=True)
    cache_seconds = fields.Float(load_default=30.0, validate=validate.Range(min=0, max=3600))
    timeout = fields.Float(load_default=5.0, validate=validate.Range(min=0.1, max=60))


class SecuritySchema(Strict):
    open = fields.Boolean(load_default=False)
    allow_open_on_network = fields.Boolean(load_default=False)
    # how tokens are checked: signed JWTs against the server's keys, or RFC 7662 introspection
    issuer = fields.URL(load_default=None, require_tld=False, schemes={"http", "https"})
    audience = fields.String(load_default=None, validate=validate.Length(min=1))
    jwks_uri = fields.URL(load_default=None, require_tld=False, schemes={"http", "https"})
    introspection = fields.Nested(IntrospectionSchema, load_default=None)
    algorithms = fields.List(
        fields.String(
            validate=validate.OneOf(
                TOKEN_ALGORITHMS,
                error="must be one of " + ", ".join(TOKEN_ALGORITHMS) + " (asymmetric signatures only)",
            )
        ),
        load_default=lambda: list(TOKEN_ALGORITHMS),
        validate=validate.Length(min=1),
    )
    clock_skew = fields.Integer(load_default=30, validate=validate.Range(min=0, max=300))
    patient_claim = fields.String(load_default="patient", validate=validate.Length(min=1))
    allow_plain_jwt = fields.Boolean(load_default=False)
    jwks_min_refresh = fields.Float(load_default=30.0, validate=validate.Range(min=0, max=3600))
    jwks_max_age = fields.Float(load_default=3600.0, validate=validate.Range(min=1))
    token_cache_size = fields.Integer(load_default=10000, validate=validate.Range(min=0, max=1_000_000))
    realm = fields.String(
        load_default="imaging-facade",
        validate=validate.Regexp(r'^[^"\\\x00-\x1f]+$', error="must be plain text without quotes or backslashes"),
    )
    # what /.well-known/smart-configuration tells apps about the authorization server
    authorization_endpoint = fields.URL(load_default=None, require_tld=False, schemes={"http", "https"})
    token_endpoint = fields.URL(load_default=None, require_tld=False, schemes={"http", "https"})
    grant_types_supported = fields.List(fields.String(validate=validate.Length(min=1)), load_default=None)
    capabilities = fields.List(
        fields.String(
            validate=validate.OneOf(
                SMART_CAPABILITIES, error="not a SMART capability code (see the SMART App Launch capability list)"
            )
        ),
        load_default=list,
    )
    # browsers and request limits
    cors_origins = fields.List(
        fields.String(
            validate=validate.Regexp(
                _ORIGIN, error="must be an origin such as https://viewer.example.org (scheme, host, port; no path)"
            )
        ),
        load_default=list,
    )
    max_body_bytes = fields.Integer(load_default=1_048_576, validate=validate.Range(min=1024, max=100 * 1_048_576))
    audit = fields.Boolean(load_default=True)
    audit_spool = fields.String(load_default=None, validate=validate.Length(min=1))

    @validates_schema(skip_on_field_errors=False)
    def _token_check(self, data: dict[str, Any], **_: Any) -> None:
        problems: dict[str, list[str]] = {}
        if not data.get("audit", True) and not data.get("open"):
            problems["audit"] = [
                "a server that checks tokens keeps an audit trail; audit: false is for open (demo) mode only"
            ]
        jwks, introspection = data.get("jwks_uri"), data.get("introspection")
        if jwks and introspection:
            problems["introspection"] = ["use jwks_uri (signed JWT access tokens) or introspection, not both"]
        if jwks and not data.get("issuer"):
            problems["issuer"] = ["tokens checked against jwks_uri need the issuer they must carry (iss)"]
        if (jwks or introspection) and not data.get("token_endpoint"):
            problems["token_endpoint"] = [
                "apps find the authorization server's token endpoint in /.well-known/smart-configuration: set it"
            ]
        if not (jwks or introspection) and (data.get("issuer") or data.get("token_endpoint")):
            problems["jwks_uri"] = [
                "an authorization server is named but nothing checks its tokens: set jwks_uri or introspection"
            ]
        if problems:
            raise ValidationError(problems)


class LoggingSchema(Strict):
    format = fields.String(load_default="text", validate=validate.OneOf(["text", "json"]))
    level = fields.String(load_default="INFO", validate=validate.OneOf(["DEBUG", "INFO", "WARNING", "ERROR"]))


class MetricsSchema(Strict):
    port = fields.Integer(load_default=None, validate=validate.Range(min=1, max=65535))
    host = fields.String(load_default="127.0.0.1", validate=validate.Length(min=1))


@dataclass(frozen=True)
class MetricsSettings:
    """`metrics`: where Prometheus scrapes (app/metrics.py); no port, no metrics served."""

    port: int | None = None
    host: str = "127.0.0.1"


#: brokers a distributed sync's workers take their tasks from (Celery's transports)
BROKER_SCHEMES = ("amqp", "amqps", "redis", "rediss")
#: RabbitMQ's own default account, which it lets in from the same host only: not a secret
_RABBITMQ_DEFAULT_LOGIN = "guest:guest@"


class QueueSchema(Strict):
    broker = fields.String(
        required=True,
        validate=validate.Regexp(
            r"^(amqps?|rediss?)://[^\s]*$",
            error="must be a broker URL: amqp://user:${{BROKER_PASSWORD}}@host:5672// (RabbitMQ) or redis://host:6379/0",
        ),
    )
    studies_per_task = fields.Integer(load_default=20, validate=validate.Range(min=1, max=1000))
    name = fields.String(
        load_default="imaging-facade-sync",
        validate=validate.Regexp(r"^[A-Za-z0-9._:-]{1,200}$", error="must be a queue name: letters, digits, . _ : -"),
    )


class ConfigSchema(Strict):
    store = fields.String(required=True)
    queue = fields.Nested(QueueSchema, load_default=None)
    timezone = fields.String(load_default="UTC", validate=check_zone)
    server = fields.Nested(ServerSchema, load_default=lambda: ServerSchema().load({}))
    security = fields.Nested(SecuritySchema, load_default=lambda: SecuritySchema().load({}))
    sources = fields.List(fields.Nested(SourceSchema), load_default=list)
    identity = fields.Nested(IdentitySchema, load_default=lambda: IdentitySchema().load({}))
    logging = fields.Nested(LoggingSchema, load_default=lambda: LoggingSchema().load({}))
    metrics = fields.Nested(MetricsSchema, load_default=lambda: MetricsSchema().load({}))
    export = fields.Nested(ExportSchema, load_default=lambda: ExportSchema().load({}))
    subscriptions = fields.Nested(NotifySchema, load_default=lambda: NotifySchema().load({}))

    @validates("store")
    def _store(self, value: str, **_: Any) -> None:
        if not re.match(r"^(sqlite|postgresql(\+psycopg)?)://", value):
            raise ValidationError("must be a sqlite:/// or postgresql+psycopg:// URL")

    @validates_schema
    def _metrics_port(self, data: dict[str, Any], **_: Any) -> None:
        if data.get("metrics", {}).get("port") is not None and data["metrics"]["port"] == data.get("server", {}).get(
            "port"
        ):
            raise ValidationError({"metrics": {"port": ["must differ from server.port: metrics are served apart"]}})

    @validates("sources")
    def _unique(self, value: list[Any], **_: Any) -> None:
        names = [s.get("name") for s in value]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValidationError(f"source names must be unique; repeated: {', '.join(dupes)}")


@dataclass(frozen=True)
class ServerConfig:
    base_url: str
    host: str
    port: int
    workers: int
    sync_on_start: bool
    watch: bool
    default_count: int
    max_count: int
    secret: str | None
    page_ttl: int = 3600
    #: serve WADO-RS at /wado-rs, forwarding to the archive of a study the token may see
    wado_gateway: bool = False
    #: reverse proxies (load balancers) in front of the server that append to X-Forwarded-For:
    #: the client's address, as audit records it, is the one the outermost of them saw
    trusted_proxies: int = 0
    tls: TlsSettings | None = None
    #: what one search may cost (app/search/query.py SearchLimits)
    max_chain_depth: int = 3
    max_chains: int = 5
    max_includes: int = 1000
    #: seconds one SQL statement of a request may run on PostgreSQL
    statement_timeout: float = 10.0


@dataclass(frozen=True)
class IntrospectionConfig:
    url: str
    client_id: str
    client_secret: str
    #: seconds an answer is reused (never beyond the token's exp)
    cache_seconds: float = 30.0
    timeout: float = 5.0


@dataclass(frozen=True)
class SecurityConfig:
    open: bool
    allow_open_on_network: bool
    #: record every request as an AuditEvent (false only in open mode)
    audit: bool = True
    #: where each process appends its AuditEvents before they are stored (app/store/audit_spool.py)
    audit_spool: Path | None = None
    issuer: str | None = None
    #: the `aud` a token must carry; defaults to server.base_url, as SMART apps send it
    audience: str | None = None
    jwks_uri: str | None = None
    introspection: IntrospectionConfig | None = None
    algorithms: tuple = TOKEN_ALGORITHMS
    clock_skew: int = 30
    #: the claim carrying the patient in context (SMART's `patient` launch context)
    patient_claim: str = "patient"
    #: also accept JWT access tokens typed `JWT` or untyped (servers that predate RFC 9068)
    allow_plain_jwt: bool = False
    #: seconds between key set fetches caused by an unknown key id, and before keys are fetched again anyway
    jwks_min_refresh: float = 30.0
    jwks_max_age: float = 3600.0
    token_cache_size: int = 10000
    realm: str = "imaging-facade"
    authorization_endpoint: str | None = None
    token_endpoint: str | None = None
    grant_types_supported: tuple | None = None
    capabilities: tuple = ()
    cors_origins: tuple = ()
    max_body_bytes: int = 1_048_576

    @property
    def checks_tokens(self) -> bool:
        return not self.open and (self.jwks_uri is not None or self.introspection is not None)


@dataclass(frozen=True)
class QueueConfig:
    """Where a distributed sync's tasks go (`sync --distributed`, `imaging-facade worker`)."""

    broker: str
    #: studies one task reads and stores
    studies_per_task: int = 20
    #: the broker queue: deployments (or tests) sharing a broker each use their own
    name: str = "imaging-facade-sync"


@dataclass(frozen=True)
class Config:
    store: str
    timezone: str
    server: ServerConfig
    security: SecurityConfig
    sources: list[SourceSettings] = field(default_factory=list)
    path: Path | None = None
    identity: IdentityConfig = IDENTITY_DEFAULT
    logging: LogSettings = field(default_factory=LogSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    #: the broker of a distributed sync; None: every sync runs in its own process
    queue: QueueConfig | None = None
    #: Bulk Data export (app/export); None only for configs built without the loader
    export: ExportSettings | None = None
    #: how Subscription notifications are sent (app/notify)
    subscriptions: NotifySettings = field(default_factory=NotifySettings)

    def source(self, name: str) -> SourceSettings:
        for src in self.sources:
            if src.name == name:
                return src
        raise ConfigError(str(self.path), {"sources": [f"no source named {name!r}"]})


def _flatten(messages: dict | list, prefix: str = "") -> dict[str, list[str]]:
    """marshmallow's nested error dict -> {"sources[1].url": [...]}."""
    out: dict[str, list[str]] = {}
    if isinstance(messages, list):
        out[prefix or "(file)"] = [str(m) for m in messages]
        return out
    for key, value in messages.items():
        if isinstance(key, int):
            path = f"{prefix}[{key}]"
        elif key == "_schema":
            path = prefix or "(file)"
        else:
            path = f"{prefix}.{key}" if prefix else str(key)
        for k, v in _flatten(value, path).items():
            out.setdefault(k, []).extend(v)
    return out


def _resolve_env(node: Any, path: str, problems: dict, environ: Mapping[str, str]) -> Any:
    """Replace `${VAR}` references in the file's YAML; secrets must be references, never literals."""
    if isinstance(node, dict):
        return {k: _resolve_env(v, f"{path}.{k}" if path else str(k), problems, environ) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve_env(v, f"{path}[{i}]", problems, environ) for i, v in enumerate(node)]
    if not isinstance(node, str):
        return node
    if path.rsplit(".", 1)[-1] in SECRET_KEYS and not ENV_REF.match(node.strip()):
        problems.setdefault(path, []).append(
            "secrets must not be written in the file; reference an environment variable, e.g. ${PACS_PASSWORD}"
        )
        return None
    if path == "store" and _literal_password(node):
        problems.setdefault(path, []).append(
            "the database password must not be written in the file; use user:${PGPASSWORD}@host"
        )
        return None
    if path == "queue.broker" and _literal_password(node.replace(_RABBITMQ_DEFAULT_LOGIN, "", 1)):
        problems.setdefault(path, []).append(
            "the broker password must not be written in the file; use user:${BROKER_PASSWORD}@host"
        )
        return None
    unset = [var for var in ENV_IN_TEXT.findall(node) if var not in environ]
    for var in unset:
        problems.setdefault(path, []).append(f"environment variable {var} is not set")
    if unset:
        return None
    return ENV_IN_TEXT.sub(lambda m: environ[m.group(1)], node)


def _literal_password(url: str) -> bool:
    """A database URL whose password is written out rather than referenced as ${VAR}."""
    match = re.match(r"^[a-z0-9+]+://[^/@]*?:([^/@]*)@", url)
    return bool(match and match.group(1) and not ENV_REF.match(match.group(1)))


def load_config(path: str | os.PathLike | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Read, resolve and validate the config; raise ConfigError naming every bad key."""
    environ = os.environ if environ is None else environ
    path = Path(path or environ.get(CONFIG_ENV) or DEFAULT_CONFIG)
    if not path.is_file():
        raise ConfigError(str(path), {"(file)": [f"no such config file: {path}"]})
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), {"(file)": [f"not valid YAML: {exc}"]}) from exc
    if not isinstance(raw, dict):
        raise ConfigError(str(path), {"(file)": ["the top level must be a mapping of keys"]})
    problems: dict[str, list[str]] = {}
    raw = _resolve_env(raw, "", problems, environ)
    try:
        data = ConfigSchema().load(raw)
    except ValidationError as exc:
        unresolved = set(problems)  # their schema errors only echo the missing value
        for key, reasons in _flatten(exc.messages).items():
            if key not in unresolved:
                problems.setdefault(key, []).extend(reasons)
        data = None
    if problems:
        raise ConfigError(str(path), problems)
    return _build(data, path.resolve().parent, path, _profile_lines(path))


def _profile_lines(path: Path) -> dict:
    """Lines of the config file by key path, so an inline `profile:` error names its line."""
    try:
        _, lines = load_marked(path.read_text(encoding="utf-8"), str(path))
    except YamlProblem:
        return {}
    return lines


def _profile(src: dict, index: int, root: Path, path: Path, lines: dict) -> Profile:
    """The merged mapping profile of one source; ConfigError naming the file and line."""
    legacy: dict = {}
    if src["patient_id_system"]:
        legacy["patient_id"] = {"system": src["patient_id_system"]}
    if src["accession_system"]:
        legacy["accession"] = {"system": src["accession_system"]}
    if src["issuer_systems"]:
        legacy["issuers"] = dict(src["issuer_systems"])
    prefix = ("sources", index, "profile")
    inline_lines = {key[len(prefix) :]: line for key, line in lines.items() if key[: len(prefix)] == prefix}
    try:
        return source_profile(src["vendor"], src["profile"], root, str(path), legacy, inline_lines)
    except ProfileError as exc:
        key = f"sources[{index}].vendor" if src["vendor"] and not src["profile"] else f"sources[{index}].profile"
        raise ConfigError(str(path), {key: exc.problems}) from exc


def _audit_spool(sec: dict, store: str, root: Path) -> Path:
    """Configured, else beside an SQLite store's file, else `.audit-spool` beside the config."""
    if sec["audit_spool"]:
        return (root / sec["audit_spool"]).resolve()
    database = make_url(store).database if store.startswith("sqlite:") else None
    if database and database != ":memory:":
        return Path(database).with_name(Path(database).name + ".audit-spool")
    return root / ".audit-spool"


def _security(sec: dict, base_url: str, store: str, root: Path) -> SecurityConfig:
    introspection = IntrospectionConfig(**sec["introspection"]) if sec["introspection"] else None
    return SecurityConfig(
        **{
            **sec,
            "audit_spool": _audit_spool(sec, store, root),
            "audience": sec["audience"] or base_url,
            "introspection": introspection,
            "algorithms": tuple(sec["algorithms"]),
            "grant_types_supported": tuple(sec["grant_types_supported"]) if sec["grant_types_supported"] else None,
            "capabilities": tuple(sec["capabilities"]),
            "cors_origins": tuple(o.rstrip("/") for o in sec["cors_origins"]),
        }
    )


def _tls(tls: dict | None, root: Path, path: Path) -> TlsSettings | None:
    """`server.tls` with its paths resolved, once the certificate and key are known to load
    together (a key that does not match the certificate is named here, not by a worker)."""
    if tls is None:
        return None
    settings = TlsSettings(**{**tls, "certfile": root / tls["certfile"], "keyfile": root / tls["keyfile"]})
    for key in ("certfile", "keyfile"):
        file = getattr(settings, key)
        if not file.is_file() or not os.access(file, os.R_OK):
            raise ConfigError(str(path), {f"server.tls.{key}": [f"{file} is not a readable file"]})
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(settings.certfile, settings.keyfile)
    except ssl.SSLError as exc:
        raise ConfigError(
            str(path), {"server.tls.keyfile": [f"does not load with server.tls.certfile: {exc.reason or exc}"]}
        ) from None
    return settings


def _build(data: dict, root: Path, path: Path, lines: dict | None = None) -> Config:
    store = data["store"]
    if store.startswith("sqlite:///") and not store.startswith("sqlite:////"):
        rel = store[len("sqlite:///") :]
        if rel and rel != ":memory:":
            store = "sqlite:///" + str((root / rel).resolve())
    sources = []
    server = data["server"]
    gateway = gateway_url(server["base_url"]) if server["wado_gateway"] else None
    identity = IdentityConfig.from_data(data["identity"])
    for index, src in enumerate(data["sources"]):
        sources.append(_source(src, index, data, root, path, lines or {}, gateway, identity))
    return Config(
        store=store,
        timezone=data["timezone"],
        server=ServerConfig(
            **{**server, "base_url": server["base_url"].rstrip("/"), "tls": _tls(server["tls"], root, path)}
        ),
        security=_security(data["security"], server["base_url"].rstrip("/"), store, root),
        sources=sources,
        path=path.resolve(),
        identity=identity,
        logging=LogSettings(**data["logging"]),
        metrics=MetricsSettings(**data["metrics"]),
        queue=QueueConfig(**data["queue"]) if data["queue"] else None,
        export=export_settings(data["export"], store, root),
        subscriptions=NotifySettings(**data["subscriptions"]),
    )


def _source(
    src: dict,
    index: int,
    data: dict,
    root: Path,
    path: Path,
    lines: dict,
    gateway: str | None,
    identity: IdentityConfig,
) -> SourceSettings:
    """One checked `sources[index]` entry as settings: its profile merged, its paths resolved."""
    profile = _profile(src, index, root, path, lines)
    try:
        tls = source_tls(src, root)
    except ValidationError as exc:
        raise ConfigError(str(path), _flatten(exc.messages, f"sources[{index}]")) from None
    wado_url = src["wado_url"] or (src["url"] if src["type"] == "dicomweb" else None)
    return SourceSettings(
        name=src["name"],
        type=src["type"],
        timezone=src["timezone"] or data["timezone"],
        patient_id_system=profile.patient_id_system or f"urn:imaging-facade:source:{src['name']}",
        protocol=protocol_settings(src, root, tls),
        accession_system=profile.accession_system,
        issuer_systems=dict(profile.issuers),
        wado_url=wado_url.rstrip("/") if wado_url else None,
        wado_credentials=Credentials(src["username"], src["password"], src["token"]),
        wado_timeout=src["timeout"],
        wado_tls=tls,
        endpoint_url=f"{gateway}/{src['name']}" if gateway and wado_url else wado_url,
        endpoint_requires_token=bool(gateway and wado_url and not data["security"]["open"]),
        poll_interval=(
            src["poll_interval"] if src["poll_interval"] is not None else 1.0 if src["changes"] == "orthanc" else 60.0
        ),
        full_every=src["full_every"],
        window_overlap_days=src["window_overlap_days"],
        on_demand=OnDemandSettings(**src["on_demand"]) if src["on_demand"] else None,
        profile=profile,
        identity=identity,
    )
