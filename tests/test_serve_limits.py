"""The service's limits are one source: `clipscan serve`'s flags, their defaults and help, `Limits(...)` from
the parsed flags and `limits_table()` all come from the fields of `Limits`; a bad value is refused at parse
time naming the flag; `HTTPError` and the service's user-mistake errors are ClipscanErrors."""
from __future__ import annotations

import argparse
import dataclasses

import pytest

from clipscan.cli import serve as cli_serve
from clipscan.runtime.errors import ClipscanError
from clipscan.serve import Limits, limits_table
from clipscan.serve.auth import TokenFileError, read_token
from clipscan.serve.limits import LimitError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="clipscan serve")
    cli_serve.add_arguments(p)
    return p


def test_every_limit_is_a_flag_with_its_default_and_meaning():
    p = _parser()
    options = {a.dest: a for a in p._actions}
    rows = limits_table()
    assert [r[0] for r in rows] == ["--" + f.name.replace("_", "-") for f in dataclasses.fields(Limits)]
    for (flag, default, meaning), f in zip(rows, dataclasses.fields(Limits)):
        action = options[f.name]
        assert action.option_strings == [flag] and action.default == default == f.default
        assert meaning in action.help and str(default) in action.help
    args = p.parse_args([])
    assert Limits(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Limits)}) == Limits()


def test_the_old_flag_names_are_gone():
    for old in ("--max-body-mb", "--workers", "--max-connections"):  # (--timeout abbreviates --timeout-s)
        with pytest.raises(SystemExit):
            _parser().parse_args([old, "1"])


def test_parsed_flags_reach_limits():
    args = _parser().parse_args(["--max-body-bytes", "1024", "--timeout-s", "2.5", "--decode-workers", "3",
                                 "--header-timeout-s", "0.5", "--max-request-pixels", "1000000"])
    limits = Limits(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Limits)})
    assert (limits.max_body_bytes, limits.timeout_s, limits.decode_workers, limits.header_timeout_s,
            limits.max_request_pixels) == (1024, 2.5, 3, 0.5, 1_000_000)


@pytest.mark.parametrize("argv,words", [
    (["--max-in-flight", "0"], "--max-in-flight: limit max_in_flight (--max-in-flight) must be an integer >= 1"),
    (["--timeout-s", "0"], "must be a number > 0"),
    (["--max-delay-ms", "-1"], "must be a number >= 0"),
    (["--max-images", "2.5"], "'2.5' is not an integer"),
    (["--header-timeout-s", "nan"], "must be a number > 0"),
])
def test_a_bad_limit_is_refused_naming_its_flag(argv, words, capsys):
    with pytest.raises(SystemExit) as e:
        _parser().parse_args(argv)
    assert e.value.code == 2 and words in capsys.readouterr().err


def test_limits_and_service_errors_are_clipscan_errors(tmp_path):
    from clipscan.serve.errors import HTTPError

    with pytest.raises(LimitError, match="max_queue"):
        Limits(max_queue=0)
    assert issubclass(LimitError, ClipscanError) and issubclass(HTTPError, ClipscanError)
    empty = tmp_path / "token"
    empty.write_text("\n")
    with pytest.raises(TokenFileError, match="is empty"):
        read_token(str(empty))
    assert issubclass(TokenFileError, ClipscanError)
