"""Tests for reactor.config: command line + environment -> Config.

Layers: examples for every flag, variable and bad value; precedence; the
help and version screens; two hypothesis properties (valid settings
round-trip, arbitrary text either parses into range or exits 2); and one
real process, because exit status and stderr are what an operator sees.

Every call passes ``environ`` explicitly (a dict), so the developer's own
PORT or LOG_LEVEL can never leak into a test, except the two tests of the
``None`` defaults, which clear those variables first.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import subprocess
import sys
from contextlib import redirect_stderr
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import protocol
from reactor import config as config_module
from reactor.config import (
    DEFAULT_BURST,
    DEFAULT_CLUSTER_BUFFER,
    DEFAULT_CLUSTER_LEASE,
    DEFAULT_CLUSTER_NAME,
    DEFAULT_HOST,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_LOG_LEVEL,
    DEFAULT_MAX_CLIENTS,
    DEFAULT_MAX_LINE,
    DEFAULT_MAX_OUTPUT,
    DEFAULT_PORT,
    DEFAULT_RATE,
    DEFAULT_STATS_INTERVAL,
    DEFAULT_WORKERS,
    LOG_LEVELS,
    Config,
    build_parser,
    parse_config,
)
from reactor.engine import INSTALL_HINT, parse_redis_url

REPO_ROOT = Path(__file__).resolve().parent.parent

# field -> (flag, environment variable or None)
NAMES = {
    "host": ("--host", "CHAT_HOST"),
    "port": ("--port", "PORT"),
    "idle_timeout": ("--idle-timeout", "IDLE_TIMEOUT"),
    "max_clients": ("--max-clients", "MAX_CLIENTS"),
    "max_line": ("--max-line", None),
    "max_output": ("--max-output", None),
    "rate": ("--rate", None),
    "burst": ("--burst", None),
    "log_level": ("--log-level", "LOG_LEVEL"),
    "stats_interval": ("--stats-interval", None),
}
# Settings with tests of their own: TLS (tests/test_tls.py) and cluster mode (below).
TLS_NAMES = {
    "tls_cert": ("--tls-cert", "CHAT_TLS_CERT"),
    "tls_key": ("--tls-key", "CHAT_TLS_KEY"),
    "tls_port": ("--tls-port", "CHAT_TLS_PORT"),
    "tls_only": ("--tls-only", "CHAT_TLS_ONLY"),
}
CLUSTER_NAMES = {
    "cluster": ("--cluster", "CHAT_CLUSTER"),
    "cluster_name": ("--cluster-name", "CHAT_CLUSTER_NAME"),
    "cluster_lease": ("--cluster-lease", None),
    "cluster_buffer": ("--cluster-buffer", None),
    "workers": ("--workers", None),
}
EVERY_FIELD = [*NAMES, *TLS_NAMES, *CLUSTER_NAMES]
ENV_FIELDS = [field for field, (_, env) in NAMES.items() if env]
# Settings whose default --help words rather than prints.
SHOWN_DEFAULTS = {"tls_cert": "none: no TLS", "tls_key": "in the --tls-cert file", "tls_only": "off"}
# Settings that can each take any valid value whatever the others are.
INDEPENDENT = list(NAMES)
ALL_VARIABLES = [env for _, env in NAMES.values() if env]

# field -> (type, low, high or None) for every numeric setting
NUMERIC = {
    "port": (int, 0, 65535),
    "idle_timeout": (float, 0, None),
    "max_clients": (int, 1, None),
    "max_line": (int, 1, None),
    "max_output": (int, 1, None),
    "rate": (float, 0, None),
    "burst": (int, 1, None),
    "stats_interval": (float, 0, None),
}


def exits_2(capsys, argv, environ=None):
    """Run parse_config expecting a clean exit 2; return the error line."""
    with pytest.raises(SystemExit) as info:
        parse_config(argv, environ or {})
    assert info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "Traceback" not in captured.err
    assert captured.err.startswith("usage: chat-server")
    errors = [line for line in captured.err.splitlines() if "error:" in line]
    assert len(errors) == 1
    assert errors[0].startswith("chat-server: error: ")
    assert captured.err.endswith(errors[0] + "\n")
    return errors[0]


# -- defaults and the Config type ----------------------------------------------


def test_no_flags_and_no_environment_give_the_documented_defaults():
    assert parse_config([], {}) == Config(
        host="0.0.0.0",
        port=4000,
        idle_timeout=60.0,
        max_clients=10000,
        max_line=4096,
        max_output=1048576,
        rate=50.0,
        burst=100,
        log_level="INFO",
        stats_interval=0.0,
    )


def test_module_constants_are_the_config_defaults():
    assert Config() == Config(
        host=DEFAULT_HOST,
        port=DEFAULT_PORT,
        idle_timeout=DEFAULT_IDLE_TIMEOUT,
        max_clients=DEFAULT_MAX_CLIENTS,
        max_line=DEFAULT_MAX_LINE,
        max_output=DEFAULT_MAX_OUTPUT,
        rate=DEFAULT_RATE,
        burst=DEFAULT_BURST,
        log_level=DEFAULT_LOG_LEVEL,
        stats_interval=DEFAULT_STATS_INTERVAL,
    )
    assert (DEFAULT_PORT, DEFAULT_MAX_OUTPUT, DEFAULT_LOG_LEVEL) == (
        4000,
        1024 * 1024,
        "INFO",
    )
    assert LOG_LEVELS == ("DEBUG", "INFO", "WARNING", "ERROR")


def test_config_is_frozen():
    config = parse_config([], {})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.port = 1  # type: ignore[misc]


def test_config_has_exactly_the_documented_fields():
    assert [f.name for f in dataclasses.fields(Config)] == EVERY_FIELD


# -- every flag ------------------------------------------------------------------

GOOD_FLAGS = [
    (["--host", "127.0.0.1"], "host", "127.0.0.1"),
    (["--host", "::"], "host", "::"),
    (["--host", "chat.example.org"], "host", "chat.example.org"),
    (["--host=localhost"], "host", "localhost"),
    (["--port", "5000"], "port", 5000),
    (["--port=5000"], "port", 5000),
    (["--port", "0"], "port", 0),
    (["--port", "65535"], "port", 65535),
    (["--port", "080"], "port", 80),
    (["--idle-timeout", "300"], "idle_timeout", 300.0),
    (["--idle-timeout", "0"], "idle_timeout", 0.0),
    (["--idle-timeout", "0.25"], "idle_timeout", 0.25),
    (["--idle-timeout", ".5"], "idle_timeout", 0.5),
    (["--idle-timeout", "1e3"], "idle_timeout", 1000.0),
    (["--max-clients", "1"], "max_clients", 1),
    (["--max-clients", "50000"], "max_clients", 50000),
    (["--max-line", "1"], "max_line", 1),
    (["--max-line", "65536"], "max_line", 65536),
    (["--max-output", "1"], "max_output", 1),
    (["--max-output", "8388608"], "max_output", 8388608),
    (["--rate", "0"], "rate", 0.0),
    (["--rate", "2.5"], "rate", 2.5),
    (["--rate", "1000"], "rate", 1000.0),
    (["--burst", "1"], "burst", 1),
    (["--burst", "500"], "burst", 500),
    (["--log-level", "DEBUG"], "log_level", "DEBUG"),
    (["--log-level", "debug"], "log_level", "DEBUG"),
    (["--log-level", "Warning"], "log_level", "WARNING"),
    (["--log-level", "error"], "log_level", "ERROR"),
    (["--log-level", "iNfO"], "log_level", "INFO"),
    (["--stats-interval", "60"], "stats_interval", 60.0),
    (["--stats-interval", "0.5"], "stats_interval", 0.5),
    (["--stats-interval", "0"], "stats_interval", 0.0),
    (["--host", "127.0.0.1,::1"], "host", "127.0.0.1,::1"),
    (["--host", "127.0.0.1", "--host", "::1"], "host", "127.0.0.1,::1"),
    (["--host", "::1,127.0.0.1", "--host", "::1"], "host", "::1,127.0.0.1"),
    (["--host", "localhost", "--host", "localhost"], "host", "localhost"),
]


@pytest.mark.parametrize("argv, field, expected", GOOD_FLAGS)
def test_each_flag_sets_its_field_and_nothing_else(argv, field, expected):
    config = parse_config(argv, {})
    assert getattr(config, field) == expected
    assert type(getattr(config, field)) is type(getattr(Config(), field))
    assert config == dataclasses.replace(Config(), **{field: expected})


def test_all_flags_at_once():
    argv = [
        "--host", "::1", "--port", "4001", "--idle-timeout", "1.5",
        "--max-clients", "2", "--max-line", "3", "--max-output", "4",
        "--rate", "5", "--burst", "6", "--log-level", "warning",
        "--stats-interval", "7",
    ]
    expected = Config("::1", 4001, 1.5, 2, 3, 4, 5.0, 6, "WARNING", 7.0)
    assert parse_config(argv, {}) == expected


def test_the_last_of_a_repeated_flag_wins():
    assert parse_config(["--port", "1", "--port", "2"], {}).port == 2


def test_repeated_hosts_add_up_in_order_and_hosts_splits_them():
    config = parse_config(["--host", "::1", "--host", "127.0.0.1,10.0.0.1"], {})
    assert config.hosts == ("::1", "127.0.0.1", "10.0.0.1")
    assert Config().hosts == ("0.0.0.0",)
    assert Config(host="127.0.0.1").hosts == ("127.0.0.1",)


# -- every variable ----------------------------------------------------------------

GOOD_VARIABLES = [
    ("CHAT_HOST", "127.0.0.1", "host", "127.0.0.1"),
    ("CHAT_HOST", "::", "host", "::"),
    ("CHAT_HOST", "127.0.0.1,::1", "host", "127.0.0.1,::1"),
    ("CHAT_HOST", "::1,::1", "host", "::1"),
    ("PORT", "5000", "port", 5000),
    ("PORT", "0", "port", 0),
    ("IDLE_TIMEOUT", "300", "idle_timeout", 300.0),
    ("IDLE_TIMEOUT", "0", "idle_timeout", 0.0),
    ("IDLE_TIMEOUT", "2.5", "idle_timeout", 2.5),
    ("MAX_CLIENTS", "20", "max_clients", 20),
    ("LOG_LEVEL", "debug", "log_level", "DEBUG"),
    ("LOG_LEVEL", "ERROR", "log_level", "ERROR"),
    ("PORT", " 5000 ", "port", 5000),
    ("PORT", "5000\r\n", "port", 5000),
    ("CHAT_HOST", "\tlocalhost\r", "host", "localhost"),
    ("LOG_LEVEL", " Warning\n", "log_level", "WARNING"),
]


@pytest.mark.parametrize("variable, text, field, expected", GOOD_VARIABLES)
def test_each_variable_sets_its_field_and_nothing_else(variable, text, field, expected):
    config = parse_config([], {variable: text})
    assert getattr(config, field) == expected
    assert type(getattr(config, field)) is type(getattr(Config(), field))
    assert config == dataclasses.replace(Config(), **{field: expected})


@pytest.mark.parametrize("variable", ["MAX_LINE", "MAX_OUTPUT", "RATE", "BURST", "STATS_INTERVAL"])
def test_settings_without_a_documented_variable_ignore_the_environment(variable):
    assert parse_config([], {variable: "7"}) == Config()


@pytest.mark.parametrize("value", ["10.9.9.9", "my-laptop.local", "not a host"])
def test_host_is_not_read_only_chat_host(value):
    """tcsh and zsh set HOST to the machine's name: reading it would bind that one address."""
    assert parse_config([], {"HOST": value}) == Config()
    assert parse_config([], {"HOST": value, "CHAT_HOST": "127.0.0.1"}).host == "127.0.0.1"


def test_unrelated_variables_are_ignored():
    assert parse_config([], {"HOME": "/root", "port": "5000", "Port": "1"}) == Config()


# -- precedence: flag > variable > default -----------------------------------------

FLAG_AND_VARIABLE = [
    ("host", ["--host", "10.0.0.1"], "CHAT_HOST", "10.0.0.2", "10.0.0.1"),
    ("host", ["--host", "10.0.0.1", "--host", "::1"], "CHAT_HOST", "10.0.0.2,10.0.0.3", "10.0.0.1,::1"),
    ("port", ["--port", "5001"], "PORT", "5002", 5001),
    ("idle_timeout", ["--idle-timeout", "1"], "IDLE_TIMEOUT", "2", 1.0),
    ("max_clients", ["--max-clients", "3"], "MAX_CLIENTS", "4", 3),
    ("log_level", ["--log-level", "error"], "LOG_LEVEL", "debug", "ERROR"),
]


@pytest.mark.parametrize("field, argv, variable, text, expected", FLAG_AND_VARIABLE)
def test_the_flag_wins_over_the_variable(field, argv, variable, text, expected):
    assert getattr(parse_config(argv, {variable: text}), field) == expected


@pytest.mark.parametrize("field, argv, variable, text, expected", FLAG_AND_VARIABLE)
def test_a_bad_variable_is_not_read_when_the_flag_is_given(
    field, argv, variable, text, expected
):
    assert getattr(parse_config(argv, {variable: "nonsense value"}), field) == expected


def test_the_variable_wins_over_the_default_and_flags_fill_the_rest():
    config = parse_config(["--max-line", "10"], {"PORT": "5005", "LOG_LEVEL": "debug"})
    assert config == Config(port=5005, log_level="DEBUG", max_line=10)


@pytest.mark.parametrize("variable", ALL_VARIABLES)
@pytest.mark.parametrize("blank", ["", "   ", "\t\r\n"])
def test_an_empty_variable_counts_as_unset(variable, blank):
    assert parse_config([], {variable: blank}) == Config()


# -- bad values on the command line ----------------------------------------------

BAD_FLAGS = [
    ("--port", "abc"),
    ("--port", ""),
    ("--port", "-1"),
    ("--port", "65536"),
    ("--port", "70000"),
    ("--port", "1.5"),
    ("--port", "80.0"),
    ("--port", "+80"),
    ("--port", " 80"),
    ("--port", "8_0"),
    ("--port", "\u0668\u0660"),  # Arabic-Indic 80: int() would take it
    ("--port", "0x50"),
    ("--port", "9" * 5000),  # past int()'s digit limit on 3.11+
    ("--idle-timeout", "abc"),
    ("--idle-timeout", ""),
    ("--idle-timeout", "-1"),
    ("--idle-timeout", "-0.5"),
    ("--idle-timeout", "nan"),
    ("--idle-timeout", "NaN"),
    ("--idle-timeout", "inf"),
    ("--idle-timeout", "-inf"),
    ("--idle-timeout", "infinity"),
    ("--idle-timeout", "1e999"),
    ("--idle-timeout", "1_0"),
    ("--idle-timeout", "1,5"),
    ("--max-clients", "0"),
    ("--max-clients", "1.5"),
    ("--max-clients", "-3"),
    ("--max-clients", "many"),
    ("--max-line", "0"),
    ("--max-line", "1.5"),
    ("--max-line", "4k"),
    ("--max-output", "0"),
    ("--max-output", "1.5"),
    ("--max-output", "1MiB"),
    ("--rate", "-1"),
    ("--rate", "nan"),
    ("--rate", "inf"),
    ("--rate", "fast"),
    ("--burst", "0"),
    ("--burst", "1.5"),
    ("--burst", "-1"),
    ("--log-level", "verbose"),
    ("--log-level", "warn"),
    ("--log-level", "CRITICAL"),
    ("--log-level", "\u0131nfo"),  # dotless i: "ınfo".upper() == "INFO"
    ("--log-level", ""),
    ("--host", ""),
    ("--host", " "),
    ("--host", "127.0.0.1 "),
    ("--host", "local host"),
    ("--host", "127.0.0.1,"),
    ("--host", ",::1"),
    ("--host", "127.0.0.1,,::1"),
    ("--host", "127.0.0.1, ::1"),
    ("--host", ","),
    ("--stats-interval", "-1"),
    ("--stats-interval", "nan"),
    ("--stats-interval", "hourly"),
]


@pytest.mark.parametrize("flag, text", BAD_FLAGS)
def test_a_bad_flag_value_exits_2_naming_the_flag(capsys, flag, text):
    line = exits_2(capsys, [f"{flag}={text}"])
    assert line.startswith(f"chat-server: error: argument {flag}: must be ")
    assert repr(text[:40]) in line
    assert "environment variable" not in line


def test_the_brief_s_flag_message_exactly(capsys):
    line = exits_2(capsys, ["--port", "abc"])
    assert line == (
        "chat-server: error: argument --port: "
        "must be a whole number from 0 to 65535, got 'abc'"
    )


def test_a_long_bad_value_is_shortened_in_the_message(capsys):
    line = exits_2(capsys, ["--port", "9" * 5000])
    assert len(line) < 200
    assert line.endswith("...")


@pytest.mark.parametrize("flag, text", [("--port", "-1"), ("--rate", "-0.5")])
def test_a_negative_number_after_a_space_is_still_taken_as_the_value(
    capsys, flag, text
):
    line = exits_2(capsys, [flag, text])
    assert f"argument {flag}: must be " in line
    assert repr(text) in line


@pytest.mark.parametrize("flag", [flag for flag, _ in NAMES.values()])
def test_a_flag_without_its_value_exits_2_naming_the_flag(capsys, flag):
    line = exits_2(capsys, [flag])
    assert f"argument {flag}:" in line


def test_a_bad_flag_value_is_reported_even_when_the_variable_is_fine(capsys):
    line = exits_2(capsys, ["--port", "abc"], {"PORT": "5000"})
    assert "argument --port:" in line


# -- bad values in the environment -------------------------------------------------

BAD_VARIABLES = [
    ("PORT", "abc"),
    ("PORT", "70000"),
    ("PORT", "-1"),
    ("PORT", "1.5"),
    ("IDLE_TIMEOUT", "-1"),
    ("IDLE_TIMEOUT", "nan"),
    ("IDLE_TIMEOUT", "inf"),
    ("IDLE_TIMEOUT", "soon"),
    ("MAX_CLIENTS", "0"),
    ("MAX_CLIENTS", "1.5"),
    ("MAX_CLIENTS", "lots"),
    ("LOG_LEVEL", "loud"),
    ("LOG_LEVEL", "warn"),
    ("CHAT_HOST", "local host"),
    ("CHAT_HOST", "127.0.0.1, ::1"),
    ("CHAT_HOST", "127.0.0.1,,::1"),
]


@pytest.mark.parametrize("variable, text", BAD_VARIABLES)
def test_a_bad_variable_exits_2_naming_the_variable(capsys, variable, text):
    line = exits_2(capsys, [], {variable: text})
    assert line.startswith(
        f"chat-server: error: environment variable {variable}: must be "
    )
    assert repr(text) in line
    assert "argument --" not in line


def test_the_brief_s_variable_message_exactly(capsys):
    line = exits_2(capsys, [], {"PORT": "70000"})
    assert line == (
        "chat-server: error: environment variable PORT: "
        "must be a whole number from 0 to 65535, got '70000'"
    )


def test_a_variable_is_shown_stripped_in_its_message(capsys):
    line = exits_2(capsys, [], {"PORT": "  abc \n"})
    assert line.endswith("got 'abc'")


# -- unknown flags and stray arguments -------------------------------------------

@pytest.mark.parametrize(
    "argv",
    [["--verbose"], ["--port", "5000", "extra"], ["5000"], ["-p", "5000"]],
)
def test_unknown_flags_and_stray_arguments_exit_2(capsys, argv):
    line = exits_2(capsys, argv)
    assert "unrecognized arguments" in line
    assert argv[-1] in line or argv[0] in line


def test_abbreviated_flags_are_refused(capsys):
    line = exits_2(capsys, ["--po", "5000"])
    assert "--po" in line


# -- --help and --version ---------------------------------------------------------


def test_version_prints_the_protocol_version_and_exits_0(capsys):
    with pytest.raises(SystemExit) as info:
        parse_config(["--version"], {})
    assert info.value.code == 0
    captured = capsys.readouterr()
    assert captured.out == f"chat-server {protocol.__version__}\n"
    assert captured.err == ""


def test_version_wins_even_over_a_bad_variable(capsys):
    with pytest.raises(SystemExit) as info:
        parse_config(["--version"], {"PORT": "nope"})
    assert info.value.code == 0


@pytest.fixture
def help_text(capsys, monkeypatch):
    """The help screen at 80 columns, whitespace runs collapsed to one space."""
    monkeypatch.setenv("COLUMNS", "80")
    with pytest.raises(SystemExit) as info:
        parse_config(["--help"], {})
    assert info.value.code == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    return captured.out


def test_help_starts_with_usage_and_a_description(help_text):
    assert help_text.startswith("usage: chat-server ")
    flat = " ".join(help_text.split())
    assert "A multi-user TCP chat server." in flat


@pytest.mark.parametrize("field", [*NAMES, *TLS_NAMES])
def test_help_names_every_flag_with_its_variable_and_default(help_text, field):
    flag, variable = {**NAMES, **TLS_NAMES}[field]
    flat = " ".join(help_text.split())
    default = SHOWN_DEFAULTS.get(field, getattr(Config(), field))
    if isinstance(default, float):
        default = int(default)
    line = f"(env {variable}, default {default}" if variable else f"(default {default}"
    assert flag in help_text
    assert line in flat


def test_help_lists_every_variable(help_text):
    for variable in ALL_VARIABLES:
        assert f"env {variable}," in " ".join(help_text.split())


def test_help_has_the_examples_and_the_dual_stack_note(help_text):
    assert "  chat-server --port 5000\n" in help_text
    assert "  PORT=5000 chat-server\n" in help_text
    assert "  chat-server --host 127.0.0.1 --idle-timeout 300\n" in help_text
    assert "  chat-server --host 127.0.0.1 --host ::1\n" in help_text
    assert "  CHAT_HOST=127.0.0.1,::1 chat-server\n" in help_text
    flat = " ".join(help_text.split()).replace("`", "")
    assert "--host :: listens dual-stack, on IPv6 and IPv4" in flat
    assert "repeat the flag, or separate addresses with commas" in flat
    assert "HOST is not read" in flat
    assert "SIGUSR1 logs one line of statistics" in flat
    assert "Where IPv6 is not available, --host :: listens on IPv4 alone" in flat
    assert "2 for a bad flag or variable, or a Python older than 3.10" in flat


def test_short_h_is_help(capsys):
    with pytest.raises(SystemExit) as info:
        parse_config(["-h"], {})
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith("usage: chat-server ")


def test_build_parser_is_named_chat_server_and_leaves_unset_flags_none():
    parser = build_parser()
    assert parser.prog == "chat-server"
    assert vars(parser.parse_args([])) == {field: None for field in EVERY_FIELD}


# -- the None defaults: sys.argv and os.environ ----------------------------------


@pytest.fixture
def clean_environment(monkeypatch):
    for variable in ALL_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    return monkeypatch


def test_argv_none_reads_sys_argv_after_the_program_name(clean_environment):
    clean_environment.setattr(sys, "argv", ["chat-server", "--port", "5001"])
    assert parse_config(environ={}).port == 5001


def test_environ_none_reads_os_environ(clean_environment):
    clean_environment.setenv("PORT", "5002")
    clean_environment.setenv("LOG_LEVEL", "error")
    assert parse_config([]) == Config(port=5002, log_level="ERROR")


# -- properties ---------------------------------------------------------------------

finite_non_negative = st.floats(
    min_value=0, allow_nan=False, allow_infinity=False
).map(abs)  # abs: never "-0.0"
at_least_one = st.integers(min_value=1, max_value=10**30)
any_case_level = st.sampled_from(LOG_LEVELS).flatmap(
    lambda level: st.tuples(*[st.sampled_from([c, c.lower()]) for c in level]).map(
        "".join
    )
)
host_text = st.text(
    st.characters(blacklist_categories=("C", "Z"), blacklist_characters=","), min_size=1, max_size=40
)

VALID = {
    "host": host_text,
    "port": st.integers(0, 65535),
    "idle_timeout": finite_non_negative,
    "max_clients": at_least_one,
    "max_line": at_least_one,
    "max_output": at_least_one,
    "rate": finite_non_negative,
    "burst": at_least_one,
    "log_level": any_case_level,
    "stats_interval": finite_non_negative,
}


def as_text(value):
    return repr(value) if isinstance(value, float) else str(value)


def stored(field, value):
    return value.upper() if field == "log_level" else value


@given(st.data())
def test_any_valid_combination_round_trips(data):
    argv, environ, expected = [], {}, {}
    for field in INDEPENDENT:
        flag, variable = NAMES[field]
        sources = ["flag", "none"] + (["env", "both", "blank"] if variable else [])
        source = data.draw(st.sampled_from(sources), label=f"{field} source")
        value = data.draw(VALID[field], label=field)
        if source in ("flag", "both"):
            text = as_text(value)
            if text.startswith("-") or data.draw(st.booleans()):
                argv.append(f"{flag}={text}")
            else:
                argv.extend([flag, text])
            expected[field] = stored(field, value)
        if source == "env":
            environ[variable] = as_text(value)
            expected[field] = stored(field, value)
        if source == "both":
            environ[variable] = as_text(data.draw(VALID[field], label=f"{field} env"))
        if source == "blank":
            environ[variable] = data.draw(st.sampled_from(["", " ", "\n"]))
    assert parse_config(argv, environ) == Config(**expected)


numeric_looking = st.from_regex(
    r"\A[ +-]?[0-9]{0,7}(\.[0-9]{0,3})?([eE][+-]?[0-9]{1,4})?\s?\Z"
)
any_text = st.one_of(
    st.text(),
    numeric_looking,
    st.integers().map(str),
    st.floats().map(repr),
    st.sampled_from(["nan", "inf", "-inf", "1e999", "", " ", "0", "-0", "1_0"]),
)


@given(
    field=st.sampled_from(sorted(NUMERIC)),
    text=any_text,
    via_environment=st.booleans(),
)
def test_any_text_for_a_numeric_setting_parses_into_range_or_exits_2(
    field, text, via_environment
):
    flag, variable = NAMES[field]
    via_environment = via_environment and variable is not None
    if via_environment:
        argv, environ, named = [], {variable: text}, f"environment variable {variable}:"
    else:
        argv, environ, named = [f"{flag}={text}"], {}, f"argument {flag}:"
    stderr = io.StringIO()
    try:
        with redirect_stderr(stderr):
            config = parse_config(argv, environ)
    except SystemExit as exit:
        assert exit.code == 2
        assert named in stderr.getvalue()
        assert "Traceback" not in stderr.getvalue()
        return
    kind, low, high = NUMERIC[field]
    value = getattr(config, field)
    assert type(value) is kind
    assert math.isfinite(value)
    assert value >= low
    assert high is None or value <= high
    source = text.strip() if via_environment else text
    if source:
        assert value == kind(source)
    else:
        assert value == getattr(Config(), field)


# -- the real process -----------------------------------------------------------------


def test_a_real_process_exits_2_with_one_error_line_and_no_traceback():
    environment = {k: v for k, v in os.environ.items() if k not in ALL_VARIABLES}
    environment["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(REPO_ROOT), environment.get("PYTHONPATH")])
    )
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "from reactor.config import parse_config; parse_config()",
            "--port",
            "nope",
        ],
        cwd=REPO_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert errors == [
        "chat-server: error: argument --port: "
        "must be a whole number from 0 to 65535, got 'nope'"
    ]


def test_the_module_exports_what_other_code_imports():
    for name in ("Config", "build_parser", "parse_config", "DEFAULT_PORT"):
        assert name in config_module.__all__


# -- TLS ---------------------------------------------------------------------------


def test_tls_is_off_unless_a_certificate_is_given():
    config = parse_config([], {})
    assert (config.tls_cert, config.tls_key, config.tls_port, config.tls_only) == (None, None, 4443, False)


@pytest.mark.parametrize(
    "argv, environ, expected",
    [
        (["--tls-cert", "c.pem"], {}, ("c.pem", None, 4443, False)),
        (["--tls-cert", "c.pem", "--tls-key", "k.pem", "--tls-port", "6697"], {}, ("c.pem", "k.pem", 6697, False)),
        (["--tls-cert", "c.pem", "--tls-only"], {}, ("c.pem", None, 4443, True)),
        ([], {"CHAT_TLS_CERT": "c.pem", "CHAT_TLS_KEY": "k.pem", "CHAT_TLS_PORT": "1", "CHAT_TLS_ONLY": "yes"},
         ("c.pem", "k.pem", 1, True)),
        (["--tls-cert", "flag.pem"], {"CHAT_TLS_CERT": "env.pem", "CHAT_TLS_ONLY": "0"},
         ("flag.pem", None, 4443, False)),
    ],
)
def test_tls_settings_from_flags_and_variables(argv, environ, expected):
    config = parse_config(argv, environ)
    assert (config.tls_cert, config.tls_key, config.tls_port, config.tls_only) == expected


@pytest.mark.parametrize(
    "argv, environ, named",
    [
        (["--tls-key", "k.pem"], {}, "--tls-key"),
        (["--tls-only"], {}, "--tls-only"),
        (["--tls-port", "443"], {}, "--tls-port"),
        ([], {"CHAT_TLS_ONLY": "on"}, "--tls-only"),
        (["--tls-cert", "c.pem", "--tls-port", "70000"], {}, "--tls-port"),
        ([], {"CHAT_TLS_CERT": "c.pem", "CHAT_TLS_ONLY": "maybe"}, "CHAT_TLS_ONLY"),
    ],
)
def test_bad_tls_settings_exit_2_naming_the_setting(argv, environ, named, capsys):
    with pytest.raises(SystemExit) as raised:
        parse_config(argv, environ)
    assert raised.value.code == 2
    assert named in capsys.readouterr().err


# -- cluster mode -----------------------------------------------------------------------

URL = "redis://127.0.0.1:6379/0"
ADDRESS = parse_redis_url(URL)


def test_cluster_defaults_are_standalone():
    config = parse_config([], {})
    assert config.cluster is None
    assert (config.cluster_name, config.cluster_lease, config.cluster_buffer, config.workers) == (
        "chat", 10.0, 16 * 1024 * 1024, 1,
    )
    assert (DEFAULT_CLUSTER_NAME, DEFAULT_CLUSTER_LEASE, DEFAULT_CLUSTER_BUFFER, DEFAULT_WORKERS) == (
        "chat", 10.0, 16777216, 1,
    )


GOOD_CLUSTER = [
    (["--cluster", URL], {}, {"cluster": ADDRESS}),
    (["--cluster=unix:///run/redis.sock?db=2"], {}, {"cluster": parse_redis_url("unix:///run/redis.sock?db=2")}),
    ([], {"CHAT_CLUSTER": f" {URL}\n"}, {"cluster": ADDRESS}),
    (["--cluster", URL], {"CHAT_CLUSTER": "rediss://elsewhere"}, {"cluster": ADDRESS}),
    (["--cluster", URL, "--cluster-name", "chat-2.prod_eu"], {}, {"cluster": ADDRESS, "cluster_name": "chat-2.prod_eu"}),
    ([], {"CHAT_CLUSTER": URL, "CHAT_CLUSTER_NAME": "other"}, {"cluster": ADDRESS, "cluster_name": "other"}),
    (["--cluster", URL, "--cluster-name", "a"], {"CHAT_CLUSTER_NAME": "b"}, {"cluster": ADDRESS, "cluster_name": "a"}),
    (["--cluster", URL, "--cluster-lease", "2.5"], {}, {"cluster": ADDRESS, "cluster_lease": 2.5}),
    (["--cluster", URL, "--cluster-lease", "1e-3"], {}, {"cluster": ADDRESS, "cluster_lease": 0.001}),
    (["--cluster", URL, "--cluster-buffer", "4096"], {}, {"cluster": ADDRESS, "cluster_buffer": 4096}),
    (["--cluster", URL, "--workers", "4"], {}, {"cluster": ADDRESS, "workers": 4}),
    (["--workers", "1"], {}, {"workers": 1}),
    (["--cluster", URL, "--max-line", "100", "--cluster-buffer", "100"], {},
     {"cluster": ADDRESS, "max_line": 100, "cluster_buffer": 100}),
]


@pytest.mark.parametrize("argv, environ, fields", GOOD_CLUSTER)
def test_cluster_settings(argv, environ, fields):
    assert parse_config(argv, environ) == Config(**fields)


BAD_CLUSTER_VALUES = [
    ("--cluster-name", ""),
    ("--cluster-name", "a b"),
    ("--cluster-name", "chat:prod"),
    ("--cluster-name", "chat/prod"),
    ("--cluster-name", "caf\u00e9"),
    ("--cluster-name", "x" * 65),
    ("--cluster-lease", "0"),
    ("--cluster-lease", "-1"),
    ("--cluster-lease", "nan"),
    ("--cluster-lease", "inf"),
    ("--cluster-lease", "soon"),
    ("--cluster-buffer", "0"),
    ("--cluster-buffer", "1.5"),
    ("--cluster-buffer", "16MiB"),
    ("--workers", "0"),
    ("--workers", "-2"),
    ("--workers", "1.5"),
    ("--workers", "all"),
]


@pytest.mark.parametrize("flag, text", BAD_CLUSTER_VALUES)
def test_a_bad_cluster_value_exits_2_naming_the_flag(capsys, flag, text):
    line = exits_2(capsys, ["--cluster", URL, f"{flag}={text}"])
    assert line.startswith(f"chat-server: error: argument {flag}: must be ")
    assert repr(text[:40]) in line


@pytest.mark.parametrize(
    "text, reason",
    [
        ("http://127.0.0.1", "must start with redis:// or unix://"),
        ("redis://127.0.0.1:99999", "the port must be a whole number from 1 to 65535"),
        ("rediss://127.0.0.1", "rediss:// (TLS to Redis) is not supported"),
        ("redis://h/x", "database number"),
        ("", "empty"),
    ],
)
def test_a_bad_url_exits_2_naming_the_flag_and_what_is_wrong(capsys, text, reason):
    line = exits_2(capsys, ["--cluster", text])
    assert line.startswith(
        "chat-server: error: argument --cluster: must be "
        "redis://[user:password@]host[:port][/db] or unix:///path[?db=N]: "
    )
    assert reason in line
    if text:
        assert line.endswith(f", got {text!r}")  # no @, no credentials: it is safe to quote


@pytest.mark.parametrize(
    "text",
    ["redis://:hunter2@h:99999", "redis://alice:hunter2@h/x", "redis://u:hun/ter2@h", "rediss://:hunter2@h"],
)
def test_a_bad_url_with_credentials_is_never_quoted(capsys, text):
    for argv, environ, named in (
        (["--cluster", text], {}, "argument --cluster:"),
        ([], {"CHAT_CLUSTER": text}, "environment variable CHAT_CLUSTER:"),
    ):
        line = exits_2(capsys, argv, environ)
        assert named in line
        assert "hun" not in line and "got" not in line


@pytest.mark.parametrize("field", ["cluster_name", "cluster_lease", "cluster_buffer"])
def test_a_cluster_flag_without_cluster_exits_2_naming_it(capsys, field):
    flag, variable = CLUSTER_NAMES[field]
    value = {"cluster_name": "x", "cluster_lease": "5", "cluster_buffer": "65536"}[field]
    line = exits_2(capsys, [flag, value])
    assert line == (
        f"chat-server: error: argument {flag}: only means something in cluster mode: give --cluster too"
    )
    if variable:
        line = exits_2(capsys, [], {variable: value})
        assert line.startswith(f"chat-server: error: environment variable {variable}: only means")


def test_several_workers_need_cluster_mode(capsys):
    line = exits_2(capsys, ["--workers", "2"])
    assert line == "chat-server: error: argument --workers: more than 1 worker needs --cluster"


def test_several_workers_need_linux(capsys, monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    line = exits_2(capsys, ["--cluster", URL, "--workers", "2"])
    assert line == "chat-server: error: argument --workers: more than 1 worker needs Linux (SO_REUSEPORT)"
    assert parse_config(["--cluster", URL, "--workers", "1"], {}).workers == 1


def test_the_cluster_buffer_holds_at_least_one_line(capsys):
    line = exits_2(capsys, ["--cluster", URL, "--cluster-buffer", "4095"])
    assert line.startswith("chat-server: error: argument --cluster-buffer: must be at least --max-line (4096 bytes)")
    line = exits_2(capsys, ["--cluster", URL, "--max-line", "20000000"])
    assert "argument --cluster-buffer: must be at least --max-line (20000000 bytes)" in line


def test_cluster_mode_without_hiredis_exits_2_saying_how_to_install_it(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "hiredis", None)  # what a missing package looks like to import
    line = exits_2(capsys, ["--cluster", URL])
    assert line == f"chat-server: error: argument --cluster: {INSTALL_HINT}"
    assert 'pip install "chat-reactor[cluster]"' in line
    line = exits_2(capsys, [], {"CHAT_CLUSTER": URL})
    assert line == f"chat-server: error: environment variable CHAT_CLUSTER: {INSTALL_HINT}"
    assert parse_config([], {}) == Config()  # standalone never asks for it


@pytest.mark.parametrize("field", list(CLUSTER_NAMES))
def test_help_names_every_cluster_flag_with_its_variable_and_default(help_text, field):
    flag, variable = CLUSTER_NAMES[field]
    flat = " ".join(help_text.split())
    default = {
        "cluster": "none: standalone", "cluster_name": "chat", "cluster_lease": "10",
        "cluster_buffer": "16777216 = 16 MiB", "workers": "1",
    }[field]
    line = f"(env {variable}, default {default})" if variable else f"(default {default})"
    assert f"{flag} " in help_text
    assert line in flat


def test_help_explains_cluster_mode(help_text):
    assert "  chat-server --cluster redis://127.0.0.1:6379/0\n" in help_text
    assert "  CHAT_CLUSTER=redis://:password@redis.internal/0 chat-server --workers 4\n" in help_text
    flat = " ".join(help_text.split())
    assert 'It needs the cluster extra: pip install "chat-reactor[cluster]"' in flat
    assert "redis://[user:password@]host[:port][/db] or unix:///path[?db=N]" in flat
    assert "rediss:// (TLS to Redis) is not supported" in flat
    assert "--workers N (Linux) starts N nodes sharing one port" in flat


@given(text=st.one_of(st.text(max_size=60), st.text(max_size=40).map(lambda t: "redis://" + t)))
def test_any_text_for_cluster_parses_or_exits_2_naming_it(text):
    stderr = io.StringIO()
    try:
        with redirect_stderr(stderr):
            config = parse_config(["--cluster", text], {})
    except SystemExit as exit:
        assert exit.code == 2
        assert "argument --cluster:" in stderr.getvalue()
        assert "Traceback" not in stderr.getvalue()
        if "@" in text:
            assert ", got " not in stderr.getvalue()  # a URL that may hold credentials is never quoted
        return
    assert config.cluster == parse_redis_url(text)


def test_a_real_process_never_shows_the_password():
    environment = {k: v for k, v in os.environ.items() if k not in ALL_VARIABLES and not k.startswith("CHAT_")}
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), environment.get("PYTHONPATH")]))
    environment["CHAT_CLUSTER"] = "redis://alice:hunter2@127.0.0.1:70000/0"
    result = subprocess.run(
        [sys.executable, "-c", "from reactor.config import parse_config; parse_config()"],
        cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert "hunter2" not in result.stderr and "Traceback" not in result.stderr
    assert "environment variable CHAT_CLUSTER: must be redis://" in result.stderr
