"""The key sealing 2026-07-28 request_state: from the environment or a file, with a previous key for rotation."""

from __future__ import annotations

from pathlib import Path

import pytest
from mcp.server.request_state import InvalidRequestState, RequestStateSecurity

from vmcp_opt.config import VmcpConfig
from vmcp_opt.shared.secrets import SecretMissing
from vmcp_opt.shared.state_keys import state_keys

OLD, NEW = b"o" * 32, b"n" * 32


def codec(keys: list[bytes] | None) -> RequestStateSecurity:
    assert keys is not None
    return RequestStateSecurity(keys=keys)


def test_no_key_configured_means_a_key_of_this_process() -> None:
    assert state_keys(VmcpConfig()) is None


def test_rotation_seals_with_the_new_key_and_still_opens_the_old(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "old.key").write_bytes(OLD + b"\n")
    monkeypatch.setenv("STATE_KEY", NEW.decode())
    before = codec(state_keys(VmcpConfig(request_state={"key_file": str(tmp_path / "old.key")})))
    during = codec(
        state_keys(VmcpConfig(request_state={"key_env": "STATE_KEY", "previous_key_file": str(tmp_path / "old.key")}))
    )
    after = codec(state_keys(VmcpConfig(request_state={"key_env": "STATE_KEY"})))
    sealed_before = before.codec.seal(b"round")
    assert during.codec.unseal(sealed_before) == b"round"  # a retry of a round handed out before the rotation
    sealed_during = during.codec.seal(b"round")
    assert after.codec.unseal(sealed_during) == b"round"  # sealed with the new key
    with pytest.raises(InvalidRequestState):
        after.codec.unseal(sealed_before)  # the old key is gone once dropped


def test_a_missing_or_short_key_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOT_SET_KEY", raising=False)
    with pytest.raises(SecretMissing, match=r"request_state\.key_env: the environment variable NOT_SET_KEY"):
        state_keys(VmcpConfig(request_state={"key_env": "NOT_SET_KEY"}))
    monkeypatch.setenv("SHORT_KEY", "short")
    with pytest.raises(SecretMissing, match=r"request_state\.key: 5 bytes"):
        state_keys(VmcpConfig(request_state={"key_env": "SHORT_KEY"}))


def test_a_previous_key_without_a_current_one_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="a previous key needs a current one"):
        VmcpConfig(request_state={"previous_key_env": "X"})
