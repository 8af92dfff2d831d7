"""A uid without a passwd entry still gets a user name (kopf and torch ask getpass for one)."""

from __future__ import annotations

import getpass
import os

import pytest

from loraplex.identity import ensure_user_name


def test_a_uid_without_passwd_entry_gets_a_name(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("LOGNAME", "USER", "LNAME", "USERNAME"):
        monkeypatch.delenv(var, raising=False)

    def no_entry(uid: int) -> None:
        raise KeyError(f"getpwuid(): uid not found: {uid}")

    monkeypatch.setattr("pwd.getpwuid", no_entry)
    with pytest.raises(KeyError):
        getpass.getuser()  # what kopf met on the real node
    assert ensure_user_name() == f"uid-{os.getuid()}"
    assert getpass.getuser() == f"uid-{os.getuid()}"


def test_a_known_user_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOGNAME", "someone")
    assert ensure_user_name() == "someone"
