"""Credentials never travel over plain http except to this machine; TLS verification is off only through a
loudly named setting, and only for a server on this machine."""

from __future__ import annotations

import datetime
import http.server
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from fhir_adapter.cli.commands import main
from fhir_adapter.fhir import ClientSettings, FhirClient, FhirError
from fhir_adapter.fhir.auth import BearerToken


@pytest.mark.parametrize("url", ["http://ehr.example.org/fhir", "http://10.0.0.5:8080/fhir",
                                 "http://localhost.evil.example/fhir"])
async def test_a_token_is_never_sent_over_plain_http_to_another_host(url: str) -> None:
    with pytest.raises(FhirError, match="refusing to send credentials over plain http"):
        FhirClient(url, auth=BearerToken("secret-token"))


@pytest.mark.parametrize("url", ["http://localhost:8080/fhir", "http://127.0.0.1/fhir", "http://[::1]:9/fhir",
                                 "https://ehr.example.org/fhir"])
async def test_loopback_http_and_https_take_a_token(url: str) -> None:
    async with FhirClient(url, auth=BearerToken("secret-token")):
        pass


async def test_plain_http_without_credentials_is_allowed() -> None:
    async with FhirClient("http://ehr.example.org/fhir"):
        pass


def test_verify_false_is_not_accepted() -> None:
    with pytest.raises(ValidationError, match="insecure_skip_tls_verify"):
        ClientSettings(verify=False)


async def test_skipping_verification_is_refused_for_another_host() -> None:
    settings = ClientSettings(insecure_skip_tls_verify=True)
    with pytest.raises(FhirError, match="CA bundle"):
        FhirClient("https://ehr.example.org/fhir", settings=settings)


async def test_skipping_verification_for_loopback_is_loud(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        async with FhirClient("https://localhost:8443/fhir", settings=ClientSettings(insecure_skip_tls_verify=True)):
            pass
    assert "INSECURE" in caplog.text


async def test_a_ca_bundle_serves_another_host(tmp_path: Path) -> None:
    import certifi

    ca = tmp_path / "ca.pem"
    ca.write_bytes(Path(certifi.where()).read_bytes())
    settings = ClientSettings(verify=ca, insecure_skip_tls_verify=True)  # the CA bundle wins: verification on
    async with FhirClient("https://ehr.example.org/fhir", settings=settings):
        pass


def test_cli_refuses_a_token_over_plain_http(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["run", "--source", "http://ehr.example.org/fhir", "--out", str(tmp_path / "o")],
                                env={"FHIR_ADAPTER_BEARER_TOKEN": "secret-token"})
    assert result.exit_code == 1
    assert "plain http" in result.output and "secret-token" not in result.output
    assert not (tmp_path / "o" / "run-report.json").exists()


def test_cli_refuses_verify_false_in_the_config(tmp_path: Path) -> None:
    config = tmp_path / "adapter.yaml"
    config.write_text("client:\n  verify: false\n")
    result = CliRunner().invoke(main, ["run", "--source", "https://ehr.example.org/fhir", "--out", str(tmp_path / "o"),
                                       "--config", str(config)])
    assert result.exit_code == 1 and "insecure_skip_tls_verify" in result.output


@pytest.mark.parametrize("url", ["http://alice:S3cretPW@127.0.0.1:9/fhir", "https://alice:S3cretPW@ehr.example.org/fhir"])
def test_a_password_in_the_source_url_is_refused_and_never_shown(url: str, tmp_path: Path) -> None:
    """httpx would send a URL's user:password as Basic auth (to any host, over plain http too), and it would
    stay in the run report: credentials are never taken from a URL."""
    with pytest.raises(ValueError, match="user name or password"):
        FhirClient(url)
    result = CliRunner().invoke(main, ["run", "--source", url, "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "carries a user name or password" in result.output
    assert "S3cretPW" not in result.output and not (tmp_path / "o").exists()


class _Counting(http.server.BaseHTTPRequestHandler):
    """Answers every GET with a CapabilityStatement and counts it (with its Authorization header)."""
    seen: list[str | None]

    def do_GET(self) -> None:
        self.seen.append(self.headers.get("Authorization"))
        body = b'{"resourceType": "CapabilityStatement", "status": "active"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/fhir+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def listener() -> Iterator[tuple[int, list[str | None]]]:
    seen: list[str | None] = []
    server = http.server.HTTPServer(("127.0.0.1", 0), type("H", (_Counting,), {"seen": seen}))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_port, seen
    server.shutdown()
    server.server_close()


async def test_a_server_on_this_machine_is_reached_directly_never_through_a_proxy(
        listener: tuple[int, list[str | None]], monkeypatch: pytest.MonkeyPatch) -> None:
    """The plain-http exception for this machine holds only if the request stays on it: a proxy the environment
    names (HTTP_PROXY on a hospital workstation, a tunnel to the EHR on localhost) must not receive the token."""
    server_port, at_server = listener
    proxy_seen: list[str | None] = []
    proxy = http.server.HTTPServer(("127.0.0.1", 0), type("P", (_Counting,), {"seen": proxy_seen}))
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        for var in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.setenv(var, f"http://127.0.0.1:{proxy.server_port}")
        for var in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(var, raising=False)
        for host in ("localhost", "127.0.0.1"):
            async with FhirClient(f"http://{host}:{server_port}/fhir", auth=BearerToken("tok-1")) as client:
                await client.capabilities()
    finally:
        proxy.shutdown()
        proxy.server_close()
    assert proxy_seen == [] and at_server == ["Bearer tok-1", "Bearer tok-1"]


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate no CA signed (for localhost and 127.0.0.2) and its key, as PEM files."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.2"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


async def test_skipping_verification_for_this_machine_never_skips_it_for_another_host(tmp_path: Path) -> None:
    """insecure_skip_tls_verify is accepted for a server on this machine only, so only requests to this machine
    skip the certificate check: a Bulk file or token endpoint elsewhere (here 127.0.0.2, which the adapter does
    not count as this machine) is verified, and a certificate no CA signed is refused there."""
    import ssl

    cert, key = _self_signed(tmp_path)
    seen: list[str | None] = []
    server = http.server.HTTPServer(("0.0.0.0", 0), type("H", (_Counting,), {"seen": seen}))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_port
    try:
        settings = ClientSettings(insecure_skip_tls_verify=True)
        async with FhirClient(f"https://localhost:{port}/fhir", auth=BearerToken("tok-2"), settings=settings) as c:
            await c.capabilities()
            with pytest.raises(FhirError, match=r"127\.0\.0\.2"):
                await c.exchange("GET", f"https://127.0.0.2:{port}/files/1.ndjson")
    finally:
        server.shutdown()
        server.server_close()
    assert seen == ["Bearer tok-2"]
