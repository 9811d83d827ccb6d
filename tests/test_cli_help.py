"""The CLI's help and output formatting, without Temporal: help that teaches (no value type on flags, one
listing per command, every `--timeout` described as what it bounds), `--version`, a hint for
`poolctl delete NAME`, tables that never cut a value, and one timestamp format in `--json`."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from typer.testing import CliRunner

from poolctl.starter.cli import app
from poolctl.starter.output import WideWhenPiped, print_json, table


def help_of(*args: str) -> str:
    result = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "100"})
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize(
    "command", [["apply"], ["status"], ["servers"], ["policy", "list"], ["policy", "pause"], ["lb", "stats"]]
)
def test_flags_show_no_value_type_and_defaults_are_not_eaten_as_markup(command: list[str]):
    text = help_of(*command)
    assert "<bool>" not in text and "list[Path]" not in text and "{" not in text
    if "--team" in text and command[0] != "lb":
        assert "POOLCTL_TEAM" in text and "pool ." not in text


def test_root_help_lists_each_command_once_under_headings():
    text = help_of()
    assert "Start here" in text and "Pools and load balancers" in text
    listed = [line.split()[1] for line in text.splitlines() if line.startswith("│ ") and line[2] != " "]
    assert listed.count("balancer") == 1 and "lb" not in listed  # `lb` is a hidden alias
    assert listed.index("demo") < listed.index("apply") < listed.index("policy") < listed.index("worker")
    assert "Other" not in text  # every command sits under a heading that says what it is for


def test_timeout_help_says_what_it_bounds():
    assert "--wait" not in " ".join(help_of("status").split()).split("--timeout")[1]
    assert "--wait" not in " ".join(help_of("delete", "pool").split()).split("--timeout")[1]
    for command in (["policy", "list"], ["policy", "show"], ["policy", "toggle"]):
        assert "--timeout" in help_of(*command)


def test_version_and_the_delete_hint():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.startswith("poolctl ")
    result = CliRunner().invoke(app, ["delete", "demo-web"])
    assert result.exit_code == 2
    assert "poolctl delete pool demo-web" in result.output


def test_tables_never_cut_values_on_a_narrow_terminal_and_are_whole_lines_in_a_pipe():
    long_path = "/tmp/some/state/dir/logs/balancer-default.demo-web.demo-lb.log"
    rows = [["default/demo-web", "running", 12345, "http://127.0.0.1:8080/", long_path]]
    narrow = WideWhenPiped(file=io.StringIO(), width=60, force_terminal=True, color_system=None)
    narrow.print(table(None, ["pool", "state", "pid", "url", "log"], rows))
    header, _rule, *lines = narrow.file.getvalue().splitlines()  # type: ignore[attr-defined]
    starts = [header.index(name) for name in ("pool", "state", "pid", "url", "log")] + [None]
    cells = ["".join(line[a:b].strip() for line in lines) for a, b in zip(starts, starts[1:], strict=False)]
    assert cells == [str(v) for v in rows[0]]  # folded onto more lines, never cut
    piped = WideWhenPiped(file=io.StringIO(), _environ={})
    piped.print(table(None, ["pool", "state", "pid", "url", "log"], rows))
    assert long_path in piped.file.getvalue()  # type: ignore[attr-defined]


def test_print_json_writes_every_timestamp_in_utc_with_its_offset(capsys: pytest.CaptureFixture[str]):
    print_json(
        {
            "naive": datetime(2026, 11, 30, 12, 0, 0),
            "aware": datetime(2026, 11, 30, 14, 0, 0, tzinfo=timezone(timedelta(hours=2))),
            "nested": [{"at": "2026-11-30T12:16:13.271446Z"}, {"at": datetime(2026, 11, 30, tzinfo=UTC)}],
            "text": "not a time: 2026-11-30T12:16:13Z",
        }
    )
    out = json.loads(capsys.readouterr().out)
    assert out == {
        "naive": "2026-11-30T12:00:00+00:00",
        "aware": "2026-11-30T12:00:00+00:00",
        "nested": [{"at": "2026-11-30T12:16:13.271446+00:00"}, {"at": "2026-11-30T00:00:00+00:00"}],
        "text": "not a time: 2026-11-30T12:16:13Z",
    }
