"""The one API-key lookup that serve, endpoints and bench serve share."""

from __future__ import annotations

import pytest

from hpcinfer.core.api_keys import resolve_api_key
from hpcinfer.errors import SpecError


def test_a_named_variable_is_read_and_must_be_set() -> None:
    assert resolve_api_key("MY_KEY", {"MY_KEY": "s3cret"}) == "s3cret"
    with pytest.raises(SpecError, match=r"--api-key-env MY_KEY: .*\$MY_KEY is not set") as err:
        resolve_api_key("MY_KEY", {"MY_KEY": "", "OPENAI_API_KEY": "other"})
    assert "other" not in str(err.value)


def test_without_a_name_clients_read_openai_api_key_and_servers_nothing() -> None:
    assert resolve_api_key(None, {"OPENAI_API_KEY": "k"}) == "k"
    assert resolve_api_key(None, {"OPENAI_API_KEY": ""}) is None
    assert resolve_api_key(None, {"OPENAI_API_KEY": "k"}, default=None) is None
