#!/usr/bin/env python3
"""Build the benchmark's JWKS and JWTs from PEM keys made by openssl.

Standard library only; signatures come from `openssl dgst -sha256 -sign`.

    jwt.py setup --dir DIR --iss ISS --aud AUD

expects DIR/keys/rs256.key.pem and DIR/keys/es256.key.pem (private keys) and
writes:

    DIR/keys/{rs256,es256}.pub.pem   public keys (PEM, for HAProxy's jwt_verify)
    DIR/jwks.json                    both public keys as a JWK Set (for hfgate)
    DIR/tokens/<alg>-<kind>.jwt      one token per algorithm and kind:
        valid      the token every benchmark request carries (groups = ["bench"])
        nobody     the valid token's claims with groups = ["nobody"] (no rule permits it)
        expired    exp one hour in the past
        wrong-aud  aud is not the configured audience
        wrong-iss  iss is not the configured issuer
        tampered   the valid token with one signature byte changed
"""

import argparse
import base64
import json
import os
import subprocess
import sys
import time

ALGS = {
    # alg: (key file stem, kid)
    "RS256": ("rs256", "bench-rs256"),
    "ES256": ("es256", "bench-es256"),
}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def openssl(*args: str, stdin: bytes = b"") -> bytes:
    proc = subprocess.run(
        ["openssl", *args], input=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    if proc.returncode != 0:
        sys.exit(f"openssl {' '.join(args)} failed: {proc.stderr.decode(errors='replace')}")
    return proc.stdout


# --- a minimal DER reader: enough for SubjectPublicKeyInfo and ECDSA-Sig-Value ---

def der_read(buf: bytes, pos: int):
    """Return (tag, content, next_pos) of the TLV starting at pos."""
    tag = buf[pos]
    length = buf[pos + 1]
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        length = int.from_bytes(buf[pos:pos + count], "big")
        pos += count
    return tag, buf[pos:pos + length], pos + length


def der_children(content: bytes):
    pos = 0
    while pos < len(content):
        tag, value, pos = der_read(content, pos)
        yield tag, value


def spki_key_bits(der: bytes) -> bytes:
    """The subjectPublicKey BIT STRING of a SubjectPublicKeyInfo, without the unused-bits byte."""
    tag, spki, _ = der_read(der, 0)
    assert tag == 0x30, "SubjectPublicKeyInfo is not a SEQUENCE"
    parts = list(der_children(spki))
    tag, bits = parts[1]
    assert tag == 0x03 and bits[0] == 0, "subjectPublicKey is not a BIT STRING"
    return bits[1:]


def uint(data: bytes) -> bytes:
    """Big-endian unsigned integer bytes without DER's sign-padding zeros."""
    return data.lstrip(b"\x00") or b"\x00"


def rsa_jwk(pub_der: bytes, kid: str) -> dict:
    tag, seq, _ = der_read(spki_key_bits(pub_der), 0)
    assert tag == 0x30, "RSAPublicKey is not a SEQUENCE"
    (_, n), (_, e) = list(der_children(seq))
    return {"kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig",
            "n": b64url(uint(n)), "e": b64url(uint(e))}


def ec_jwk(pub_der: bytes, kid: str) -> dict:
    point = spki_key_bits(pub_der)
    assert len(point) == 65 and point[0] == 4, "expected an uncompressed P-256 point"
    return {"kty": "EC", "kid": kid, "alg": "ES256", "use": "sig", "crv": "P-256",
            "x": b64url(point[1:33]), "y": b64url(point[33:65])}


def ecdsa_der_to_raw(sig: bytes, size: int = 32) -> bytes:
    """ECDSA-Sig-Value ::= SEQUENCE { r INTEGER, s INTEGER } -> r || s, fixed width (RFC 7518 3.4)."""
    tag, seq, _ = der_read(sig, 0)
    assert tag == 0x30, "ECDSA signature is not a SEQUENCE"
    out = b""
    for tag, value in der_children(seq):
        assert tag == 0x02, "ECDSA signature part is not an INTEGER"
        value = uint(value)
        assert len(value) <= size, "ECDSA integer too large for the curve"
        out += value.rjust(size, b"\x00")
    assert len(out) == 2 * size
    return out


def sign(alg: str, key_path: str, signing_input: bytes) -> bytes:
    sig = openssl("dgst", "-sha256", "-sign", key_path, stdin=signing_input)
    return ecdsa_der_to_raw(sig) if alg == "ES256" else sig


def mint(alg: str, kid: str, key_path: str, claims: dict) -> str:
    header = {"alg": alg, "typ": "JWT", "kid": kid}
    signing_input = (b64url(json.dumps(header, separators=(",", ":")).encode()) + "."
                     + b64url(json.dumps(claims, separators=(",", ":")).encode()))
    return signing_input + "." + b64url(sign(alg, key_path, signing_input.encode()))


def tamper(token: str) -> str:
    """Flip one bit in the middle of the signature (re-encoded, so the token stays well-formed)."""
    head, body, sig = token.split(".")
    raw = bytearray(b64url_decode(sig))
    raw[len(raw) // 2] ^= 0x01
    return f"{head}.{body}.{b64url(bytes(raw))}"


def setup(directory: str, iss: str, aud: str, lifetime: int) -> None:
    keys = os.path.join(directory, "keys")
    tokens = os.path.join(directory, "tokens")
    os.makedirs(tokens, exist_ok=True)
    now = int(time.time())
    jwks = {"keys": []}
    for alg, (stem, kid) in ALGS.items():
        key_path = os.path.join(keys, f"{stem}.key.pem")
        pub_pem = openssl("pkey", "-in", key_path, "-pubout")
        with open(os.path.join(keys, f"{stem}.pub.pem"), "wb") as f:
            f.write(pub_pem)
        pub_der = openssl("pkey", "-pubin", "-outform", "DER", stdin=pub_pem)
        jwks["keys"].append(rsa_jwk(pub_der, kid) if alg == "RS256" else ec_jwk(pub_der, kid))

        # groups: what hfgate's rules match (its issuer's groups_claim, default "groups");
        # HAProxy ignores it.
        base = {"iss": iss, "sub": "bench-user", "aud": aud, "iat": now, "exp": now + lifetime,
                "groups": ["bench"]}
        variants = {
            "valid": base,
            "nobody": dict(base, groups=["nobody"]),
            "expired": dict(base, iat=now - 7200, exp=now - 3600),
            "wrong-aud": dict(base, aud="someone-else"),
            "wrong-iss": dict(base, iss="https://not-the-issuer.example"),
        }
        for kind, claims in variants.items():
            token = mint(alg, kid, key_path, claims)
            with open(os.path.join(tokens, f"{stem}-{kind}.jwt"), "w") as f:
                f.write(token)
            if kind == "valid":
                with open(os.path.join(tokens, f"{stem}-tampered.jwt"), "w") as f:
                    f.write(tamper(token))
    with open(os.path.join(directory, "jwks.json"), "w") as f:
        json.dump(jwks, f, indent=2)
        f.write("\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("setup", help="write public keys, jwks.json and tokens")
    p.add_argument("--dir", required=True)
    p.add_argument("--iss", required=True)
    p.add_argument("--aud", required=True)
    p.add_argument("--lifetime", type=int, default=7200, help="seconds until exp (default 2 h)")
    args = parser.parse_args()
    if args.command == "setup":
        setup(args.dir, args.iss, args.aud, args.lifetime)


if __name__ == "__main__":
    main()
