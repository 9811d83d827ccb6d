"""The one rule every long-lived workflow uses to keep its history bounded."""

from __future__ import annotations

from temporalio import workflow


def history_too_long(budget: int) -> bool:
    """Time to continue-as-new: the server suggests it, or the history passed our own budget."""
    info = workflow.info()
    return info.is_continue_as_new_suggested() or info.get_current_history_length() > budget
