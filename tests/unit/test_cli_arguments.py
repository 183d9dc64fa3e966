"""The CLI refuses bad arguments with a usage error that names the flag, not a traceback."""

from __future__ import annotations

from typer.testing import CliRunner

from services.cli import app


def test_an_out_of_range_simulator_knob_is_a_usage_error_naming_its_flag() -> None:
    args = ["simulator", "--p-429", "2", "--latency", "-1"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 2
    assert "--p-429=2.0" in result.output and "--latency=-1.0" in result.output
    assert "Traceback" not in result.output


def test_a_wait_of_no_time_is_a_usage_error_before_anything_is_published() -> None:
    for timeout in ("-5", "0"):
        result = CliRunner().invoke(
            app, ["submit", "a cat", "--wait", "--timeout", timeout], env={"COLUMNS": "200"}
        )
        assert result.exit_code == 2 and "--timeout" in result.output, result.output
