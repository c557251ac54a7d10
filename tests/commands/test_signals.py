"""A signal stops a command in one line, even where Python or a library turns the
KeyboardInterrupt into another error on its way out. In process: each test sends the
signal to this very process, inside a command added for the test."""

import os
import signal
import sys
import time
import weakref

import click
import pytest

from backfill import cli, entry


def _signal_while_a_class_is_built(sig: int) -> None:
    """What a signal during an import does: it arrives while a class body's descriptors
    are set up, and Python 3.11 reraises it as RuntimeError."""

    class Arrives:
        def __set_name__(self, owner: type, name: str) -> None:
            os.kill(os.getpid(), sig)
            time.sleep(5)  # the handler raises long before

    type("Built", (), {"field": Arrives()})


def _half_built_then_used(sig: int) -> None:
    """A library that catches the error (``except Exception``) and goes on with the half
    built object, failing on it later with an error that no longer names the signal."""
    try:
        _signal_while_a_class_is_built(sig)
    except Exception:
        pass
    raise KeyError("_flags_cache")


def _dropped_by_python(sig: int) -> None:
    """A signal inside a callback Python runs for itself (here a weak reference's, as the
    import system's lock clean-up is): Python prints it as "Exception ignored" and goes
    on, so the command would finish as if never stopped."""
    class Thing:
        pass

    def cleanup(ref: weakref.ref) -> None:
        os.kill(os.getpid(), sig)
        time.sleep(5)

    thing = Thing()
    ref = weakref.ref(thing, cleanup)  # noqa: F841 (kept alive until the object goes)
    del thing
    for _ in range(20):  # the rest of the command's work
        time.sleep(0.1)


@pytest.fixture
def command():
    """A `backfill boom` command for the test, taken away after."""
    def add(body):
        cli.backfill.add_command(click.Command("boom", callback=body))
    yield add
    cli.backfill.commands.pop("boom", None)


@pytest.mark.parametrize("body", [_signal_while_a_class_is_built, _half_built_then_used,
                                  _dropped_by_python])
@pytest.mark.parametrize(("sig", "said"), [(signal.SIGINT, "interrupted"),
                                           (signal.SIGTERM, "terminated")])
def test_a_signal_turned_into_another_error_is_still_one_line(command, capsys, body, sig,
                                                              said):
    command(lambda: body(sig))
    before, hook = signal.getsignal(sig), sys.unraisablehook
    assert cli.main(["boom"]) == 128 + sig
    err = capsys.readouterr().err
    assert err.strip() == f"backfill: {said}"
    assert signal.getsignal(sig) is before  # the command's handlers are put back
    assert sys.unraisablehook is hook


def test_an_error_without_a_signal_is_not_taken_for_one(command):
    """A bug is still a bug: the next command starts with no signal on record, so its
    KeyError goes out with its traceback, not as "interrupted"."""
    command(lambda: _half_built_then_used(signal.SIGINT))
    assert cli.main(["boom"]) == 130

    def bug() -> None:
        raise KeyError("_flags_cache")
    cli.backfill.commands.pop("boom")
    command(bug)
    with pytest.raises(KeyError):
        cli.main(["boom"])


def test_a_signal_while_the_command_loads(monkeypatch, capsys):
    """Before the command line is even read (the console script loading its modules)."""
    monkeypatch.setattr(sys, "argv", ["backfill", "watch"])
    monkeypatch.setattr(entry, "_watch", lambda: _half_built_then_used(signal.SIGINT))
    with pytest.raises(SystemExit) as out:
        entry.main()
    assert out.value.code == 130
    assert capsys.readouterr().err.strip() == "backfill: interrupted"
