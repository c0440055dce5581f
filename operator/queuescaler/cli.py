"""The `queuescaler` command line: `queuescaler run` starts the operator."""

from __future__ import annotations

import logging

import click
import kopf
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from queuescaler import __version__
from queuescaler.engine import Engine, EngineSettings
from queuescaler.kube import KubeClient
from queuescaler.metrics import Metrics
from queuescaler.rabbitmq import RabbitMQSource
from queuescaler.redact import RedactingFilter
from queuescaler.registry import Registry, ReplicaCache


@click.group()
@click.version_option(__version__, prog_name="queuescaler")
def main() -> None:
    """queuescaler keeps pools of queue workers the right size."""


@main.command()
@click.option("-n", "--namespace", "namespaces", multiple=True,
              help="Watch this namespace (repeat for several; globs allowed). Default: all.")
@click.option("--metrics-host", default="0.0.0.0", show_default=True,
              help="Address of the /metrics, /healthz and /readyz endpoints.")
@click.option("--metrics-port", default=8080, show_default=True, type=int)
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text",
              show_default=True)
@click.option("--verbose", is_flag=True, help="Debug logging.")
@click.option("--tick-seconds", default=1.0, show_default=True, type=float,
              help="How often the loop wakes (each QueueScaler keeps its own polling interval).")
@click.option("--fast-path/--no-fast-path", default=True, show_default=True,
              help="Peek at pools at zero over AMQP every tick, to wake them without delay.")
@click.option("--status-refresh-seconds", default=30.0, show_default=True, type=float,
              help="Backlog and rates alone are rewritten to status at most this often.")
@click.option("--secret-refresh-seconds", default=300.0, show_default=True, type=float,
              help="Secrets are read again after this long (they are never watched).")
@click.option("--peering", "peering_name", default=None,
              help="Run with kopf peering under this name (high availability). "
                   "Default: standalone.")
@click.option("--priority", default=0, show_default=True, type=int,
              help="Peering priority: the highest-priority replica acts.")
def run(
    namespaces: tuple[str, ...],
    metrics_host: str,
    metrics_port: int,
    log_format: str,
    verbose: bool,
    tick_seconds: float,
    fast_path: bool,
    status_refresh_seconds: float,
    secret_refresh_seconds: float,
    peering_name: str | None,
    priority: int,
) -> None:
    """Run the operator until interrupted."""
    from queuescaler import handlers  # registers the kopf handlers

    kopf.configure(
        verbose=verbose,
        log_format=kopf.LogFormat.JSON if log_format == "json" else kopf.LogFormat.FULL,
    )
    if not verbose:
        # kopf reports every handled watch event at INFO: thousands a minute at scale.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    redacting = RedactingFilter()
    for handler in logging.getLogger().handlers:
        handler.addFilter(redacting)
    k8s_config.load_config()
    settings = EngineSettings(
        tick_seconds=tick_seconds,
        fast_path=fast_path,
        status_refresh_seconds=status_refresh_seconds,
        secret_refresh_seconds=secret_refresh_seconds,
    )
    configuration = k8s.Configuration.get_default_copy()
    configuration.connection_pool_maxsize = settings.concurrency + 4
    engine = Engine(
        kube=KubeClient(k8s.ApiClient(configuration)),
        registry=Registry(),
        replicas=ReplicaCache(),
        metrics=Metrics(),
        make_source=RabbitMQSource,
        settings=settings,
    )
    context = handlers.OperatorContext(engine, metrics_host, metrics_port)
    kopf.run(
        clusterwide=not namespaces,
        namespaces=namespaces,
        standalone=peering_name is None,
        peering_name=peering_name,
        priority=priority,
        memo=kopf.Memo(context=context),
    )
