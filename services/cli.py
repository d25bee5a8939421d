"""The ``medledger`` command: run services, manage topics, check health.

Service-specific command groups (ledger keys, audit, identity bootstrap) are
added as sub-commands from their own modules.
"""

from __future__ import annotations

import asyncio
import importlib
import sys
import time
from typing import Annotated, Any

import grpc
import typer
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rich.console import Console

from medledger.audit import cli as audit_cli
from medledger.identity import cli as identity_cli
from medledger.ledger import cli as ledger_cli
from medledger.runtime import cli as events_cli
from medledger.runtime.errors import SettingsError
from medledger.runtime.settings import DEFAULT_PORTS, PROCESS_PORTS, Topics, env_str
from medledger.runtime.transport import GrpcTls

app = typer.Typer(help="MedLedger: patient-controlled records with a verifiable ledger.", no_args_is_help=True)
topics_app = typer.Typer(help="Kafka topics.", no_args_is_help=True)
app.add_typer(topics_app, name="topics")
app.add_typer(ledger_cli.app, name="ledger")
app.add_typer(identity_cli.app, name="identity")
app.add_typer(audit_cli.app, name="audit")
app.add_typer(events_cli.app, name="events")
console = Console(stderr=True)

APPS = {
    "identity": "medledger.identity.app:IdentityApp",
    "consent": "medledger.consent.app:ConsentApp",
    "records": "medledger.records.app:RecordsApp",
    "ledger": "medledger.ledger.app:LedgerApp",
    "monitor": "medledger.monitor.process:MonitorProcess",
}


def _load_app(name: str) -> Any:
    module, _, attr = APPS[name].partition(":")
    return getattr(importlib.import_module(module), attr)


@app.command()
def serve(name: Annotated[str, typer.Argument(help="identity | consent | records | ledger | monitor")]) -> None:
    """Run one service until SIGTERM."""
    from medledger.runtime.host import ServiceHost
    from medledger.runtime.logs import configure_logging
    from medledger.runtime.settings import CommonSettings

    if name not in APPS:
        console.print(f"unknown service {name!r}; choose one of {', '.join(APPS)}")
        raise typer.Exit(2)
    try:
        factory = _load_app(name)
        if getattr(factory, "standalone", False):  # a process of its own (the monitor: no database, no API)
            process = factory.from_env()
            log_level, main = process.log_level, process.run()
        else:
            settings = CommonSettings.from_env(name, DEFAULT_PORTS[name])
            tls = GrpcTls.from_env()
            credentials = tls.server_credentials(settings.grpc_host)
            service = factory.from_env() if hasattr(factory, "from_env") else factory()
            log_level, main = settings.log_level, ServiceHost(service, settings, credentials).run()
    except SettingsError as exc:
        console.print(f"[red]{name}: {exc}[/red]")
        raise typer.Exit(2) from None
    configure_logging(name, log_level)
    _run_loop(main)


def _run_loop(main: Any) -> None:
    """uvloop when installed (faster asyncpg and gRPC I/O), asyncio otherwise."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


@topics_app.command("ensure")
def topics_ensure(
    bootstrap: Annotated[str, typer.Option(envvar="MEDLEDGER_KAFKA_BOOTSTRAP")] = "127.0.0.1:9092",
    prefix: Annotated[str, typer.Option(envvar="MEDLEDGER_TOPIC_PREFIX")] = "",
) -> None:
    """Create MedLedger's topics if missing (event topics keep data forever)."""
    from medledger.runtime.kafka import ensure_topics, topic_specs

    specs = topic_specs(Topics(prefix))
    created = asyncio.run(ensure_topics(bootstrap, specs))
    for spec in specs:
        state = "created" if spec.name in created else "exists"
        print(f"topic {spec.name}: {state} ({spec.partitions} partitions)")


def _health(address: str, timeout: float) -> str:
    with GrpcTls.from_env().channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        except grpc.RpcError as exc:
            return exc.code().name
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


@app.command()
def health(
    names: Annotated[list[str] | None, typer.Argument(help="services to check (default: all)")] = None,
    wait: Annotated[float, typer.Option(help="seconds to wait until all are SERVING")] = 0.0,
) -> None:
    """Ask each service's grpc.health.v1.Health; exit 1 unless all are SERVING."""
    chosen = names or list(APPS)
    deadline = time.monotonic() + wait
    while True:
        states = {}
        for name in chosen:
            host = env_str(f"MEDLEDGER_{name.upper()}_HOST", "127.0.0.1")
            port = env_str(f"MEDLEDGER_{name.upper()}_PORT", str(PROCESS_PORTS[name]))
            states[name] = (f"{host}:{port}", _health(f"{host}:{port}", 1.0))
        if all(s == "SERVING" for _, s in states.values()) or time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    for name, (address, state) in states.items():
        print(f"{name:9} {address:18} {state}")
    if not all(s == "SERVING" for _, s in states.values()):
        sys.exit(1)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
