#!/usr/bin/env python3
"""Build the benchmark's JWKS and JWTs from PEM keys made by openssl.

Standard library only. Signatures come from the system's libcrypto (OpenSSL) through ctypes, with
the key loaded once per process, so tens of thousands of tokens take seconds, not one `openssl`
process each.

    jwt.py setup --dir DIR --iss ISS --aud AUD
    jwt.py pool  --dir DIR --iss ISS --aud AUD --count N [--algs rs256,es256]

Both expect DIR/keys/rs256.key.pem and DIR/keys/es256.key.pem (private keys). `setup` writes:

    DIR/keys/{rs256,es256}.pub.pem   public keys (PEM, for HAProxy's jwt_verify)
    DIR/jwks.json                    both public keys as a JWK Set (for hfgate)
    DIR/tokens/<alg>-<kind>.jwt      one token per algorithm and kind:
        valid      the token every fixed-token request carries (groups = ["bench"])
        nobody     the valid token's claims with groups = ["nobody"] (no rule permits it)
        expired    exp one hour in the past
        wrong-aud  aud is not the configured audience
        wrong-iss  iss is not the configured issuer
        tampered   the valid token with one signature byte changed

`pool` writes, per algorithm, N distinct valid tokens for the distinct-token targets:

    DIR/tokens/<alg>-distinct.txt        one token a line; token n has sub "bench-<alg>-<n>" and
                                         jti "<alg>-<n>", the valid token's other claims
    DIR/tokens/<alg>-distinct-check.jwt  token N, made the same way and not in the file, for the
                                         checks before the load (so the checks use no pool token)

The pool is signed by one process per CPU this script may run on.
"""

import argparse
import base64
import ctypes
import ctypes.util
import hashlib
import json
import multiprocessing
import os
import subprocess
import sys
import time

ALGS = {
    # alg: (key file stem, kid)
    "RS256": ("rs256", "bench-rs256"),
    "ES256": ("es256", "bench-es256"),
}
STEMS = {stem: alg for alg, (stem, _) in ALGS.items()}


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


# --- signing through libcrypto: EVP_PKEY_sign over a SHA-256 digest, one context per key ---

class Signer:
    """A private key loaded once; `sign(data)` is the JWS signature of SHA-256(data)."""

    def __init__(self, alg: str, key_path: str):
        name = ctypes.util.find_library("crypto") or "libcrypto.so.3"
        try:
            lib = ctypes.CDLL(name)
        except OSError as err:
            sys.exit(f"cannot load libcrypto ({name}): {err}")
        vp = ctypes.c_void_p
        lib.BIO_new_mem_buf.restype = vp
        lib.BIO_new_mem_buf.argtypes = [ctypes.c_char_p, ctypes.c_int]
        lib.BIO_free.argtypes = [vp]
        lib.PEM_read_bio_PrivateKey.restype = vp
        lib.PEM_read_bio_PrivateKey.argtypes = [vp, vp, vp, vp]
        lib.EVP_sha256.restype = vp
        lib.EVP_PKEY_CTX_new.restype = vp
        lib.EVP_PKEY_CTX_new.argtypes = [vp, vp]
        lib.EVP_PKEY_sign_init.argtypes = [vp]
        lib.EVP_PKEY_CTX_set_signature_md.argtypes = [vp, vp]
        lib.EVP_PKEY_sign.argtypes = [vp, ctypes.c_char_p, ctypes.POINTER(ctypes.c_size_t),
                                      ctypes.c_char_p, ctypes.c_size_t]
        with open(key_path, "rb") as f:
            pem = f.read()
        bio = lib.BIO_new_mem_buf(pem, len(pem))
        pkey = lib.PEM_read_bio_PrivateKey(bio, None, None, None)
        lib.BIO_free(bio)
        if not pkey:
            sys.exit(f"libcrypto cannot read the private key {key_path}")
        # One context, initialized once: PKCS#1 v1.5 (RSA's default) or ECDSA over a SHA-256 digest.
        ctx = lib.EVP_PKEY_CTX_new(pkey, None)
        if not ctx or lib.EVP_PKEY_sign_init(ctx) != 1 \
                or lib.EVP_PKEY_CTX_set_signature_md(ctx, lib.EVP_sha256()) != 1:
            sys.exit(f"libcrypto cannot sign with {key_path}")
        self.alg, self.lib, self.ctx = alg, lib, ctx
        self.buf = ctypes.create_string_buffer(1024)
        self.len = ctypes.c_size_t()

    def sign(self, data: bytes) -> bytes:
        digest = hashlib.sha256(data).digest()
        self.len.value = len(self.buf)
        if self.lib.EVP_PKEY_sign(self.ctx, self.buf, ctypes.byref(self.len), digest, len(digest)) != 1:
            sys.exit(f"libcrypto failed to sign ({self.alg})")
        sig = self.buf.raw[:self.len.value]
        return ecdsa_der_to_raw(sig) if self.alg == "ES256" else sig


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


def compact(obj: dict) -> str:
    return b64url(json.dumps(obj, separators=(",", ":")).encode())


def mint(signer: Signer, kid: str, claims: dict) -> str:
    signing_input = compact({"alg": signer.alg, "typ": "JWT", "kid": kid}) + "." + compact(claims)
    return signing_input + "." + b64url(signer.sign(signing_input.encode()))


def tamper(token: str) -> str:
    """Flip one bit in the middle of the signature (re-encoded, so the token stays well-formed)."""
    head, body, sig = token.split(".")
    raw = bytearray(b64url_decode(sig))
    raw[len(raw) // 2] ^= 0x01
    return f"{head}.{body}.{b64url(bytes(raw))}"


def base_claims(iss: str, aud: str, now: int, lifetime: int) -> dict:
    # groups: what hfgate's rules match (its issuer's groups_claim, default "groups"); HAProxy
    # ignores it. aud is a string: HAProxy 2.6's jwt_payload_query cannot match inside an array.
    return {"iss": iss, "sub": "bench-user", "aud": aud, "iat": now, "exp": now + lifetime,
            "groups": ["bench"]}


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

        signer = Signer(alg, key_path)
        base = base_claims(iss, aud, now, lifetime)
        variants = {
            "valid": base,
            "nobody": dict(base, groups=["nobody"]),
            "expired": dict(base, iat=now - 7200, exp=now - 3600),
            "wrong-aud": dict(base, aud="someone-else"),
            "wrong-iss": dict(base, iss="https://not-the-issuer.example"),
        }
        for kind, claims in variants.items():
            token = mint(signer, kid, claims)
            with open(os.path.join(tokens, f"{stem}-{kind}.jwt"), "w") as f:
                f.write(token)
            if kind == "valid":
                with open(os.path.join(tokens, f"{stem}-tampered.jwt"), "w") as f:
                    f.write(tamper(token))
    with open(os.path.join(directory, "jwks.json"), "w") as f:
        json.dump(jwks, f, indent=2)
        f.write("\n")


# --- the distinct-token pool, signed in parallel (one worker process per CPU) ---

_worker = {}


def _pool_init(alg: str, key_path: str, kid: str, base: dict) -> None:
    stem = ALGS[alg][0]
    # The header is the same for every token: encode it once.
    header = compact({"alg": alg, "typ": "JWT", "kid": kid})
    _worker.update(signer=Signer(alg, key_path), header=header, base=base, stem=stem)


def _pool_chunk(bounds):
    start, end = bounds
    signer, header, base, stem = _worker["signer"], _worker["header"], _worker["base"], _worker["stem"]
    out = []
    for n in range(start, end):
        claims = dict(base, sub=f"bench-{stem}-{n}", jti=f"{stem}-{n}")
        signing_input = header + "." + compact(claims)
        out.append(signing_input + "." + b64url(signer.sign(signing_input.encode())))
    return out


def pool(directory: str, iss: str, aud: str, lifetime: int, count: int, stems: list) -> None:
    tokens = os.path.join(directory, "tokens")
    os.makedirs(tokens, exist_ok=True)
    now = int(time.time())
    base = base_claims(iss, aud, now, lifetime)
    workers = max(1, len(os.sched_getaffinity(0)))
    chunk = 2000
    for stem in stems:
        alg = STEMS[stem]
        kid = ALGS[alg][1]
        key_path = os.path.join(directory, "keys", f"{stem}.key.pem")
        started = time.monotonic()
        # count + 1 tokens: the last one is the check token, kept out of the file.
        bounds = [(i, min(i + chunk, count + 1)) for i in range(0, count + 1, chunk)]
        with multiprocessing.Pool(workers, _pool_init, (alg, key_path, kid, base)) as procs, \
                open(os.path.join(tokens, f"{stem}-distinct.txt"), "w") as out:
            made = 0
            for lines in procs.imap(_pool_chunk, bounds):
                for token in lines:
                    if made < count:
                        out.write(token)
                        out.write("\n")
                    else:
                        with open(os.path.join(tokens, f"{stem}-distinct-check.jwt"), "w") as f:
                            f.write(token)
                    made += 1
        print(f"{count} distinct {alg} tokens in {time.monotonic() - started:.1f} s "
              f"({workers} processes)", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("setup", "write public keys, jwks.json and the fixed tokens"),
                       ("pool", "write N distinct valid tokens per algorithm")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--dir", required=True)
        p.add_argument("--iss", required=True)
        p.add_argument("--aud", required=True)
        p.add_argument("--lifetime", type=int, default=7200, help="seconds until exp (default 2 h)")
        if name == "pool":
            p.add_argument("--count", type=int, required=True)
            p.add_argument("--algs", default="rs256,es256", help="comma-separated: rs256, es256")
    args = parser.parse_args()
    if args.command == "setup":
        setup(args.dir, args.iss, args.aud, args.lifetime)
    else:
        stems = [s for s in args.algs.split(",") if s]
        unknown = [s for s in stems if s not in STEMS]
        if unknown or not stems or args.count < 1:
            parser.error(f"--algs takes rs256 and/or es256, --count a positive number (got {args.algs!r}, {args.count})")
        pool(args.dir, args.iss, args.aud, args.lifetime, args.count, stems)


if __name__ == "__main__":
    main()
