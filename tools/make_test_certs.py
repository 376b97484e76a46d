"""Make a throwaway CA plus server and client certificates for TLS and mutual-TLS testing.

Usage: python tools/make_test_certs.py OUT_DIR [--host 127.0.0.1 --host localhost]
Writes ca.pem, server.pem, server.key, client.pem, client.key. Not for production use.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
from pathlib import Path


def _key():
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make_certs(out_dir: str | Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> dict[str, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    valid = (now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=2))

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    ca_key = _key()
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("bertrec test CA"))
        .issuer_name(name("bertrec test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid[0])
        .not_valid_after(valid[1])
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(common: str, usage, san: list | None):
        key = _key()
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(common))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(valid[0])
            .not_valid_after(valid[1])
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return key, builder.sign(ca_key, hashes.SHA256())

    san = []
    for host in hosts:
        try:
            san.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            san.append(x509.DNSName(host))
    server_key, server_cert = leaf("bertrec server", ExtendedKeyUsageOID.SERVER_AUTH, san)
    client_key, client_cert = leaf("bertrec client", ExtendedKeyUsageOID.CLIENT_AUTH, None)
    files = {
        "ca": (out / "ca.pem", ca.public_bytes(serialization.Encoding.PEM)),
        "server_cert": (out / "server.pem", server_cert.public_bytes(serialization.Encoding.PEM)),
        "server_key": (out / "server.key", _pem_key(server_key)),
        "client_cert": (out / "client.pem", client_cert.public_bytes(serialization.Encoding.PEM)),
        "client_key": (out / "client.key", _pem_key(client_key)),
    }
    for path, data in files.values():
        path.write_bytes(data)
    return {k: p for k, (p, _) in files.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir")
    parser.add_argument("--host", action="append", help="server name or IP (repeatable)")
    args = parser.parse_args()
    for role, path in make_certs(args.out_dir, tuple(args.host or ("127.0.0.1", "localhost"))).items():
        print(f"{role}: {path}")


if __name__ == "__main__":
    main()
