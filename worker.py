"""The worker process: registers every workflow and activity on the task queue; stops gracefully on SIGTERM/Ctrl-C."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Sequence
from datetime import timedelta

from temporalio.client import Client
from temporalio.worker import Interceptor, Worker

from poolctl.activities.balancer_activities import BalancerActivities
from poolctl.activities.drift import DriftActivities
from poolctl.activities.health_store import HealthStoreActivities
from poolctl.activities.heartbeats import SDK_THROTTLE_S
from poolctl.activities.housekeeping import HousekeepingActivities
from poolctl.activities.inventory import InventoryActivities
from poolctl.activities.policy_loop import PolicyLoopActivities
from poolctl.activities.policy_metrics import PolicyMetricActivities
from poolctl.activities.provisioning import ProvisioningActivities
from poolctl.activities.watch import watch_target_activity
from poolctl.activities.webhooks import WebhookActivities
from poolctl.gc_pacing import GcPacer
from poolctl.log_ids import configure_worker_logging, install_log_ids
from poolctl.settings import Settings, get_settings
from poolctl.store.db import migrate
from poolctl.team_auth import load_team_keys
from poolctl.team_interceptor import TeamAuthInterceptor
from poolctl.telemetry import WorkerMetrics
from poolctl.temporal_client import connect
from poolctl.workflows.balancer_stats import BalancerStatsWorkflow
from poolctl.workflows.health_check import HealthCheckWorkflow
from poolctl.workflows.housekeeping import HousekeepingWorkflow
from poolctl.workflows.notify import NotificationWorkflow
from poolctl.workflows.policy import PolicyWorkflow
from poolctl.workflows.pool import PoolWorkflow
from poolctl.workflows.scale_pool import ScalePoolWorkflow

log = logging.getLogger("poolctl.worker")

WORKFLOWS: list[type] = [
    PoolWorkflow,
    ScalePoolWorkflow,
    PolicyWorkflow,
    HealthCheckWorkflow,
    BalancerStatsWorkflow,
    HousekeepingWorkflow,
    NotificationWorkflow,
]


def activities_for(settings: Settings) -> list[object]:
    provisioning = ProvisioningActivities(settings)
    inventory = InventoryActivities(settings)
    balancers = BalancerActivities(settings)
    policy_metrics = PolicyMetricActivities(settings)
    health_store = HealthStoreActivities(settings)
    housekeeping = HousekeepingActivities(settings)
    webhooks = WebhookActivities(settings)
    drift = DriftActivities(settings)
    return [
        watch_target_activity,
        health_store.record_health,
        provisioning.provision_server,
        provisioning.terminate_server,
        drift.detect_pool_drift,
        drift.adopt_server,
        inventory.record_event_started,
        inventory.record_event_finished,
        inventory.update_pool_status,
        inventory.load_pool_servers,
        inventory.store_pool_spec,
        inventory.forget_pool,
        balancers.sync_pool_balancers,
        balancers.drain_server,
        balancers.rollup_balancer_stats,
        policy_metrics.read_policy_metric,
        PolicyLoopActivities(policy_metrics).policy_loop,
        policy_metrics.record_policy_decision,
        housekeeping.clean_up_store,
        webhooks.deliver_webhook,
    ]


def build_worker(
    client: Client, settings: Settings, *, interceptors: Sequence[Interceptor] | None = None
) -> Worker:
    """The worker: every workflow and activity, and the team check on every message to a team's workflow
    (`poolctl.team_interceptor`; raises TeamAuthError when the settings hold no team auth key). `client`
    must decode headers (`poolctl.temporal_client.client_options`). `interceptors` replaces the team check:
    only for the Java time-skipping test server, which drops the headers of workflow-to-workflow signals."""
    install_log_ids()  # activity and workflow log lines carry team / pool / policy (poolctl.log_ids)
    return Worker(
        client,
        task_queue=settings.task_queue,
        workflows=WORKFLOWS,
        activities=activities_for(settings),
        interceptors=(
            [TeamAuthInterceptor(load_team_keys(settings), settings.team_auth_legacy_before)]
            if interceptors is None
            else interceptors
        ),
        max_cached_workflows=settings.worker_max_cached_workflows,
        max_concurrent_activities=settings.worker_max_concurrent_activities,
        graceful_shutdown_timeout=timedelta(seconds=10),
        # each long-lived loop paces its own heartbeats (activities/heartbeats.py): the policy loop must
        # send one just before each evaluation to hear of a cancellation in time
        max_heartbeat_throttle_interval=timedelta(seconds=SDK_THROTTLE_S),
    )


async def run_worker(settings: Settings) -> None:
    settings.ensure_state_dir()
    migrate(settings.resolved_database_url)
    metrics = WorkerMetrics(settings.worker_metrics_port)
    client = await connect(settings, runtime=metrics.runtime)
    worker = build_worker(client, settings)
    await metrics.start()
    if metrics.port:
        log.info("worker metrics (Prometheus text) at %s", metrics.url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # after start-up, so the modules and classes it loaded are frozen once and never scanned again
    gc_pacer = GcPacer(settings.worker_gc_full_every_s) if settings.worker_gc_full_every_s > 0 else None
    if gc_pacer is not None:
        gc_pacer.install()
    log.info("worker polling task queue %r on %s", settings.task_queue, settings.temporal_address)
    try:
        async with worker:
            await stop.wait()
            log.info("stopping: finishing in-flight tasks")
    finally:
        if gc_pacer is not None:
            gc_pacer.uninstall()
    from poolctl.activities.probes import close_shared_prober

    await close_shared_prober()
    await metrics.stop()
    log.info("worker stopped")


def main() -> None:
    configure_worker_logging()
    logging.getLogger("httpx").setLevel(logging.WARNING)
    asyncio.run(run_worker(get_settings()))


if __name__ == "__main__":
    main()
