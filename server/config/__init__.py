"""The one place that reads and validates the server's configuration.

:func:`load_settings` reads every setting (variable, ``NAME_FILE``, secrets directory, then
``sm://`` references through Secret Manager), checks them all and raises one
:class:`ConfigError` that lists every problem. Messages name the setting and where it was
looked for; they never contain a value. Everything else in the package receives a
:class:`Settings`.

``python -m server.config`` checks the configuration and exits 0, or 2 with the list of
problems; the entrypoint runs the same check through gunicorn's settings file.
"""

from __future__ import annotations

import functools
import os
import stat
import sys
import urllib.parse
from dataclasses import dataclass, field

from server.config import secret_manager
from server.config.sources import RawValue, SourceError, lookup, places
from server.gate import iap
from server.gate import users as users_mod
from server.gate.roles import Grants

DEFAULT_SECRETS_DIR = "/run/secrets"
TRUE = {"1", "true", "yes", "on"}
FALSE = {"0", "false", "no", "off"}

# Backend URI schemes users paste, and the SQLAlchemy URI we hand to MLflow. The image ships
# psycopg2 only; SQLAlchemy 2.1 reads plain postgresql:// as psycopg 3, so every Postgres form
# is pinned to psycopg2 here.
POSTGRES_SCHEMES = ("postgresql", "postgres", "postgresql+psycopg2", "postgresql+psycopg")
SQLITE_SCHEMES = ("sqlite",)
ARTIFACT_SCHEMES = ("gs", "s3", "file", "")  # "" is a local path
# Read by boto3 / MLflow's S3 repository rather than by us: (name, is secret)
LIBRARY_SETTINGS = (
    ("AWS_ACCESS_KEY_ID", True),
    ("AWS_SECRET_ACCESS_KEY", True),
    ("AWS_SESSION_TOKEN", True),
    ("AWS_DEFAULT_REGION", False),
    ("MLFLOW_S3_ENDPOINT_URL", False),
)


class ConfigError(Exception):
    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))

    def report(self) -> str:
        lines = ["mlflow-server: the configuration has problems; the server will not start:"]
        lines += [f"  - {p}" for p in self.problems]
        lines.append("See README.md, 'Settings', for every setting and where it is read from.")
        return "\n".join(lines)


@dataclass(frozen=True)
class Settings:
    backend_store_uri: str
    registry_store_uri: str | None
    artifacts_destination: str
    default_artifact_root: str
    users: dict[str, users_mod.User]
    users_files: tuple[str, ...]  # files the users came from; re-read when they change
    iap_audience: str | None  # Google sign-in through IAP (server/gate/iap.py); None: off
    iap_roles: dict[str, Grants]  # {email, @domain or *: its roles}
    iap_roles_files: tuple[str, ...]
    iap_keys_url: str
    public_urls: tuple[str, ...]
    host: str
    port: int
    workers: int
    threads: int
    worker_timeout: int
    forwarded_allow_ips: str
    http2_cleartext: str
    trusted_proxy_hops: int
    realm: str
    max_failures: int
    lockout_seconds: int
    db_auto_upgrade: bool
    db_pool_size: int
    enable_webhooks: bool
    job_execution: bool  # MLflow's job runner beside the server (server/jobs/runner.py)
    log_level: str
    local_mode: bool
    secrets_dir: str | None
    # variables read by libraries (boto3's AWS_*), resolved here so they too can come from
    # files or Secret Manager; exported to the environment before MLflow starts
    library_env: dict[str, str] = field(repr=False, default_factory=dict)
    secret_values: tuple[str, ...] = field(repr=False, default=())  # for log redaction
    warnings: tuple[str, ...] = ()  # worth an operator's attention, not fatal

    @property
    def backend_is_postgres(self) -> bool:
        return self.backend_store_uri.startswith("postgresql")


class _Reader:
    """Collects problems while settings are read, so all of them are reported at once."""

    def __init__(self, environ: dict[str, str]):
        self.environ = environ
        self.problems: list[str] = []
        self.warnings: list[str] = []  # not fatal; logged once logging is set up
        self.secret_values: list[str] = []
        sd = environ.get("MLFLOW_SECRETS_DIR", DEFAULT_SECRETS_DIR)
        self.secrets_dir = sd or None
        self._sm = secret_manager.SecretManagerResolver(environ.get("SECRET_MANAGER_ENDPOINT"))

    def raw(self, name: str, *, secret: bool = False) -> RawValue | None:
        try:
            found = lookup(name, self.environ, self.secrets_dir)
            if found is not None and secret_manager.is_reference(found.value):
                fetched = self._sm.fetch(found.value, name)
                found = RawValue(fetched, f"{found.origin} -> {found.value}")
        except SourceError as exc:
            self.problems.append(str(exc))
            return None
        if found is not None and secret:
            self.secret_values.append(found.value)
        return found

    def text(self, name: str, default: str | None = None, *, secret: bool = False) -> str | None:
        found = self.raw(name, secret=secret)
        return found.value.strip() if found else default

    def required(self, name: str, *, secret: bool = False, why: str = "") -> str | None:
        found = self.raw(name, secret=secret)
        if found is None:
            if not any(p.startswith(f"{name}:") for p in self.problems):
                hint = f" {why}" if why else ""
                self.problems.append(
                    f"{name}: not set (looked in {places(name, self.secrets_dir)}).{hint}"
                )
            return None
        return found.value.strip()

    def integer(self, name: str, default: int, minimum: int = 0) -> int:
        value = self.text(name)
        if value is None:
            return default
        try:
            number = int(value)
        except ValueError:
            self.problems.append(f"{name}: must be a whole number")
            return default
        if number < minimum:
            self.problems.append(f"{name}: must be at least {minimum}")
            return default
        return number

    def flag(self, name: str, default: bool) -> bool:
        value = self.text(name)
        if value is None:
            return default
        if value.lower() in TRUE:
            return True
        if value.lower() in FALSE:
            return False
        self.problems.append(f"{name}: must be true or false")
        return default


def normalize_backend_uri(uri: str) -> str:
    """Return the SQLAlchemy URI MLflow gets: every Postgres form pinned to psycopg2."""
    scheme, _, rest = uri.partition("://")
    if scheme.lower() in POSTGRES_SCHEMES:
        return f"postgresql+psycopg2://{rest}"
    return uri


def backend_uri_problem(uri: str) -> str | None:
    scheme = uri.partition("://")[0].lower() if "://" in uri else ""
    if scheme in POSTGRES_SCHEMES:
        parsed = urllib.parse.urlsplit(uri)
        if not parsed.path.strip("/"):
            return "MLFLOW_BACKEND_STORE_URI: the Postgres URI names no database"
        return None
    if scheme in SQLITE_SCHEMES or uri.startswith("sqlite:"):
        return None
    return (
        "MLFLOW_BACKEND_STORE_URI: must be a Postgres URI (postgresql://, postgresql+psycopg2://, "
        "postgres://) or SQLite (sqlite:///path)"
    )


def db_password(uri: str) -> str | None:
    try:
        return urllib.parse.urlsplit(uri).password
    except ValueError:
        return None


def artifact_scheme(destination: str) -> str:
    return urllib.parse.urlsplit(destination).scheme.lower() if "://" in destination else ""


def _choice(reader: _Reader, name: str, choices: tuple[str, ...], default: str) -> str:
    value = (reader.text(name) or default).lower()
    if value not in choices:
        reader.problems.append(f"{name}: must be one of {', '.join(choices)}")
        return default
    return value


def _public_urls(reader: _Reader) -> tuple[str, ...]:
    text = reader.text("MLFLOW_PUBLIC_URL") or ""
    urls = []
    for item in text.replace("\n", ",").split(","):
        item = item.strip().rstrip("/")
        if not item:
            continue
        parsed = urllib.parse.urlsplit(item)
        if parsed.scheme not in ("http", "https") or not parsed.hostname or parsed.path:
            reader.problems.append(
                "MLFLOW_PUBLIC_URL: each entry must be an origin such as https://mlflow.example.com"
            )
            continue
        urls.append(f"{parsed.scheme}://{parsed.netloc}")
    return tuple(urls)


def _users(reader: _Reader, iap_on: bool = False) -> tuple[dict[str, users_mod.User], tuple[str, ...]]:
    groups, files = [], []
    for name, parse in (
        ("MLFLOW_AUTH_USERS", users_mod.parse_htpasswd),
        ("WSGI_AUTH_CREDENTIALS", users_mod.parse_wsgi_auth_credentials),
    ):
        found = reader.raw(name, secret=True)
        if found is None:
            continue
        try:
            groups.append(parse(found.value, name))
        except users_mod.UsersError as exc:
            reader.problems.append(str(exc))
            continue
        if found.path:
            files.append(found.path)
            if warning := _readable_by_all(found.path, groups[-1]):
                reader.warnings.append(warning)
    try:
        merged = users_mod.merge(*groups)
    except users_mod.UsersError as exc:
        reader.problems.append(str(exc))
        return {}, ()
    if not merged and not iap_on and not any(
        p.startswith(("MLFLOW_AUTH_USERS", "WSGI_AUTH_CREDENTIALS")) for p in reader.problems
    ):
        reader.problems.append(
            "MLFLOW_AUTH_USERS: no users are configured, so nobody could log in and the server "
            "refuses to start (fail closed). Looked in "
            f"{places('MLFLOW_AUTH_USERS', reader.secrets_dir)} and $WSGI_AUTH_CREDENTIALS "
            "(or set MLFLOW_IAP_AUDIENCE and MLFLOW_IAP_ROLES for Google sign-in through IAP)."
        )
    for user in merged.values():
        if not user.is_hashed:
            reader.secret_values.append(user.secret)
    return merged, tuple(files)


def _iap_roles(reader: _Reader, audience: str | None) -> tuple[dict[str, Grants], tuple[str, ...]]:
    found = reader.raw("MLFLOW_IAP_ROLES")
    if audience is None:
        if found is not None:
            reader.problems.append("MLFLOW_IAP_ROLES: set, but MLFLOW_IAP_AUDIENCE is not, so nobody could sign in through IAP")
        return {}, ()
    if found is None:
        reader.problems.append(
            f"MLFLOW_IAP_ROLES: not set (looked in {places('MLFLOW_IAP_ROLES', reader.secrets_dir)}); "
            "with MLFLOW_IAP_AUDIENCE set it must give at least one account or domain a role")
        return {}, ()
    try:
        table = iap.parse_roles(found.value, "MLFLOW_IAP_ROLES")
    except ValueError as exc:
        reader.problems.append(str(exc))
        return {}, ()
    if not table:
        reader.problems.append("MLFLOW_IAP_ROLES: gives no account a role (fail closed)")
    return table, ((found.path,) if found.path else ())


def _iap_audience(reader: _Reader) -> str | None:
    audience = reader.text("MLFLOW_IAP_AUDIENCE")
    if audience is not None and not audience.startswith("/projects/"):
        reader.problems.append("MLFLOW_IAP_AUDIENCE: must look like /projects/NUMBER/locations/REGION/services/NAME "
                               "(Cloud Run) or /projects/NUMBER/global/backendServices/ID (load balancer)")
    return audience or None


def _iap_keys_url(reader: _Reader) -> str:
    url = reader.text("MLFLOW_IAP_KEYS_URL") or iap.GOOGLE_KEYS_URL
    if urllib.parse.urlsplit(url).scheme not in ("https", "http"):
        reader.problems.append("MLFLOW_IAP_KEYS_URL: must be an https:// URL")
    return url


def _readable_by_all(path: str, users: list[users_mod.User]) -> str | None:
    """A warning when plain passwords sit in a file every local account can read.

    Not refused: Cloud Run mounts secrets readable by all (the container has one account),
    and Docker bind-mounts keep the host's mode.
    """
    try:
        readable_by_all = os.stat(path).st_mode & stat.S_IROTH
    except OSError:
        return None
    if readable_by_all and any(not u.is_hashed for u in users):
        return (f"the users file {path} holds plain passwords and every local account can read it: "
                "chmod 600 it, or store bcrypt hashes (htpasswd -nbB name password)")
    return None


def load_settings(environ: dict[str, str] | None = None) -> Settings:
    """Read and validate every setting; raise :class:`ConfigError` listing all problems."""
    env = dict(os.environ if environ is None else environ)
    reader = _Reader(env)
    local_mode = reader.flag("MLFLOW_LOCAL_MODE", False)
    local_dir = os.path.abspath(reader.text("MLFLOW_LOCAL_DIR") or "mlflow-local")

    backend = reader.text("MLFLOW_BACKEND_STORE_URI", secret=True)
    if backend is None and local_mode:
        backend = f"sqlite:///{os.path.join(local_dir, 'mlflow.db')}"
    elif backend is None:
        reader.required(
            "MLFLOW_BACKEND_STORE_URI",
            why="Set a Postgres URI, or choose the local SQLite mode explicitly "
            "(entry-point.sh --local or MLFLOW_LOCAL_MODE=true).",
        )
    if backend is not None:
        if problem := backend_uri_problem(backend):
            reader.problems.append(problem)
        if password := db_password(backend):
            reader.secret_values.append(password)
        backend = normalize_backend_uri(backend)

    registry = reader.text("MLFLOW_REGISTRY_STORE_URI", secret=True)
    if registry is not None:
        if problem := backend_uri_problem(registry):
            reader.problems.append(problem.replace("MLFLOW_BACKEND_STORE_URI", "MLFLOW_REGISTRY_STORE_URI"))
        if password := db_password(registry):
            reader.secret_values.append(password)
        registry = normalize_backend_uri(registry)

    destination = reader.text("MLFLOW_ARTIFACTS_DESTINATION")
    if destination is None and local_mode:
        destination = os.path.join(local_dir, "artifacts")
    elif destination is None:
        reader.required(
            "MLFLOW_ARTIFACTS_DESTINATION", why="Set gs://bucket/prefix, s3://bucket/prefix or a local path."
        )
    if destination is not None and artifact_scheme(destination) not in ARTIFACT_SCHEMES:
        reader.problems.append(
            "MLFLOW_ARTIFACTS_DESTINATION: unknown scheme; use gs://, s3://, file:// or a local path"
        )

    iap_audience = _iap_audience(reader)
    users, users_files = _users(reader, iap_on=iap_audience is not None)
    iap_roles, iap_roles_files = _iap_roles(reader, iap_audience)
    library_env = {}
    for name, secret in LIBRARY_SETTINGS:
        if (value := reader.text(name, secret=secret)) is not None:
            library_env[name] = value
    settings = Settings(
        backend_store_uri=backend or "",
        registry_store_uri=registry,
        artifacts_destination=destination or "",
        default_artifact_root=reader.text("MLFLOW_DEFAULT_ARTIFACT_ROOT") or "mlflow-artifacts:/",
        users=users,
        users_files=users_files,
        iap_audience=iap_audience,
        iap_roles=iap_roles,
        iap_roles_files=iap_roles_files,
        iap_keys_url=_iap_keys_url(reader),
        public_urls=_public_urls(reader),
        host=reader.text("MLFLOW_HOST") or "0.0.0.0",
        port=reader.integer("PORT", 8080, minimum=1),
        workers=reader.integer("MLFLOW_WORKERS", 2, minimum=1),
        threads=reader.integer("MLFLOW_THREADS", 8, minimum=1),
        worker_timeout=reader.integer("MLFLOW_WORKER_TIMEOUT", 60, minimum=1),
        forwarded_allow_ips=reader.text("FORWARDED_ALLOW_IPS") or "127.0.0.1,::1",
        http2_cleartext=_choice(reader, "MLFLOW_HTTP2_CLEARTEXT", ("off", "prior-knowledge", "upgrade", "both"), "off"),
        trusted_proxy_hops=reader.integer("MLFLOW_TRUSTED_PROXY_HOPS", 0),
        realm=reader.text("MLFLOW_AUTH_REALM") or "MLflow",
        max_failures=reader.integer("MLFLOW_AUTH_MAX_FAILURES", 10, minimum=1),
        lockout_seconds=reader.integer("MLFLOW_AUTH_LOCKOUT_SECONDS", 60, minimum=1),
        db_auto_upgrade=reader.flag("MLFLOW_DB_AUTO_UPGRADE", True),
        db_pool_size=reader.integer("MLFLOW_SQLALCHEMYSTORE_POOL_SIZE", 5, minimum=1),
        enable_webhooks=reader.flag("MLFLOW_ENABLE_WEBHOOKS", False),
        job_execution=reader.flag("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", True),
        log_level=(reader.text("LOG_LEVEL") or "info").lower(),
        local_mode=local_mode,
        secrets_dir=reader.secrets_dir,
        library_env=library_env,
        secret_values=tuple(v for v in reader.secret_values if v),
        warnings=tuple(reader.warnings),
    )
    if reader.problems:
        raise ConfigError(reader.problems)
    return settings


def reload_users(environ: dict[str, str] | None = None) -> dict[str, users_mod.User]:
    """Read the users again (after a secret file changed); raise ConfigError on a problem."""
    reader = _Reader(dict(os.environ if environ is None else environ))
    users, _ = _users(reader, iap_on=_iap_audience(reader) is not None)
    if reader.problems:
        raise ConfigError(reader.problems)
    return users


def reload_iap_roles(environ: dict[str, str] | None = None) -> dict[str, Grants]:
    """Read the IAP roles again (after their secret file changed); raise ConfigError on a problem."""
    reader = _Reader(dict(os.environ if environ is None else environ))
    table, _ = _iap_roles(reader, _iap_audience(reader))
    if reader.problems:
        raise ConfigError(reader.problems)
    return table


@functools.lru_cache(maxsize=1)
def current_settings() -> Settings:
    """The settings of this process, read once (gunicorn's settings file and the app share it)."""
    return load_settings()


def main() -> int:
    try:
        load_settings()
    except ConfigError as exc:
        print(exc.report(), file=sys.stderr)
        return 2
    print("mlflow-server: configuration OK", file=sys.stderr)
    return 0

