"""A FHIR server behind an identity provider that issues tokens for a client secret (OAuth 2.0
``client_credentials``: Entra ID, Keycloak, Okta), on the real test server: its token endpoint checks the secret
(``TOKEN_CLIENT_ID``/``TOKEN_CLIENT_SECRET``) and its FHIR API answers 401 without an issued token
(``REQUIRE_TOKEN=1``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner, Result

from fhir_adapter.cli.commands import main
from fhir_adapter.synth import write_feed
from fhir_adapter.testing.feed_loader import load_feed
from fhir_adapter.testing.fhir_server import ServerHandle, start_fhir_server
from tests.serverkit import report, write_config

pytestmark = pytest.mark.server

CLIENT_ID = "lcar-aio adapter"  # a space: the id and secret are form-encoded inside HTTP Basic (RFC 6749 2.3.1)
SECRET = "s3cr%t:with+odd chars"
SUBJECTS = 3


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    feed = tmp_path_factory.mktemp("oauth") / "feed"
    write_feed(feed, subjects=SUBJECTS, seed=7)
    with start_fhir_server(TOKEN_CLIENT_ID=CLIENT_ID, TOKEN_CLIENT_SECRET=SECRET, REQUIRE_TOKEN=1) as handle:
        token = httpx.post(f"{handle.root_url}/auth/token", data={"grant_type": "client_credentials",
                                                                  "client_id": CLIENT_ID, "client_secret": SECRET}
                           ).json()["access_token"]
        load_feed(handle.base_url, feed, headers={"Authorization": f"Bearer {token}"})
        yield handle


def env(server: ServerHandle, **extra: str) -> dict[str, str]:
    return {"FHIR_ADAPTER_OAUTH_CLIENT_ID": CLIENT_ID, "FHIR_ADAPTER_OAUTH_CLIENT_SECRET": SECRET,
            "FHIR_ADAPTER_OAUTH_TOKEN_URL": f"{server.root_url}/auth/token",
            "FHIR_ADAPTER_OAUTH_SCOPE": "https://fhir.example.org/.default", **extra}


def run(server: ServerHandle, out: Path, environment: dict[str, str]) -> Result:
    return CliRunner().invoke(main, ["-q", "run", "--source", server.base_url, "--out", str(out), "--config",
                                     str(write_config(out.parent / f"{out.name}.yaml"))],
                              catch_exceptions=False, env=environment)


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
def test_a_run_obtains_its_tokens_with_the_client_secret(server: ServerHandle, tmp_path: Path, method: str) -> None:
    before = server.stats()["tokens_issued"]
    result = run(server, tmp_path / "out", env(server, FHIR_ADAPTER_OAUTH_AUTH_METHOD=method))
    assert result.exit_code in (0, 2), result.stderr
    assert report(tmp_path / "out")["summary"]["subjects"] == SUBJECTS
    stats = server.stats()
    assert stats["token_auth"] == method and stats["tokens_issued"] == before + 1


def test_a_wrong_secret_is_authentication_failed_naming_the_endpoint_and_client_never_the_secret(
        server: ServerHandle, tmp_path: Path) -> None:
    result = run(server, tmp_path / "out", env(server, FHIR_ADAPTER_OAUTH_CLIENT_SECRET="not-the-secret"))
    assert result.exit_code == 4
    [line] = [x for x in result.stderr.splitlines() if x.strip()]
    assert line.startswith("error: authentication failed: ") and "invalid_client" in line
    assert f"{server.root_url}/auth/token" in line and repr(CLIENT_ID) in line
    assert "not-the-secret" not in result.output + result.stderr


def test_no_credentials_against_a_server_that_requires_them_names_every_way_to_give_them(
        server: ServerHandle, tmp_path: Path) -> None:
    result = run(server, tmp_path / "out", {})
    assert result.exit_code == 4
    assert "FHIR_ADAPTER_SMART_*" in result.stderr and "FHIR_ADAPTER_OAUTH_*" in result.stderr
