"""Team enforcement on Temporal: a client interceptor that puts a proof in the `poolctl-team-auth` header of
every start, signal, update and query, and the worker interceptor that checks it inside each workflow
before the workflow sees the message (`poolctl.team_auth` says what a proof is).

A team's workflow (id `pool/TEAM/...`, `policy/...`, `scale/...`, `health/...`, `notify/...`) accepts a
message only with a proof made with TEAM's token: an update without one is rejected by its validator (no history event), a
query fails, a signal is dropped (and logged), and a start fails the new run before it does anything.
Messages a workflow sends (children it starts and signals, continue-as-new, signals to its pool) carry a
proof made with the worker's key, for the team the target's id names. See docs/security.md#teams."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from temporalio import workflow
from temporalio.api.common.v1 import Payload
from temporalio.client import (
    Interceptor as ClientInterceptor,
)
from temporalio.client import (
    OutboundInterceptor as ClientOutbound,
)
from temporalio.client import (
    QueryWorkflowInput,
    SignalWorkflowInput,
    StartWorkflowInput,
    StartWorkflowUpdateInput,
    StartWorkflowUpdateWithStartInput,
    WorkflowHandle,
    WorkflowUpdateHandle,
)
from temporalio.exceptions import ApplicationError
from temporalio.worker import (
    ContinueAsNewInput,
    ExecuteWorkflowInput,
    HandleQueryInput,
    HandleSignalInput,
    HandleUpdateInput,
    Interceptor,
    SignalChildWorkflowInput,
    SignalExternalWorkflowInput,
    StartChildWorkflowInput,
    WorkflowInboundInterceptor,
    WorkflowInterceptorClassInput,
    WorkflowOutboundInterceptor,
)

from poolctl.domain.names import team_of_workflow_id
from poolctl.team_auth import HEADER, KeyCredentials, TeamCredentials, TeamKeys, read_header

REFUSED = "TeamAuthRefused"
"""`ApplicationError.type` of a refused update, query or start."""
BUILTIN_QUERIES = frozenset({"__stack_trace", "__enhanced_stack_trace", "__temporal_workflow_metadata"})
"""The SDK's own queries (the web UI's stack trace): they show code, never a pool's data, so they need no proof."""


def _with(headers: Mapping[str, Payload], header: Payload | None) -> Mapping[str, Payload]:
    return headers if header is None else {**headers, HEADER: header}


def _update_name(update: str, update_id: str) -> str:
    """Updates are signed with their id: a proof copied from a history can only repeat that update, which
    Temporal answers with the earlier outcome."""
    return f"{update}#{update_id}"


# ---- client side ------------------------------------------------------------------------------------


class TeamClientInterceptor(ClientInterceptor):
    """Signs every start, signal, update and query a client sends with `credentials` (None: sends none)."""

    def __init__(self, credentials: TeamCredentials | None) -> None:
        self.credentials = credentials

    def intercept_client(self, next: ClientOutbound) -> ClientOutbound:
        return _ClientOutbound(next, self.credentials) if self.credentials is not None else next


class _ClientOutbound(ClientOutbound):
    def __init__(self, next: ClientOutbound, credentials: TeamCredentials) -> None:
        super().__init__(next)
        self._cred = credentials

    async def start_workflow(self, input: StartWorkflowInput) -> WorkflowHandle[Any, Any]:
        input.headers = _with(input.headers, self._cred.header(input.id, "start", "", input.args))
        return await super().start_workflow(input)

    async def signal_workflow(self, input: SignalWorkflowInput) -> None:
        input.headers = _with(input.headers, self._cred.header(input.id, "signal", input.signal, input.args))
        await super().signal_workflow(input)

    async def query_workflow(self, input: QueryWorkflowInput) -> Any:
        input.headers = _with(input.headers, self._cred.header(input.id, "query", input.query, input.args))
        return await super().query_workflow(input)

    async def start_workflow_update(self, input: StartWorkflowUpdateInput) -> WorkflowUpdateHandle[Any]:
        input.update_id = input.update_id or str(uuid.uuid4())
        name = _update_name(input.update, input.update_id)
        input.headers = _with(input.headers, self._cred.header(input.id, "update", name, input.args))
        return await super().start_workflow_update(input)

    async def start_update_with_start_workflow(
        self, input: StartWorkflowUpdateWithStartInput
    ) -> WorkflowUpdateHandle[Any]:
        start, update = input.start_workflow_input, input.update_workflow_input
        start.headers = _with(start.headers, self._cred.header(start.id, "start", "", start.args))
        update.update_id = update.update_id or str(uuid.uuid4())
        name = _update_name(update.update, update.update_id)
        update.headers = _with(update.headers, self._cred.header(start.id, "update", name, update.args))
        return await super().start_update_with_start_workflow(input)


# ---- worker side ------------------------------------------------------------------------------------


class TeamAuthInterceptor(Interceptor):
    """The worker's check. `keys` (the team auth key and earlier ones) verify proofs and sign the
    messages workflows send. Checks are deterministic (an HMAC over the message and its header, both in
    history), so a replay decides as the original run did, as long as the keys that signed are kept
    (`POOLCTL_TEAM_AUTH_KEYS_OLD`). `legacy_before` (UTC): a message without any header that a workflow
    took before that time (by workflow time, also deterministic) is accepted, so that workflows started
    before the upgrade to team checks still replay."""

    def __init__(self, keys: TeamKeys, legacy_before: datetime | None = None) -> None:
        self.keys = keys
        self.legacy_before = legacy_before

    def workflow_interceptor_class(
        self, input: WorkflowInterceptorClassInput
    ) -> type[WorkflowInboundInterceptor]:
        keys, legacy_before = self.keys, self.legacy_before

        class _Bound(_WorkflowInbound):
            _keys = keys
            _legacy_before = legacy_before

        return _Bound


class _WorkflowInbound(WorkflowInboundInterceptor):
    _keys: TeamKeys
    _legacy_before: datetime | None

    def init(self, outbound: WorkflowOutboundInterceptor) -> None:
        super().init(_WorkflowOutbound(outbound, KeyCredentials(self._keys)))

    def _refusal(
        self, kind: str, name: str, args: Sequence[Any], headers: Mapping[str, Payload]
    ) -> str | None:
        """Why this message is refused, or None when its proof names the workflow's team and is genuine."""
        wid = workflow.info().workflow_id
        team = team_of_workflow_id(wid)
        if team is None:
            return f"workflow {wid} belongs to no team and takes no {kind}s"
        header = read_header(headers.get(HEADER))
        if header is None and self._legacy_before is not None and workflow.now() < self._legacy_before:
            return None  # sent before the worker checked teams (`team_auth_legacy_before`): as it was then
        if header is None:
            return f"{kind} {name or wid}: no team credentials (team {team} required)"
        claimed, got = header
        if claimed != team:
            return f"{kind} {name or wid}: credentials of team {claimed}, but workflow {wid} belongs to team {team}"
        if not self._keys.verify(team, wid, kind, name, args, got):
            return f"{kind} {name or wid}: team {team}'s credentials are not genuine"
        return None

    def _start_refusal(self, input: ExecuteWorkflowInput) -> str | None:
        wid = workflow.info().workflow_id
        team = team_of_workflow_id(wid)
        claimed = getattr(input.args[0], "team", None) if input.args else None
        if team is None:  # the system's workflows (Schedules start them): they may not act for a team
            return f"workflow {wid} names no team but its input is team {claimed}'s" if claimed else None
        if isinstance(claimed, str) and claimed != team:
            return f"workflow {wid} belongs to team {team} but its input is team {claimed}'s"
        return self._refusal("start", "", input.args, input.headers)

    async def execute_workflow(self, input: ExecuteWorkflowInput) -> Any:
        # Checked when the run starts, not on replay: a refused start failed its run, and a run started
        # before the check existed (no header) must still replay. `input.args` are the objects the
        # workflow's __init__ took, after the signals of its first task: a workflow that kept them and let
        # a handler change them would be refused (long-lived workflows copy their input).
        why = None if workflow.unsafe.is_replaying() else self._start_refusal(input)
        if why is not None:
            workflow.logger.warning("team check refused a start: %s", why)
            raise ApplicationError(f"refused: {why}", type=REFUSED, non_retryable=True)
        return await super().execute_workflow(input)

    async def handle_signal(self, input: HandleSignalInput) -> None:
        why = self._refusal("signal", input.signal, input.args, input.headers)
        if why is not None:  # a signal cannot be refused: it is dropped (its event stays in history)
            workflow.logger.warning("team check dropped a signal: %s", why)
            return
        await super().handle_signal(input)

    async def handle_query(self, input: HandleQueryInput) -> Any:
        if input.query not in BUILTIN_QUERIES:
            why = self._refusal("query", input.query, input.args, input.headers)
            if why is not None:  # the caller sees only "Encoded failure" (failures are encrypted): log why
                workflow.logger.warning("team check refused a query: %s", why)
                raise ApplicationError(f"refused: {why}", type=REFUSED, non_retryable=True)
        return await super().handle_query(input)

    def _check_update(self, input: HandleUpdateInput) -> None:
        why = self._refusal("update", _update_name(input.update, input.id), input.args, input.headers)
        if why is not None:
            raise ApplicationError(f"refused: {why}", type=REFUSED, non_retryable=True)

    def handle_update_validator(self, input: HandleUpdateInput) -> None:
        self._check_update(input)  # refused here, the update leaves no trace in history
        super().handle_update_validator(input)

    async def handle_update_handler(self, input: HandleUpdateInput) -> Any:
        self._check_update(input)  # for updates without a validator (their validator step is skipped)
        return await super().handle_update_handler(input)


class _WorkflowOutbound(WorkflowOutboundInterceptor):
    """Signs what a workflow sends with the worker's key, as the team its target's id names."""

    def __init__(self, next: WorkflowOutboundInterceptor, credentials: KeyCredentials) -> None:
        super().__init__(next)
        self._cred = credentials

    async def start_child_workflow(
        self, input: StartChildWorkflowInput
    ) -> workflow.ChildWorkflowHandle[Any, Any]:
        input.headers = _with(input.headers, self._cred.header(input.id, "start", "", input.args))
        return await super().start_child_workflow(input)

    def continue_as_new(self, input: ContinueAsNewInput) -> Any:
        wid = workflow.info().workflow_id
        input.headers = _with(input.headers, self._cred.header(wid, "start", "", input.args))
        return super().continue_as_new(input)

    async def signal_child_workflow(self, input: SignalChildWorkflowInput) -> None:
        header = self._cred.header(input.child_workflow_id, "signal", input.signal, input.args)
        input.headers = _with(input.headers, header)
        await super().signal_child_workflow(input)

    async def signal_external_workflow(self, input: SignalExternalWorkflowInput) -> None:
        input.headers = _with(
            input.headers, self._cred.header(input.workflow_id, "signal", input.signal, input.args)
        )
        await super().signal_external_workflow(input)
