"""TLS, mutual TLS and bearer tokens from Python: the client and the Prefect block against
a real server whose certificates this test makes (a CA, a server leaf for 127.0.0.1, a
client leaf)."""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from conftest import Server, base_config
from resultstore import ResultStoreClient
from resultstore.errors import PermissionDenied, ResultStoreError, Unauthenticated, Unavailable

WRITER = "py-writer-token"
READER = "py-reader-token"


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> tuple[Path, Path]:
    path.with_suffix(".crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    path.with_suffix(".key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return path.with_suffix(".crt"), path.with_suffix(".key")


def make_pki(root: Path) -> dict[str, Path]:
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("py test CA"))
        .issuer_name(_name("py test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(cn: str, sans: list, usage) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return builder.sign(ca_key, hashes.SHA256()), key

    (root / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    server_crt, server_key = _write(
        root / "server",
        *leaf("server", [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
              ExtendedKeyUsageOID.SERVER_AUTH),
    )
    client_crt, client_key = _write(root / "client", *leaf("client", [], ExtendedKeyUsageOID.CLIENT_AUTH))
    return {"ca": root / "ca.crt", "server_crt": server_crt, "server_key": server_key,
            "client_crt": client_crt, "client_key": client_key}


@pytest.fixture
def secure_server(tmp_path):
    pki = make_pki(tmp_path)
    config = base_config(tmp_path) + f"""
[tls]
cert = "{pki['server_crt']}"
key = "{pki['server_key']}"
client_ca = "{pki['ca']}"
[auth]
[[auth.tokens]]
name = "writer"
sha256 = "{hashlib.sha256(WRITER.encode()).hexdigest()}"
scopes = {{ "*" = ["read", "write", "delete"] }}
[[auth.tokens]]
name = "reader"
sha256 = "{hashlib.sha256(READER.encode()).hexdigest()}"
scopes = {{ "*" = ["read"] }}
"""
    server = Server(tmp_path, config)
    yield server, pki
    server.stop()


def test_tls_mutual_tls_and_tokens(secure_server):
    server, pki = secure_server
    url = f"https://{server.address}"
    tls = dict(tls_ca=pki["ca"], tls_cert=pki["client_crt"], tls_key=pki["client_key"], timeout=10)

    with ResultStoreClient(url, token=WRITER, **tls) as writer:
        ref = writer.put({"a": [1, 2]}, serializer="json", key="secure/one")
        assert ref.get() == {"a": [1, 2]}
        # Streams carry the token and the certificate too.
        streamed = writer.put_stream([b'["x", ', b'"y"]'], serializer="json", key="secure/two")
        assert b"".join(writer.get_stream(streamed)) == b'["x", "y"]'

    with ResultStoreClient(url, token=READER, **tls) as reader:
        assert reader.get(ref) == {"a": [1, 2]}
        with pytest.raises(PermissionDenied, match="token `reader` may not write in block `local-file-system/default`"):
            reader.put([3], serializer="json")

    with ResultStoreClient(url, **tls) as anonymous:
        with pytest.raises(Unauthenticated):
            anonymous.get(ref)

    with ResultStoreClient(url, token="wrong", **tls) as stranger:
        with pytest.raises(Unauthenticated):
            stranger.get(ref)

    # Without a client certificate the handshake fails: no call gets through.
    with ResultStoreClient(url, token=WRITER, tls_ca=pki["ca"], timeout=10) as no_cert:
        with pytest.raises(ResultStoreError) as err:
            no_cert.get(ref)
        assert isinstance(err.value, Unavailable), err.value

    # Plaintext to the TLS port fails too.
    with ResultStoreClient(f"http://{server.address}", token=WRITER, timeout=10) as plain:
        with pytest.raises(Unavailable):
            plain.get(ref)


def test_the_prefect_block_takes_tls_and_a_token(secure_server):
    from resultstore.prefect import ResultStoreStorage

    server, pki = secure_server
    block = ResultStoreStorage(
        url=f"https://{server.address}",
        token=WRITER,
        tls_ca=str(pki["ca"]),
        tls_cert=str(pki["client_crt"]),
        tls_key=str(pki["client_key"]),
    )
    block.write_path("prefect/object", b"bare bytes from a flow")
    assert block.read_path("prefect/object") == b"bare bytes from a flow"
    assert "py-writer-token" not in repr(block)


def test_the_http_api_speaks_the_same_tls_and_tokens(secure_server):
    """HTTP/1.1 over the same TLS listener (ALPN http/1.1), with the same client
    certificate rule and the same tokens."""
    import ssl

    import httpx

    server, pki = secure_server
    context = ssl.create_default_context(cafile=str(pki["ca"]))
    context.load_cert_chain(str(pki["client_crt"]), str(pki["client_key"]))
    base = f"https://{server.address}/v1/blocks/local-file-system/default/results"
    with httpx.Client(verify=context, timeout=10) as http:
        put = http.put(f"{base}/tls/one", json=[1], headers={"Authorization": f"Bearer {WRITER}"})
        assert put.status_code == 200, put.text
        r = http.get(f"{base}/tls/one", headers={"Authorization": f"Bearer {READER}"})
        assert r.status_code == 200 and r.json() == [1]
        assert r.http_version == "HTTP/1.1"
        denied = http.put(f"{base}/tls/two", json=[2], headers={"Authorization": f"Bearer {READER}"})
        assert denied.status_code == 403 and denied.json()["error"]["code"] == "PERMISSION_DENIED"
        assert http.get(f"{base}/tls/one").status_code == 401
    # Without a client certificate the handshake fails.
    bare = ssl.create_default_context(cafile=str(pki["ca"]))
    with httpx.Client(verify=bare, timeout=10) as http:
        with pytest.raises(httpx.HTTPError):
            http.get(f"{base}/tls/one", headers={"Authorization": f"Bearer {READER}"})
