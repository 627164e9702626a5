"""The ``tidings`` command: a thin layer that parses arguments and calls library code.

Every failure is one line on stderr and a non-zero exit (design §2.8);
``tidings --debug COMMAND`` (or ``TIDINGS_DEBUG=1``) shows the traceback instead.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime

import click
import msgspec

from tidings import bootstrap, config_file, logs
from tidings.core.models import SPREAD_DEFAULT, SPREAD_MAX, valid_user
from tidings.errors import TidingsError

WS_PROTOCOL = "tidings.gateway.uvicorn_ws:TidingsWebSocketProtocol"
# the direct routes and bounds on the request head (tidings/api/uvicorn_http.py,
# tidings/api/http_limits.py, docs/security.md)
HTTP_PROTOCOL = "tidings.api.uvicorn_http:TidingsHttpProtocol"
DATA_HELP = "Data directory of the embedded store (default ./tidings-data)."
STORE_HELP = "Store URL (default: SQLite file in --data)."
KEY_FILE_HELP = ("File holding the key the store's secrets are sealed under "
                 "($TIDINGS_SECRET_KEY_FILE; or the key itself in $TIDINGS_SECRET_KEY; "
                 "`tidings secrets`).")


def _settings(config: str | None, **flags):
    """defaults < the configuration file < TIDINGS_* variables < flags."""
    return config_file.load(config, **flags)[0]


def _key_flags(secret_key_file: str | None) -> dict:
    """``--secret-key-file`` as settings: over both variables, as a flag is."""
    if secret_key_file is None:
        return {}
    return {"secret_key_file": secret_key_file, "secret_key": ""}


key_file_option = click.option("--secret-key-file", default=None, metavar="FILE",
                               help=KEY_FILE_HELP)


# Every command that reads the settings takes the file they start from.
config_option = click.option(
    "--config", "config", default=None, metavar="FILE",
    help="Settings file (default $TIDINGS_CONFIG, else ./tidings.toml if present).")


def one_line(exc: BaseException) -> str:
    """What went wrong, in one line, without internals."""
    from tidings.broker.base import BrokerUnavailable
    from tidings.client import TidingsAPIError
    from tidings.outbox import OutboxMissing

    if isinstance(exc, TidingsAPIError):
        text = str(exc)  # "401 unauthorized: ..." as the server said it
    elif isinstance(exc, TidingsError):
        text = exc.message
    elif isinstance(exc, msgspec.ValidationError):
        text = f"invalid setting: {exc}"
    elif isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror + (f": {exc.filename}" if exc.filename else "")
    elif isinstance(exc, ValueError | RuntimeError | BrokerUnavailable | OutboxMissing) \
            and str(exc):
        text = str(exc)  # unsupported URLs, schema mismatches, an unreachable broker
    else:
        text = f"{type(exc).__name__}: {exc} (tidings --debug shows the traceback)"
    return " ".join(text.split())


class _UsageLine(click.ClickException):
    exit_code = 2  # click's code for usage errors


class _Main(click.Group):
    """Turns any exception a command lets out into one line on stderr, exit 1
    (usage errors: exit 2, one line instead of click's usage block)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx else "tidings"
            # one line: click lists a required choice's values one a line
            message = " ".join(exc.format_message().split())
            raise _UsageLine(f"{message} (see {where} --help)") from None
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            if ctx.params.get("debug"):
                raise
            raise click.ClickException(one_line(exc)) from None


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, default=lambda: os.environ.get("TIDINGS_DEBUG") == "1",
              help="Show the traceback of a failure ($TIDINGS_DEBUG=1).")
@click.version_option(package_name="tidings")
def main(debug: bool) -> None:
    """tidings: a real-time notification service."""


@main.command()
@config_option
@click.option("--host", default=None, help="Address to listen on (default 127.0.0.1).")
@click.option("--port", default=None, type=click.IntRange(0, 65535),
              help="Port to listen on (default 8080; 0: any free port).")
@click.option("--data", default=None, help=DATA_HELP)
@click.option("--store", default=None, help=STORE_HELP + " Cluster: postgresql://...")
@click.option("--broker", default=None,
              help="Broker URL (default: the PostgreSQL store's LISTEN/NOTIFY, else "
                   "in-process). Largest fan-outs: redis://HOST:PORT, or "
                   "redis+cluster://HOST:PORT[,HOST:PORT...] for a Redis Cluster.")
@click.option("--outbox", is_flag=False, flag_value="store", default=None,
              metavar="[postgresql://...]",
              help="Consume the transactional outbox table of this database "
                   "(alone: the store's); see `tidings outbox schema`.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Worker processes sharing the port; more than one needs a PostgreSQL "
                   "store or --broker.")
@click.option("--node", default=None,
              help="This node's name in the cluster (default host:port:pid).")
@click.option("--cache/--no-cache", default=None,
              help="The hot-path cache (default on; off only to measure it).")
@click.option("--allowed-origin", "allowed_origins", multiple=True,
              help="Allowed browser Origin for the WebSocket check and CORS (exact match; "
                   "repeatable). Default: any.")
@click.option("--limit", multiple=True, metavar="NAME=VALUE",
              help="Set one of the [limits] (repeatable; over the file and "
                   "$TIDINGS_LIMITS_NAME), e.g. --limit max_body_bytes=1048576.")
@key_file_option
@click.option("--log-level", default="warning", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]))
@click.option("--log-format", envvar="TIDINGS_LOG_FORMAT", default="text", show_default=True,
              type=click.Choice(["text", "json"]),
              help="json: one object a line with time, level, node, request id, app "
                   "($TIDINGS_LOG_FORMAT).")
def serve(config, host, port, data, store, broker, outbox, workers, node, cache, allowed_origins,
          limit, secret_key_file, log_level, log_format) -> None:
    """Run the service (zero configuration: SQLite in ./tidings-data)."""
    settings = _settings(config, host=host, port=port, data=data, store=store, broker=broker,
                         outbox=outbox, node=node, cache=cache,
                         allowed_origins=allowed_origins or None, limits=_limits(limit),
                         **_key_flags(secret_key_file))
    if not 0 <= settings.port <= 65535:  # TIDINGS_PORT is not checked by click
        raise click.BadParameter(f"{settings.port} is not a port (0-65535)",
                                 param_hint="--port / TIDINGS_PORT")
    if workers > 1 and settings.broker in ("local", "memory") or (
            workers > 1 and settings.broker is None and not _postgres(settings.store)):
        # Each worker is its own process: without a shared broker a
        # notification published through one would never reach devices
        # connected to another.
        raise click.UsageError("--workers N needs a shared broker: a PostgreSQL store "
                               "(--store postgresql://...) or --broker redis://HOST:PORT")
    if workers > 1 and settings.port == 0:
        raise click.UsageError("--workers N needs a fixed --port")
    limits = settings.limits
    options = dict(
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http=HTTP_PROTOCOL,
        timeout_keep_alive=limits.keep_alive_timeout,
        ws=WS_PROTOCOL,
        ws_per_message_deflate=False,  # 2.5-5x memory per connection otherwise
        ws_max_size=limits.max_ws_message_bytes,
        ws_ping_interval=settings.ping_interval,
        ws_ping_timeout=settings.ping_timeout,
        log_level=log_level,
        timeout_graceful_shutdown=5,
        backlog=4096,
    )
    log_config = logs.uvicorn_log_config(log_format, log_level)
    if log_config is not None:
        options["log_config"] = log_config
    if workers > 1:
        _serve_workers(settings, workers, options)
        return
    from tidings import serving
    from tidings.api.app import create_app

    # Bind before anything else: a taken port or a foreign address is one
    # clear error, before any credentials are printed.
    try:
        sock = serving.bind(settings.host, settings.port, 4096)
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {settings.host}:{settings.port}: "
                                   f"{exc.strerror or exc}") from None
    settings.port = sock.getsockname()[1]  # the real one when --port 0
    base = f"http://{settings.host}:{settings.port}"
    try:
        _first_start(settings, base)
        app = create_app(settings)
    except BaseException:
        sock.close()
        raise
    where = bootstrap.store_location(settings)

    def listening() -> None:
        click.echo(f"tidings listening on {base} (store: {where}, workers: 1)")
        sys.stdout.flush()

    if not serving.run(app, sock, options, listening):
        raise click.ClickException("the server did not start (its log above says why)")


def _limits(given: tuple[str, ...]) -> dict:
    """``--limit NAME=VALUE`` flags as a dict for the settings' ``limits``."""
    from tidings.config import Limits

    limits = {}
    for item in given:
        name, sep, value = item.partition("=")
        name = name.strip().lower()
        if not sep or not value.strip():
            raise click.BadParameter(f"{item!r} is not NAME=VALUE", param_hint="--limit")
        if name not in Limits.__struct_fields__:
            raise click.BadParameter(f"{name!r} is not a limit (`tidings config` lists them)",
                                     param_hint="--limit")
        limits[name] = value.strip()
    return limits


def _serve_workers(settings, workers: int, options: dict) -> None:
    # Worker processes are spawned, rebuild the app from the settings and
    # listen on the port with SO_REUSEPORT (tidings/workers.py says why).
    from tidings import workers as supervisor

    base = f"http://{settings.host}:{settings.port}"
    try:
        supervisor.check_reuseport(settings.host, settings.port)
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {base}: {exc.strerror}") from None
    _first_start(settings, base)
    where = bootstrap.store_location(settings)

    def listening() -> None:
        click.echo(f"tidings listening on {base} (store: {where}, workers: {workers})")
        sys.stdout.flush()

    supervisor.supervise(workers, msgspec.json.encode(settings).decode(), options, listening)


def _postgres(url: str | None) -> bool:
    return url is not None and url.startswith(("postgresql://", "postgres://"))


def _first_start(settings, base: str) -> None:
    """Create the first app on an empty store and print how to use it (and
    check the outbox database, when there is one to consume)."""
    created = bootstrap.first_start(settings)
    if settings.outbox is not None:
        bootstrap.check_outbox(settings)
    if created:
        click.echo("Created app 'default' (shown once; keep these):")
        click.echo(f"  API key:         {created['api_key']}")
        click.echo(f"  signing secret:  {created['signing_secret']}")
        click.echo(f"  demo user token: {created['demo_token']}")
        click.echo("Publish to the demo user:")
        click.echo(
            f"  curl -X POST {base}/v1/notifications -H 'Authorization: Bearer "
            f"{created['api_key']}' -H 'Content-Type: application/json' "
            f"-d '{{\"to\": {{\"users\": [\"{created['demo_user']}\"]}}, \"title\": \"Hello\"}}'"
        )
        click.echo(f"Watch it arrive:\n  tidings listen --url {base} --token "
                   f"{created['demo_token']}")
        click.echo(f"  or in a browser: {base}/demo?token={created['demo_token']}")
        click.echo(f"Dashboard: {base}/dashboard (log in with the API key above)")


@main.command()
@config_option
@click.option("--data", default=None, help=DATA_HELP)
@click.option("--store", default=None, help=STORE_HELP + " Cluster: postgresql://...")
def migrate(config, data, store) -> None:
    """Apply the store's pending schema migrations, then exit (docs/operations.md)."""
    applied, version = bootstrap.migrate(_settings(config, data=data, store=store))
    for v in applied:
        click.echo(f"applied schema v{v}")
    click.echo(f"schema is at v{version}" + ("" if applied else "; nothing to apply"))


@main.group()
def outbox() -> None:
    """The transactional outbox (docs/outbox.md)."""


@outbox.command("schema")
def outbox_schema() -> None:
    """Print the DDL of the outbox tables, to apply in the app's database."""
    from tidings.outbox import SCHEMA

    click.echo(SCHEMA, nl=False)


@main.group()
def app() -> None:
    """Manage apps."""


@app.command("create")
@click.argument("name")
@config_option
@click.option("--id", "app_id", default=None,
              help="The app's id (1-64 of a-z 0-9 _ -). Default: NAME when it is one.")
@click.option("--data", default=None, help=DATA_HELP)
@click.option("--store", default=None, help=STORE_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def app_create(name, config, app_id, data, store, as_json) -> None:
    """Create an app in an existing store; prints its id, API key and signing secret."""
    out = bootstrap.create_app(_settings(config, data=data, store=store), name, app_id)
    if as_json:
        click.echo(json.dumps(out))
    else:
        for k, v in out.items():
            click.echo(f"{k}: {v}")


@app.command("rotate-secret")
@config_option
@click.option("--app", "app_id", required=True, help="App id.")
@click.option("--overlap", default=None, type=click.IntRange(min=0),
              help="Seconds the current secret is still taken for tokens. Default: the "
                   "limit token_max_ttl (30 days), so tokens minted before live their "
                   "life; 0 for a leaked secret: refused at once.")
@click.option("--data", default=None, help=DATA_HELP)
@click.option("--store", default=None, help=STORE_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def app_rotate_secret(config, app_id, overlap, data, store, as_json) -> None:
    """Give an app a new signing secret for user tokens; prints it (shown this once).

    With --overlap 0, servers on the broker of these settings (a PostgreSQL
    store's own, or the configured one) refuse the old secret at once, any
    other within 5 s (their cache of apps), and end the open streams of
    tokens it signed (docs/operations.md#a-leaked-signing-secret)."""
    out = bootstrap.rotate_secret(_settings(config, data=data, store=store), app_id, overlap)
    if as_json:
        click.echo(json.dumps(out))
        return
    click.echo(f"app: {out['app']}")
    click.echo(f"signing_secret: {out['signing_secret']}")
    until = out["previous_secret_valid_until"]
    click.echo("previous secret: " + ("refused from now on" if until is None
                                      else f"taken until {until}"))


@main.group()
def key() -> None:
    """Manage an app's API keys: create, list, rotate, revoke (docs/security.md#api-keys)."""


def _when(value: str | None) -> datetime | None:
    """An ISO 8601 time (``--expires-at``); its zone and range are the
    service's to check (tidings/service/keys.py)."""
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter("an ISO 8601 time with a zone, e.g. 2030-01-01T00:00:00Z",
                                 param_hint="--expires-at") from None


@key.command("create")
@config_option
@click.option("--app", "app_id", required=True, help="App id.")
@click.option("--scope", "scopes", multiple=True, required=True,
              type=click.Choice(["publish", "read", "admin"]),
              help="What the key may do; repeat for several (admin covers the other two).")
@click.option("--name", default=None,
              help="What the key is for (1-64 characters), shown by `key list`.")
@click.option("--expires-at", default=None,
              help="When the key stops working: ISO 8601 with a zone "
                   "(2030-01-01T00:00:00Z), at most 5 years ahead. Default: never.")
@click.option("--data", default=None, help=DATA_HELP)
@click.option("--store", default=None, help=STORE_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def key_create(config, app_id, scopes, name, expires_at, data, store, as_json) -> None:
    """Create an API key of an app; prints it (shown this once) with its prefix."""
    out = bootstrap.create_key(_settings(config, data=data, store=store), app_id, scopes, name,
                               _when(expires_at))
    _print_key(out, as_json)


def _print_key(out: dict, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(out))
        return
    for k, v in out.items():
        if isinstance(v, dict):  # the key a rotation replaced
            v = f"{v['prefix']}, expires at {v['expires_at']}"
        click.echo(f"{k}: {','.join(v) if isinstance(v, list) else v}")


@key.command("list")
@config_option
@click.option("--app", "app_id", required=True, help="App id.")
@click.option("--data", default=None, help=DATA_HELP)
@click.option("--store", default=None, help=STORE_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def key_list(config, app_id, data, store, as_json) -> None:
    """List an app's API keys: prefix, scopes, creation, expiry, last use (to
    about a minute), name; never the keys."""
    keys = bootstrap.list_keys(_settings(config, data=data, store=store), app_id)
    if as_json:
        click.echo(json.dumps({"app": app_id, "keys": keys}))
        return
    now = datetime.now(UTC)

    def expiry(at: str | None) -> str:
        if at is None:
            return "-"
        return at + (" (expired)" if datetime.fromisoformat(at) <= now else "")

    rows = [("PREFIX", "SCOPES", "CREATED", "EXPIRES", "LAST USED", "NAME")] + [
        (k["prefix"], ",".join(k["scopes"]), k["created_at"], expiry(k["expires_at"]),
         k["last_used_at"] or "never", k["name"] or "-") for k in keys]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for row in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + "  "
                   + row[5])


@key.command("rotate")
@click.argument("prefix")
@config_option
@click.option("--app", "app_id", required=True, help="App id.")
@click.option("--grace", default=None, type=click.IntRange(min=0),
              help="Seconds the old key still works, for the new one to be deployed. "
                   "Default 86400 (24 h), at most 30 days; 0 for a leaked key.")
@click.option("--data", default=None, help=DATA_HELP)
@click.option("--store", default=None, help=STORE_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def key_rotate(prefix, config, app_id, grace, data, store, as_json) -> None:
    """Replace an app's API key PREFIX: prints a new key (shown this once) with
    the same scopes and name, and the old one expires after --grace.

    Servers on the broker of these settings (a PostgreSQL store's own, or
    the configured one) read the old key's expiry again at once, any other
    within 5 s."""
    out = bootstrap.rotate_key(_settings(config, data=data, store=store), app_id, prefix, grace)
    _print_key(out, as_json)


@key.command("revoke")
@click.argument("prefix")
@config_option
@click.option("--app", "app_id", required=True, help="App id.")
@click.option("--data", default=None, help=DATA_HELP)
@click.option("--store", default=None, help=STORE_HELP)
def key_revoke(prefix, config, app_id, data, store) -> None:
    """Revoke an app's API key by its PREFIX (the 8 characters after tk_).

    Servers on the broker of these settings (a PostgreSQL store's own, or
    the configured one) drop the key at once, any other within 5 s (their
    cache of verified keys).
    The app's last admin key cannot be revoked: create another one first."""
    from tidings.service.keys import KEY_CACHE_TTL

    bootstrap.revoke_key(_settings(config, data=data, store=store), app_id, prefix)
    click.echo(f"revoked {prefix} (app {app_id}): it stops working on every server "
               f"within {KEY_CACHE_TTL:g} s")


@main.command()
@config_option
@click.option("--app", "app_id", required=True, help="App id.")
@click.option("--user", required=True, help="User id.")
@click.option("--ttl", default=3600, show_default=True, type=int, help="Lifetime in seconds.")
@click.option("--data", default=None, help=DATA_HELP)
@click.option("--store", default=None, help=STORE_HELP)
def token(config, app_id, user, ttl, data, store) -> None:
    """Mint a user token (printed alone on the last line)."""
    if not valid_user(user):
        raise click.BadParameter("1-128 printable characters", param_hint="--user")
    click.echo(bootstrap.mint_token(_settings(config, data=data, store=store), app_id, user, ttl))


@main.command("revoke-tokens")
@config_option
@click.option("--app", "app_id", required=True, help="App id.")
@click.option("--user", required=True, help="User id.")
@click.option("--jti", default=None,
              help="Revoke only the user's token with this jti (its id: the jti of the "
                   "minting answer), until it expires.")
@click.option("--token", "one_token", default=None,
              help="Revoke only this token of the user, until it expires ('-': read it "
                   "from stdin; on the command line it shows in the process list).")
@click.option("--data", default=None, help=DATA_HELP)
@click.option("--store", default=None, help=STORE_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def revoke_tokens(config, app_id, user, jti, one_token, data, store, as_json) -> None:
    """Revoke every token of a user issued until now (a ban, "log out
    everywhere"), or one token of the user (a stolen device).

    Without --jti or --token: tokens whose iat is before the printed second
    are refused, and the open streams they opened end; a token minted after
    it is taken. With --jti or --token: that one token is refused until it
    expires, and the streams it opened end; the user's other tokens go on.
    Servers on the broker of these settings (a PostgreSQL store's own, or
    the configured one) refuse them at once, any other within 5 s
    (docs/security.md#revoking-a-users-tokens)."""
    from tidings.core.auth import valid_jti
    from tidings.service.revocations import REFRESH_INTERVAL

    if not valid_user(user):
        raise click.BadParameter("1-128 printable characters", param_hint="--user")
    if jti is not None and one_token is not None:
        raise click.BadParameter("give --jti or --token, not both", param_hint="--jti")
    if jti is not None and not valid_jti(jti):
        raise click.BadParameter("1-128 printable characters", param_hint="--jti")
    if one_token == "-":
        one_token = sys.stdin.read().strip()
    settings = _settings(config, data=data, store=store)
    out = bootstrap.revoke_tokens(settings, app_id, user, jti=jti, token=one_token)
    if as_json:
        click.echo(json.dumps(out))
        return
    within = f"refused on every server within {REFRESH_INTERVAL:g} s"
    if "jti" in out:
        at = datetime.fromtimestamp(out["revoked_until"], UTC).isoformat()
        click.echo(f"revoked the token {out['jti']} of {user} (app {app_id}) until it "
                   f"expires, {at} ({out['revoked_until']}): {within}, and its open streams "
                   "end")
        return
    at = datetime.fromtimestamp(out["revoked_before"], UTC).isoformat()
    click.echo(f"revoked the tokens of {user} (app {app_id}) issued before {at} "
               f"({out['revoked_before']}): {within}, and their open streams end")


@main.group()
def secrets() -> None:
    """Seal the store's secrets under a key it does not hold (docs/security.md#sealed-secrets).

    Stop every node first (`seal`, `unseal` and `rekey` refuse while a node
    holds its lease on the store); start each again with the key."""


@secrets.command("keygen")
def secrets_keygen() -> None:
    """Print a new secret key (32 random bytes, base64url) for TIDINGS_SECRET_KEY."""
    from tidings.core.seal import new_key

    click.echo(new_key())


FORCE_HELP = ("Change the secrets even though a node holds a lease on the store: a node "
              "killed before its lease expired, or one you will restart with the new key "
              "at once (until then it fails to open secrets, or writes them under its key).")


def _store_options(fn):
    for option in (click.option("--force", is_flag=True, help=FORCE_HELP), config_option,
                   click.option("--data", default=None, help=DATA_HELP),
                   click.option("--store", default=None, help=STORE_HELP), key_file_option):
        fn = option(fn)
    return fn


def _resealed(verb: str, n: int, settings) -> None:
    click.echo(f"{verb} the secrets of {n} rows in {bootstrap.store_location(settings)}")


@secrets.command("seal")
@_store_options
def secrets_seal(config, data, store, secret_key_file, force) -> None:
    """Seal every secret of the store under the key, in one transaction.

    Refused while a node serves the store, unless --force."""
    settings = _settings(config, data=data, store=store, **_key_flags(secret_key_file))
    _resealed("sealed", bootstrap.seal_secrets(settings, force), settings)
    click.echo("start every node with this key (TIDINGS_SECRET_KEY or TIDINGS_SECRET_KEY_FILE)")


@secrets.command("unseal")
@_store_options
def secrets_unseal(config, data, store, secret_key_file, force) -> None:
    """Store every secret plain again, in one transaction (the key is checked first).

    Refused while a node serves the store, unless --force."""
    settings = _settings(config, data=data, store=store, **_key_flags(secret_key_file))
    _resealed("unsealed", bootstrap.unseal_secrets(settings, force), settings)
    click.echo("start every node without a key")


@secrets.command("rekey")
@_store_options
@click.option("--new-key-file", required=True, metavar="FILE",
              type=click.Path(exists=True, dir_okay=False),
              help="File holding the new key (`tidings secrets keygen`); the current key "
                   "again rewrites a store sealed in the first format (sealed1) in the "
                   "current one.")
def secrets_rekey(config, data, store, secret_key_file, force, new_key_file) -> None:
    """Seal every secret under a new key instead, in one transaction.

    Refused while a node serves the store, unless --force."""
    from pathlib import Path

    from tidings.core.seal import parse_key

    settings = _settings(config, data=data, store=store, **_key_flags(secret_key_file))
    new = parse_key(Path(new_key_file).read_text(), f"the new key file {new_key_file}")
    _resealed("resealed", bootstrap.rekey_secrets(settings, new, force), settings)
    click.echo("start every node with the new key")


@main.command("config")
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of TOML.")
def show_config(config, as_json) -> None:
    """Print the effective settings, secrets masked (docs/operations.md#configuration)."""
    settings, found = config_file.load(config)
    doc = config_file.effective(settings)
    if as_json:
        click.echo(json.dumps(doc, indent=2))
        return
    source = str(found) if found else "no file"
    click.echo(f"# effective settings: defaults < {source} < TIDINGS_* environment < flags")
    click.echo(config_file.to_toml(doc), nl=False)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def vapid(as_json) -> None:
    """Generate a VAPID key pair for Web Push (docs/channels.md#web-push).

    Prints the settings that turn Web Push on; the private key is a secret."""
    from tidings.channels.webpush import generate_vapid_keys

    keys = generate_vapid_keys()
    if as_json:
        click.echo(json.dumps({"private_key": keys.private_key, "public_key": keys.public_key}))
        return
    click.echo("# Web Push settings; the subject is a contact address for push services")
    click.echo(f"TIDINGS_PUSH_VAPID_PRIVATE_KEY={keys.private_key}")
    click.echo("TIDINGS_PUSH_VAPID_SUBJECT=mailto:ops@example.com")
    click.echo("# the public key browsers subscribe with (GET /v1/push/vapid-public-key):")
    click.echo(f"# {keys.public_key}")


@main.command()
@click.option("--url", envvar="TIDINGS_URL", default="http://127.0.0.1:8080", show_default=True,
              help="The server ($TIDINGS_URL).")
@click.option("--key", envvar="TIDINGS_API_KEY", required=True, help="API key ($TIDINGS_API_KEY).")
@click.option("--user", "users", multiple=True, help="Recipient (repeatable).")
@click.option("--topic", default=None, help="Recipient topic.")
@click.option("--all", "to_all", is_flag=True, help="Broadcast to every user of the app.")
@click.option("--title", default="")
@click.option("--body", default="")
@click.option("--format", "body_format", default="text", show_default=True,
              type=click.Choice(["text", "markdown"]), help="How the body is shown.")
@click.option("--category", default="default", show_default=True)
@click.option("--priority", default="normal", show_default=True,
              type=click.Choice(["low", "normal", "high", "urgent"]))
@click.option("--data-json", default=None, help="The data object, as JSON.")
@click.option("--idempotency-key", default=None)
def send(url, key, users, topic, to_all, title, body, body_format, category, priority,
         data_json, idempotency_key) -> None:
    """Publish a notification."""
    import httpx

    from tidings.client import Client

    if sum((bool(users), topic is not None, to_all)) != 1:
        raise click.UsageError("give exactly one of --user, --topic or --all")
    to = {"users": list(users)} if users else {"topic": topic} if topic else {"all": True}
    fields = {"title": title, "body": body, "category": category, "priority": priority}
    if body_format != "text":
        fields["format"] = body_format
    if data_json:
        try:
            fields["data"] = json.loads(data_json)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--data-json") from None
    with Client(url, api_key=key) as client:
        try:
            result = client.publish(to=to, idempotency_key=idempotency_key, **fields)
        except httpx.TransportError as exc:
            raise click.ClickException(f"cannot reach {url}: {exc}") from None
    click.echo(json.dumps(result))


@main.command()
@click.option("--url", envvar="TIDINGS_URL", default="http://127.0.0.1:8080", show_default=True,
              help="The server ($TIDINGS_URL).")
@click.option("--token", envvar="TIDINGS_TOKEN", required=True, help="User token ($TIDINGS_TOKEN).")
@click.option("--cursor", default=None, help="Resume from this cursor.")
@click.option("--count", default=0, type=int, help="Stop after this many notifications.")
@click.option("--retries", default=10, show_default=True, type=click.IntRange(0),
              help="Failed connection attempts in a row before giving up.")
@click.option("--forever", is_flag=True, help="Never give up reconnecting.")
def listen(url, token, cursor, count, retries, forever) -> None:
    """Print a user's live stream, one JSON event per line (status on stderr)."""
    import asyncio

    from tidings.client import Subscriber

    limit = None if forever else retries

    def status(text: str) -> None:
        click.echo(f"tidings listen: {text}", err=True)

    async def run():
        seen = 0
        sub = Subscriber(url, token=token, cursor=cursor, max_retries=limit)

        def on_retry(reason: str, delay: float) -> None:
            if sub.failures == 0:  # a drop after the stream was live
                status(f"{reason}; reconnecting in {delay:.1f} s")
            else:
                of = "" if limit is None else f" of {limit}"
                status(f"cannot connect ({reason}); retry {sub.failures}{of} in {delay:.1f} s")

        sub.on_retry = on_retry
        status(f"connecting to {url}")
        async with sub:
            async for event in sub:
                if event.get("type") == "hello":
                    status(f"connected (cursor {event.get('cursor')})")
                click.echo(json.dumps(event))
                sys.stdout.flush()
                if event.get("type") == "notification":
                    seen += 1
                    if count and seen >= count:
                        return

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass


@main.group()
def node() -> None:
    """Drain one node without stopping it, or shed its streams after a scale-out.

    Each command acts on the node (the worker process) at --url: give the
    node's own address, not the load balancer's. An admin key of the
    operator app is needed. With `serve --workers N`, a request reaches one
    worker; SIGUSR1 / SIGUSR2 to the serve process drain / undrain every
    worker (docs/deploy.md#draining-a-node-without-stopping-it)."""


def _node_options(command):
    command = click.option("--json", "as_json", is_flag=True, help="Print JSON.")(command)
    command = click.option("--key", envvar="TIDINGS_API_KEY", required=True,
                           help="An admin key of the operator app ($TIDINGS_API_KEY).")(command)
    return click.option("--url", envvar="TIDINGS_URL", default="http://127.0.0.1:8080",
                        show_default=True,
                        help="The node's own address, not the balancer's ($TIDINGS_URL)."
                        )(command)


def _on_node(url: str, key: str, as_json: bool, call) -> None:
    """Run ``call(client)`` against the node at ``url`` and print its state."""
    import httpx

    from tidings.client import Client

    with Client(url, api_key=key, max_retries=0) as client:
        try:
            state = call(client)
        except httpx.TransportError as exc:
            raise click.ClickException(f"cannot reach {url}: {exc}") from None
    click.echo(json.dumps(state) if as_json else node_summary(state))


def node_summary(state: dict) -> str:
    """One node's state in a few lines (``GET /v1/node``)."""
    mode = ("shutting down" if state["shutting_down"] else
            "draining (not ready, new streams refused)" if state["draining"] else "taking streams")
    lines = [f"node {state['node']} (pid {state['pid']}): {mode}",
             f"open streams: {state['streams']}"]
    plan = state.get("plan")
    if plan is not None:
        at = datetime.fromtimestamp(plan["ends_by"], UTC).isoformat(timespec="seconds")
        how = "done" if plan["done"] else f"running, ends by {at}"
        lines.append(f"{plan['kind']}: ended {plan['ended']} of {plan['planned']} streams "
                     f"over {plan['over']:g} s ({how})")
    return "\n".join(lines)


_OVER = click.FloatRange(0, SPREAD_MAX)


@node.command("status")
@_node_options
def node_status(url, key, as_json) -> None:
    """Show the node: draining or not, open streams, the drain or shed running."""
    _on_node(url, key, as_json, lambda c: c.node_state())


@node.command("drain")
@_node_options
@click.option("--over", default=SPREAD_DEFAULT, show_default=True, type=_OVER,
              help="Seconds to spread the streams' ends over (0: all at once).")
def node_drain(url, key, as_json, over) -> None:
    """Drain the node and keep it running: readiness turns red, new streams
    are refused, open ones end with 4001 (reconnect) spread over --over
    seconds; HTTP publishes and reads go on. `tidings node undrain` undoes it."""
    _on_node(url, key, as_json, lambda c: c.drain_node(over))


@node.command("undrain")
@_node_options
def node_undrain(url, key, as_json) -> None:
    """Make a drained node ready again: it takes streams."""
    _on_node(url, key, as_json, lambda c: c.undrain_node())


@node.command("shed")
@_node_options
@click.option("--fraction", required=True, type=click.FloatRange(0, 1),
              help="Fraction of the open streams to end (0-1), picked at random.")
@click.option("--over", default=SPREAD_DEFAULT, show_default=True, type=_OVER,
              help="Seconds to spread the streams' ends over (0: all at once).")
def node_shed(url, key, as_json, fraction, over) -> None:
    """End a fraction of the node's open streams with 4001, readiness
    unchanged: the devices reconnect through the balancer and spread over
    every node (after a scale-out)."""
    _on_node(url, key, as_json, lambda c: c.shed_streams(fraction, over))


if __name__ == "__main__":  # pragma: no cover
    main()
