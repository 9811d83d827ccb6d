"""How `poolctl ... --help` shows parameters: a flag without a value type (`--json`, not `--json <bool>`),
an argument in the usage line as `POOL` (required) or `[POOL]` (optional), as click and most CLIs do."""

from __future__ import annotations

from typing import Any

from typer import core


def _flag_type(original: Any) -> Any:
    def display_type_rich(self: Any, ctx: Any) -> str | None:
        if getattr(self, "is_flag", False) and self.metavar is None:
            return None  # a flag takes no value: its type says nothing
        return original(self, ctx)  # type: ignore[no-any-return]

    return display_type_rich


def _usage_name(self: Any) -> str:
    name = (self.metavar or self.name or "").upper()
    name = name if self.required else f"[{name}]"
    return name + ("..." if self.nargs != 1 else "")


def install() -> None:
    """Apply the rules above to Typer's help (Typer >= 0.20 shows `<type>` for every parameter and `{arg}`
    in the usage line; older Typer has neither hook and needs nothing)."""
    option = getattr(core, "TyperOption", None)
    if option is not None and hasattr(option, "display_type_rich") and not getattr(option, "_poolctl", False):
        option.display_type_rich = _flag_type(option.display_type_rich)
        option._poolctl = True
    argument = getattr(core, "TyperArgument", None)
    if argument is not None and hasattr(argument, "_usage_display_name"):
        argument._usage_display_name = _usage_name
