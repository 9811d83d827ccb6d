"""Worker log lines carry the team / pool / policy / server they are about.

The SDK's `activity.logger` and `workflow.logger` already append the workflow id, run id and type (and the
activity's) to each message and put them in the record's `temporal_activity` / `temporal_workflow` extra.
`PoolIdsFilter` reads the workflow id from there and adds poolctl's own fields to the record: `team`,
`pool`, `policy`, `server` (each present only when the id names it) and `poolctl_ids`
(`" team=t pool=web policy=cpu"`, empty when none), which `LOG_FORMAT` prints after the logger name, so
a JSON or plain formatter can use either."""

from __future__ import annotations

import logging

from poolctl.domain.names import ids_from_workflow_id

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s%(poolctl_ids)s: %(message)s"
SDK_LOGGERS = ("temporalio.activity", "temporalio.workflow")


class PoolIdsFilter(logging.Filter):
    """Adds `team` / `pool` / `policy` / `server` and `poolctl_ids` to records of the SDK's activity and
    workflow loggers (never drops a record)."""

    def filter(self, record: logging.LogRecord) -> bool:
        details = getattr(record, "temporal_activity", None) or getattr(record, "temporal_workflow", None)
        ids = ids_from_workflow_id(str(details.get("workflow_id", ""))) if isinstance(details, dict) else {}
        for key, value in ids.items():
            setattr(record, key, value)
        record.poolctl_ids = "".join(f" {k}={v}" for k, v in ids.items())
        return True


class IdsFormatter(logging.Formatter):
    """`LOG_FORMAT` for every record: records that did not pass `PoolIdsFilter` print no ids."""

    def __init__(self, fmt: str = LOG_FORMAT) -> None:
        super().__init__(fmt)

    def format(self, record: logging.LogRecord) -> str:
        if not hasattr(record, "poolctl_ids"):
            record.poolctl_ids = ""
        return super().format(record)


_FILTER = PoolIdsFilter()


def install_log_ids() -> None:
    """Attach the filter to the SDK's activity and workflow loggers (idempotent)."""
    for name in SDK_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)


def configure_worker_logging(level: int = logging.INFO) -> None:
    """The worker process's logging: LOG_FORMAT on stderr, with the ids filter installed."""
    handler = logging.StreamHandler()
    handler.setFormatter(IdsFormatter())
    logging.basicConfig(level=level, handlers=[handler])
    install_log_ids()
