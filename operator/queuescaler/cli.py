"""The `queuescaler` command line: `queuescaler run` starts the operator."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import socket

import click
import kopf
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from queuescaler import __version__
from queuescaler.core.plan import PlanSettings
from queuescaler.core.redact import RedactingFilter
from queuescaler.engine import Engine, EngineSettings
from queuescaler.fleet import Fleet, ReplicaCache
from queuescaler.kube.client import KubeClient
from queuescaler.leader import Elector
from queuescaler.metrics import Metrics
from queuescaler.tune import COMMANDS as TUNE_COMMANDS

MALLOC_ARENAS = 2
M_ARENA_MAX = -8
"""glibc's mallopt() parameter number for the arena cap (malloc.h)."""


def cap_malloc_arenas() -> None:
    """Let glibc keep at most `MALLOC_ARENAS` heaps instead of one per busy thread.

    Kubernetes calls run in a thread pool, and each thread would otherwise get an arena
    of its own that keeps its peak forever: at 10,000 QueueScalers those arenas held about
    170 MB of an operator's RSS. An explicit MALLOC_ARENA_MAX wins; other C libraries
    (musl) are left alone.
    """
    if "MALLOC_ARENA_MAX" in os.environ:
        return
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt(M_ARENA_MAX, MALLOC_ARENAS)
    except (OSError, AttributeError):
        pass  # not glibc: nothing to cap


def load_kube_credentials() -> None:
    """A kubeconfig (KUBECONFIG, else ~/.kube/config) when there is one, else the pod's
    ServiceAccount. Chosen here rather than by `kubernetes.config.load_config`, which says
    so with a plain-text print to stdout inside every pod and breaks `--log-format json`."""
    paths = os.environ.get("KUBECONFIG") or "~/.kube/config"  # empty counts as unset
    if any(os.path.exists(os.path.expanduser(p)) for p in paths.split(os.pathsep) if p):
        # the paths decided on, not the library's own copy of KUBECONFIG taken at import
        k8s_config.load_kube_config(config_file=paths)
    else:
        k8s_config.load_incluster_config()


@click.group()
@click.version_option(__version__, prog_name="queuescaler")
def main() -> None:
    """queuescaler keeps pools of queue workers the right size."""


for _command in TUNE_COMMANDS:  # `queuescaler simulate` and `queuescaler recommend`
    main.add_command(_command)


@main.command()
@click.option("-n", "--namespace", "namespaces", multiple=True,
              help="Watch this namespace (repeat for several; globs allowed). Default: all.")
@click.option("--metrics-host", default="0.0.0.0", show_default=True,
              help="Address of the /metrics, /healthz and /readyz endpoints.")
@click.option("--metrics-port", default=8080, show_default=True, type=int)
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text",
              show_default=True)
@click.option("--verbose", is_flag=True, help="Debug logging.")
@click.option("--tick-seconds", default=0.5, show_default=True, type=float,
              help="How often the loop wakes (each QueueScaler keeps its own polling interval).")
@click.option("--fast-path/--no-fast-path", default=True, show_default=True,
              help="Peek over AMQP every tick at pools that may grow, to act on a burst at once.")
@click.option("--status-refresh-seconds", default=30.0, show_default=True, type=float,
              help="Backlog and rates alone are rewritten to status at most this often.")
@click.option("--secret-refresh-seconds", default=60.0, show_default=True, type=float,
              help="Secrets are read again after this long (they are never watched).")
@click.option("--leader-election/--no-leader-election", default=False, show_default=True,
              help="Run several replicas: only the holder of a Lease acts, the others stand by.")
@click.option("--leader-election-namespace", envvar="POD_NAMESPACE", default="default",
              show_default=True, help="Namespace of the Lease (the operator's own).")
@click.option("--leader-election-name", default="queuescaler", show_default=True,
              help="Name of the Lease.")
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
    leader_election: bool,
    leader_election_namespace: str,
    leader_election_name: str,
) -> None:
    """Run the operator until interrupted."""
    cap_malloc_arenas()  # before any thread allocates
    from queuescaler import handlers  # registers the kopf handlers

    kopf.configure(
        verbose=verbose,
        log_format=kopf.LogFormat.JSON if log_format == "json" else kopf.LogFormat.FULL,
    )
    if not verbose:
        # kopf reports every handled watch event at INFO: thousands a minute at scale.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    # pika logs each failed connection itself, at ERROR with a traceback, every tick; the
    # AMQP source turns the same failure into a condition, an Event and a metric.
    logging.getLogger("pika").setLevel(logging.CRITICAL)
    redacting = RedactingFilter()
    for handler in logging.getLogger().handlers:
        handler.addFilter(redacting)
    load_kube_credentials()
    settings = EngineSettings(
        tick_seconds=tick_seconds,
        fast_path=fast_path,
        plan=PlanSettings(status_refresh_seconds=status_refresh_seconds),
        secret_refresh_seconds=secret_refresh_seconds,
    )
    configuration = k8s.Configuration.get_default_copy()
    configuration.connection_pool_maxsize = settings.concurrency + 4
    configuration.retries = 1  # with (5 s, 15 s) per try, a call gives up within 40 s
    kube = KubeClient(k8s.ApiClient(configuration))
    metrics = Metrics()
    elector = None
    if leader_election:
        identity = os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"
        elector = Elector(kube, leader_election_namespace, leader_election_name, identity,
                          on_change=lambda leading: metrics.leader.set(leading))
    engine = Engine(
        kube=kube,
        fleet=Fleet(),
        replicas=ReplicaCache(),
        metrics=metrics,
        settings=settings,
        leading=elector.is_leader if elector else lambda: True,
    )
    context = handlers.OperatorContext(engine, metrics_host, metrics_port, elector)
    # Every replica watches (a standby stays warm); the Lease, not kopf peering, picks who acts.
    kopf.run(
        clusterwide=not namespaces,
        namespaces=namespaces,
        standalone=True,
        memo=kopf.Memo(context=context),
    )
