"""The SASL mechanism plugins, each against an independent server side.

No SMTP here: each exchange is driven the way the core drives it
(``initial_response``, ``respond`` per 334 challenge, ``verify`` after 235)
against server logic written in this file (or scramp's server for SCRAM).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from collections.abc import Callable, Generator, Iterator
from dataclasses import replace

import pytest
from scramp import ScramException, ScramMechanism

from smtplug.errors import AuthenticationError
from smtplug.interfaces import SASLCredentials, SASLExchange, SASLMechanism, TLSInfo
from smtplug_plugins import sasl_login, sasl_oauth, sasl_puresasl, sasl_scram

PASSWORD = "s3cr3t-PW-xyzzy"
TOKEN = "ya29.TOKEN-secret_value~42"
SECRETS = (PASSWORD, TOKEN)

HOOKS = (sasl_puresasl, sasl_login, sasl_scram, sasl_oauth)


def all_mechanisms() -> dict[str, SASLMechanism]:
    found: dict[str, SASLMechanism] = {}
    for module in HOOKS:
        for mech in module.smtplug_register_sasl_mechanisms():
            assert mech.name not in found
            found[mech.name] = mech
    return found


MECHS = all_mechanisms()


def creds(**kw: object) -> SASLCredentials:
    base: dict[str, object] = {
        "username": "alice",
        "password": PASSWORD,
        "hostname": "mail.example.org",
        "port": 587,
    }
    base.update(kw)
    return SASLCredentials(**base)  # type: ignore[arg-type]


def tls(version: str = "TLSv1.3", **bindings: bytes) -> TLSInfo:
    return TLSInfo(
        backend="test",
        version=version,
        cipher="TLS_AES_256_GCM_SHA384",
        peer_certificate=None,
        verified=True,
        channel_bindings={k.replace("_", "-"): v for k, v in bindings.items()},
    )


def start(name: str, credentials: SASLCredentials | None = None) -> SASLExchange:
    return MECHS[name].start(credentials or creds())


# ------------------------------------------------------------ registration


def test_names_strengths_and_exposure() -> None:
    assert {n: m.strength for n, m in MECHS.items()} == {
        "SCRAM-SHA-256-PLUS": 100,
        "SCRAM-SHA-256": 90,
        "SCRAM-SHA-1-PLUS": 80,
        "SCRAM-SHA-1": 70,
        "DIGEST-MD5": 50,
        "CRAM-MD5": 40,
        "OAUTHBEARER": 35,
        "XOAUTH2": 30,
        "LOGIN": 20,
        "PLAIN": 10,
        "EXTERNAL": 5,
        "ANONYMOUS": 0,
    }
    exposing = {n for n, m in MECHS.items() if m.exposes_password}
    assert exposing == {"PLAIN", "LOGIN", "XOAUTH2", "OAUTHBEARER"}
    for mech in MECHS.values():
        assert isinstance(mech, SASLMechanism)


def test_registered_through_entry_points() -> None:
    from importlib.metadata import entry_points

    names = {ep.name for ep in entry_points(group="smtplug")}
    assert {"sasl-puresasl", "sasl-login", "sasl-scram", "sasl-oauth"} <= names


# --------------------------------------------------------------- supported


PASSWORD_MECHS = ["PLAIN", "LOGIN", "CRAM-MD5", "DIGEST-MD5", "SCRAM-SHA-1", "SCRAM-SHA-256"]
PLUS_MECHS = ["SCRAM-SHA-1-PLUS", "SCRAM-SHA-256-PLUS"]


@pytest.mark.parametrize("name", PASSWORD_MECHS)
def test_password_mechanisms_need_a_password(name: str) -> None:
    assert MECHS[name].supported(creds())
    assert not MECHS[name].supported(creds(password=None))
    assert not MECHS[name].supported(creds(password=None, oauth_token=lambda: TOKEN))


@pytest.mark.parametrize("name", PLUS_MECHS)
def test_plus_needs_tls_and_a_usable_binding(name: str) -> None:
    mech = MECHS[name]
    assert not mech.supported(creds())
    assert not mech.supported(creds(tls=tls()))
    assert not mech.supported(creds(tls=tls("TLSv1.2", tls_server_end_point=b"x" * 32)))
    assert mech.supported(creds(tls=tls("TLSv1.2", tls_unique=b"u" * 12)))
    assert mech.supported(creds(tls=tls(tls_exporter=b"e" * 32)))
    assert not mech.supported(creds(password=None, tls=tls(tls_exporter=b"e" * 32)))


@pytest.mark.parametrize("name", ["EXTERNAL", "ANONYMOUS"])
def test_external_and_anonymous_always_supported(name: str) -> None:
    assert MECHS[name].supported(creds())
    assert MECHS[name].supported(creds(password=None))
    assert MECHS[name].supported(creds(password=None, authzid="bob"))


@pytest.mark.parametrize("name", ["XOAUTH2", "OAUTHBEARER"])
def test_oauth_needs_a_token_source(name: str) -> None:
    mech = MECHS[name]
    assert not mech.supported(creds(password=None))
    assert mech.supported(creds(password=None, oauth_token=lambda: TOKEN))
    assert mech.supported(creds(password=TOKEN))


def test_authzid_only_where_it_can_be_carried() -> None:
    with_authzid = creds(authzid="bob", oauth_token=lambda: TOKEN, tls=tls(tls_exporter=b"e" * 9))
    usable = {n for n, m in MECHS.items() if m.supported(with_authzid)}
    assert usable == {"PLAIN", "OAUTHBEARER", "EXTERNAL", "ANONYMOUS"}


# ------------------------------------------------------------------- PLAIN


def plain_server(message: bytes, password: str) -> tuple[str, str]:
    authzid, authcid, passwd = message.decode("utf-8").split("\0")
    if not hmac.compare_digest(passwd.encode(), password.encode()):
        raise AssertionError("server: bad password")
    return authzid, authcid


def test_plain_exact_bytes() -> None:
    ex = start("PLAIN")
    message = ex.initial_response()
    assert message == b"\0alice\0" + PASSWORD.encode()
    assert plain_server(message, PASSWORD) == ("", "alice")
    ex.verify()
    with_authzid = start("PLAIN", creds(authzid="bob", username="älice"))
    assert with_authzid.initial_response() == b"bob\0\xc3\xa4lice\0" + PASSWORD.encode()


def test_plain_wrong_password_detected_by_server() -> None:
    message = start("PLAIN", creds(password="wrong")).initial_response()
    assert message is not None
    with pytest.raises(AssertionError):
        plain_server(message, PASSWORD)


def test_plain_refuses_nul_and_extra_challenges() -> None:
    with pytest.raises(AuthenticationError) as info:
        start("PLAIN", creds(password="a\0b"))
    assert "a\0b" not in str(info.value)
    ex = start("PLAIN")
    ex.initial_response()
    with pytest.raises(AuthenticationError):
        ex.respond(b"")


# ------------------------------------------------------------------- LOGIN


def run_login(prompts: list[bytes], credentials: SASLCredentials | None = None) -> list[bytes]:
    ex = start("LOGIN", credentials)
    assert ex.initial_response() is None
    return [ex.respond(p) for p in prompts]


@pytest.mark.parametrize(
    "prompts",
    [
        [b"Username:", b"Password:"],
        [b"Password:", b"Username:"],  # answered in order all the same
        [b"Password:", b"Password:"],
        [b"Username:", b"Username:"],
        [b"username:", b"PASSWORD:"],
        [b"User Name", b"Password"],
        [b"", b"Password:"],
        [b"", b""],
        [b"Benutzername:", b"Passwort:"],
        [b"\xff\xfe garbage \x00", b"}{#"],
        [b"Mot de passe", b"Nom d'utilisateur"],
    ],
)
def test_login_answers_username_then_password_whatever_the_prompts(prompts: list[bytes]) -> None:
    # draft-murchison-sasl-login: the prompts are informational; answered in order.
    assert run_login(prompts) == [b"alice", PASSWORD.encode()]


@pytest.mark.parametrize("third", [b"Password:", b"Username:", b""])
def test_login_third_challenge_fails_the_exchange(third: bytes) -> None:
    ex = start("LOGIN")
    ex.respond(b"Password:")
    ex.respond(b"Username:")
    with pytest.raises(AuthenticationError, match="third") as info:
        ex.respond(third)
    assert PASSWORD not in str(info.value)


def test_login_wrong_password_detected_by_server() -> None:
    answers = run_login([b"Username:", b"Password:"], creds(password="wrong"))
    assert answers[1] != PASSWORD.encode()


# ---------------------------------------------------------------- CRAM-MD5


CRAM_CHALLENGE = b"<1896.697170952@postoffice.example.net>"


def cram_server_accepts(response: bytes, password: str) -> bool:
    user, _, digest = response.rpartition(b" ")
    expected = hmac.new(password.encode(), CRAM_CHALLENGE, hashlib.md5).hexdigest().encode()
    return user == b"alice" and hmac.compare_digest(digest, expected)


def test_cram_md5_success() -> None:
    ex = start("CRAM-MD5")
    assert ex.initial_response() is None
    response = ex.respond(CRAM_CHALLENGE)
    assert cram_server_accepts(response, PASSWORD)
    ex.verify()


def test_cram_md5_rfc2195_example() -> None:
    ex = start("CRAM-MD5", creds(username="tim", password="tanstaaftanstaaf"))
    answer = ex.respond(b"<1896.697170952@postoffice.reston.mci.net>")
    assert answer == b"tim b913a602c7eda7a495b4e6e7334d3890"


def test_cram_md5_wrong_password_and_bad_challenges() -> None:
    assert not cram_server_accepts(
        start("CRAM-MD5", creds(password="x")).respond(CRAM_CHALLENGE), PASSWORD
    )
    with pytest.raises(AuthenticationError):
        start("CRAM-MD5").respond(b"")
    ex = start("CRAM-MD5")
    ex.respond(CRAM_CHALLENGE)
    with pytest.raises(AuthenticationError):
        ex.respond(CRAM_CHALLENGE)


# -------------------------------------------------------------- DIGEST-MD5


def parse_digest(data: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    for m in re.finditer(r'\s*([A-Za-z-]+)=("(?:[^"\\]|\\.)*"|[^,]*)\s*(?:,|$)', data.decode()):
        value = m.group(2)
        if value.startswith('"'):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        out[m.group(1)] = value
    return out


class DigestServer:
    """RFC 2831 2.1.2.1 computed independently (qop=auth, no authzid)."""

    def __init__(self, password: str, *, realm: str | None = "example.org", utf8: bool = True):
        self.password = password
        self.realm = realm
        self.utf8 = utf8
        self.nonce = "OA6MG9tEQGm2hh"

    def challenge(self) -> bytes:
        parts = [f'realm="{self.realm}"'] if self.realm is not None else []
        parts += [f'nonce="{self.nonce}"', 'qop="auth"', "algorithm=md5-sess"]
        if self.utf8:
            parts.append("charset=utf-8")
        return ",".join(parts).encode()

    @staticmethod
    def _enc(text: str, utf8: bool) -> bytes:
        if utf8:
            try:
                return text.encode("iso-8859-1")
            except UnicodeEncodeError:
                return text.encode("utf-8")
        return text.encode("iso-8859-1")

    def _kd(self, fields: dict[str, str], a2: bytes, username: str) -> str:
        def hx(b: bytes) -> str:
            return hashlib.md5(b).hexdigest()

        utf8 = fields.get("charset") == "utf-8"
        realm = fields.get("realm", "").encode("utf-8")
        inner = hashlib.md5(
            self._enc(username, utf8) + b":" + realm + b":" + self._enc(self.password, utf8)
        ).digest()
        a1 = inner + f":{self.nonce}:{fields['cnonce']}".encode()
        tail = f"{self.nonce}:{fields['nc']}:{fields['cnonce']}:{fields['qop']}:{hx(a2)}"
        return hx(f"{hx(a1)}:{tail}".encode())

    def check(self, response: bytes, *, username: str = "alice") -> dict[str, str]:
        raw = response.decode("utf-8" if b"charset=utf-8" in response else "iso-8859-1")
        fields = parse_digest(raw.encode("utf-8"))
        assert fields["username"] == username
        assert fields["digest-uri"] == "smtp/mail.example.org"
        assert fields["qop"] == "auth"
        assert fields["nc"] == "00000001"
        assert fields["nonce"] == self.nonce
        a2 = b"AUTHENTICATE:" + fields["digest-uri"].encode()
        if not hmac.compare_digest(fields["response"], self._kd(fields, a2, username)):
            raise AssertionError("server: bad response")
        return fields

    def rspauth(self, fields: dict[str, str], username: str = "alice") -> bytes:
        a2 = b":" + fields["digest-uri"].encode()
        return f"rspauth={self._kd(fields, a2, username)}".encode()


def test_digest_md5_success_with_rspauth() -> None:
    server = DigestServer(PASSWORD)
    ex = start("DIGEST-MD5")
    assert ex.initial_response() is None
    response = ex.respond(server.challenge())
    fields = server.check(response)
    assert re.fullmatch(r"[0-9a-f]{32}", fields["cnonce"])  # not pure-sasl's random.random()
    assert fields["charset"] == "utf-8"
    assert ex.respond(server.rspauth(fields)) == b""
    ex.verify()


@pytest.mark.parametrize(
    ("realm", "utf8", "username"),
    [(None, True, "alice"), ("example.org", False, "älice"), ("example.org", True, "älice€")],
)
def test_digest_md5_realm_and_charset(realm: str | None, utf8: bool, username: str) -> None:
    server = DigestServer(PASSWORD + "ß", realm=realm, utf8=utf8)
    ex = start("DIGEST-MD5", creds(username=username, password=PASSWORD + "ß"))
    fields = server.check(ex.respond(server.challenge()), username=username)
    ex.respond(server.rspauth(fields, username))
    ex.verify()


def test_digest_md5_non_latin1_without_utf8_refused() -> None:
    server = DigestServer(PASSWORD, utf8=False)
    ex = start("DIGEST-MD5", creds(username="al€ce"))
    with pytest.raises(AuthenticationError):
        ex.respond(server.challenge())


def test_digest_md5_wrong_password_detected_by_server() -> None:
    server = DigestServer(PASSWORD)
    ex = start("DIGEST-MD5", creds(password="wrong"))
    with pytest.raises(AssertionError, match="bad response"):
        server.check(ex.respond(server.challenge()))


def test_digest_md5_wrong_rspauth_rejected() -> None:
    server = DigestServer(PASSWORD)
    ex = start("DIGEST-MD5")
    fields = server.check(ex.respond(server.challenge()))
    with pytest.raises(AuthenticationError, match="rspauth"):
        ex.respond(b"rspauth=" + b"0" * 32)
    with pytest.raises(AuthenticationError):
        ex.verify()
    # A server that does not know the password cannot make a valid rspauth.
    impostor = DigestServer("guess")
    ex2 = start("DIGEST-MD5")
    ex2.respond(server.challenge())
    with pytest.raises(AuthenticationError):
        ex2.respond(impostor.rspauth(fields))


def test_digest_md5_verify_without_rspauth_fails() -> None:
    server = DigestServer(PASSWORD)
    ex = start("DIGEST-MD5")
    ex.respond(server.challenge())
    with pytest.raises(AuthenticationError, match="rspauth"):
        ex.verify()


@pytest.mark.parametrize(
    "challenge",
    [
        b'realm="x",qop="auth",algorithm=md5-sess',  # no nonce
        b'nonce="n",qop="auth"',  # no algorithm
        b'nonce="n",qop="auth-conf",algorithm=md5-sess',  # no qop auth
        b"rspauth=00",  # rspauth first
        b"\xff\xfe=garbage",
    ],
)
def test_digest_md5_bad_challenges(challenge: bytes) -> None:
    with pytest.raises(AuthenticationError):
        start("DIGEST-MD5").respond(challenge)


# ------------------------------------------------------------------- SCRAM


def scramp_server(name: str, password: str, binding: tuple[str, bytes] | None = None):  # type: ignore[no-untyped-def]
    base = name.removesuffix("-PLUS")
    info = ScramMechanism(base).make_auth_info(password, iteration_count=4096)
    mech = ScramMechanism(name)
    return mech.make_server(lambda user: info if user == "alice" else None, channel_binding=binding)


def run_scram(ex: SASLExchange, server) -> None:  # type: ignore[no-untyped-def]
    first = ex.initial_response()
    assert first is not None
    server.set_client_first(first.decode())
    final = ex.respond(server.get_server_first().encode())
    server.set_client_final(final.decode())
    assert ex.respond(server.get_server_final().encode()) == b""
    ex.verify()


@pytest.mark.parametrize("name", ["SCRAM-SHA-1", "SCRAM-SHA-256"])
def test_scram_success_plain_link(name: str) -> None:
    ex = start(name)
    run_scram(ex, scramp_server(name, PASSWORD))


@pytest.mark.parametrize("name", ["SCRAM-SHA-1", "SCRAM-SHA-256"])
def test_scram_non_plus_on_tls_uses_n_flag(name: str) -> None:
    ex = start(name, creds(tls=tls("TLSv1.2", tls_unique=b"u" * 12)))
    first = ex.initial_response()
    assert first is not None and first.startswith(b"n,,n=alice,r=")
    server = scramp_server(name, PASSWORD)
    server.set_client_first(first.decode())
    final = ex.respond(server.get_server_first().encode())
    assert final.startswith(b"c=biws,")  # base64("n,,")
    server.set_client_final(final.decode())
    ex.respond(server.get_server_final().encode())
    ex.verify()


@pytest.mark.parametrize("name", ["SCRAM-SHA-1", "SCRAM-SHA-256"])
def test_scram_wrong_password_detected_by_server(name: str) -> None:
    ex = start(name, creds(password="wrong"))
    server = scramp_server(name, PASSWORD)
    first = ex.initial_response()
    assert first is not None
    server.set_client_first(first.decode())
    final = ex.respond(server.get_server_first().encode())
    with pytest.raises(ScramException):
        server.set_client_final(final.decode())
    # The server's e= answer fails the client too.
    with pytest.raises(AuthenticationError, match="invalid-proof"):
        ex.respond(server.get_server_final().encode())
    with pytest.raises(AuthenticationError):
        ex.verify()


@pytest.mark.parametrize("name", ["SCRAM-SHA-1", "SCRAM-SHA-256"])
def test_scram_tampered_server_signature(name: str) -> None:
    ex = start(name)
    server = scramp_server(name, PASSWORD)
    first = ex.initial_response()
    assert first is not None
    server.set_client_first(first.decode())
    final = ex.respond(server.get_server_first().encode())
    server.set_client_final(final.decode())
    good = base64.b64decode(server.get_server_final()[2:])
    bad = bytes([good[0] ^ 1]) + good[1:]
    with pytest.raises(AuthenticationError, match="prove"):
        ex.respond(b"v=" + base64.b64encode(bad))
    with pytest.raises(AuthenticationError):
        ex.verify()


def test_scram_verify_without_server_final_fails() -> None:
    ex = start("SCRAM-SHA-256")
    server = scramp_server("SCRAM-SHA-256", PASSWORD)
    first = ex.initial_response()
    assert first is not None
    server.set_client_first(first.decode())
    ex.respond(server.get_server_first().encode())
    with pytest.raises(AuthenticationError, match="server signature"):
        ex.verify()


@pytest.mark.parametrize(
    "server_first",
    [b"r=otherNonce,s=c2FsdA==,i=4096", b"garbage", b"\xff", b"e=other-error"],
)
def test_scram_bad_server_first(server_first: bytes) -> None:
    ex = start("SCRAM-SHA-256")
    ex.initial_response()
    with pytest.raises(AuthenticationError):
        ex.respond(server_first)


@pytest.mark.parametrize("name", PLUS_MECHS)
def test_scram_plus_tls_unique(name: str) -> None:
    data = bytes(range(12))
    ex = start(name, creds(tls=tls("TLSv1.2", tls_unique=data)))
    first = ex.initial_response()
    assert first is not None and first.startswith(b"p=tls-unique,,")
    server = scramp_server(name, PASSWORD, ("tls-unique", data))
    server.set_client_first(first.decode())
    final = ex.respond(server.get_server_first().encode())
    server.set_client_final(final.decode())
    ex.respond(server.get_server_final().encode())
    ex.verify()


def test_scram_plus_binding_mismatch_detected_by_server() -> None:
    ex = start("SCRAM-SHA-256-PLUS", creds(tls=tls("TLSv1.2", tls_unique=b"client-view!")))
    server = scramp_server("SCRAM-SHA-256-PLUS", PASSWORD, ("tls-unique", b"server-view!"))
    first = ex.initial_response()
    assert first is not None
    server.set_client_first(first.decode())
    final = ex.respond(server.get_server_first().encode())
    with pytest.raises(ScramException, match="channel bindings"):
        server.set_client_final(final.decode())


def _hm(hash_name: str, key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hash_name).digest()


def exporter_server(hash_name: str, password: str, cb_data: bytes) -> Generator[bytes, bytes, None]:
    """An RFC 5802 server written here (scramp refuses tls-exporter)."""
    client_first = (yield b"").decode()
    assert client_first.startswith("p=tls-exporter,,")
    header, bare = client_first[:16], client_first[16:]
    attrs = dict(a.split("=", 1) for a in bare.split(","))
    assert attrs["n"] == "alice"
    salt, iterations = b"NaCl-NaCl-NaCl", 4096
    salted = hashlib.pbkdf2_hmac(hash_name, password.encode(), salt, iterations)
    stored_key = hashlib.new(hash_name, _hm(hash_name, salted, b"Client Key")).digest()
    server_key = _hm(hash_name, salted, b"Server Key")
    nonce = attrs["r"] + "srvNonce"
    server_first = f"r={nonce},s={base64.b64encode(salt).decode()},i={iterations}"
    client_final = (yield server_first.encode()).decode()
    without_proof, _, proof_b64 = client_final.rpartition(",p=")
    fattrs = dict(a.split("=", 1) for a in without_proof.split(","))
    if base64.b64decode(fattrs["c"]) != header.encode() + cb_data:
        raise AssertionError("server: channel bindings differ")
    assert fattrs["r"] == nonce
    auth_msg = f"{bare},{server_first},{without_proof}".encode()
    signature = _hm(hash_name, stored_key, auth_msg)
    client_key = bytes(a ^ b for a, b in zip(base64.b64decode(proof_b64), signature, strict=True))
    if hashlib.new(hash_name, client_key).digest() != stored_key:
        raise AssertionError("server: bad proof")
    yield b"v=" + base64.b64encode(_hm(hash_name, server_key, auth_msg))


@pytest.mark.parametrize(
    ("name", "hash_name"), [("SCRAM-SHA-1-PLUS", "sha1"), ("SCRAM-SHA-256-PLUS", "sha256")]
)
def test_scram_plus_tls_exporter_preferred(name: str, hash_name: str) -> None:
    data = b"\x01" * 32
    credentials = creds(tls=tls(tls_exporter=data, tls_unique=b"unique-data!"))
    ex = start(name, credentials)
    server = exporter_server(hash_name, PASSWORD, data)
    next(server)
    first = ex.initial_response()
    assert first is not None
    final = ex.respond(server.send(first))
    ex.respond(server.send(final))
    ex.verify()


def test_scram_plus_tls_exporter_wrong_data_or_password() -> None:
    for password, data, message in [
        (PASSWORD, b"\x02" * 32, "bindings"),
        ("x", b"\x01" * 32, "proof"),
    ]:
        ex = start("SCRAM-SHA-256-PLUS", creds(password=password, tls=tls(tls_exporter=data)))
        server = exporter_server("sha256", PASSWORD, b"\x01" * 32)
        next(server)
        first = ex.initial_response()
        assert first is not None
        final = ex.respond(server.send(first))
        with pytest.raises(AssertionError, match=message):
            server.send(final)


def test_scram_plus_start_without_binding_fails() -> None:
    with pytest.raises(AuthenticationError):
        start("SCRAM-SHA-256-PLUS", creds())


def test_scram_prohibited_password() -> None:
    with pytest.raises(AuthenticationError) as info:
        start("SCRAM-SHA-256", creds(password="bad\x07pw"))
    assert "bad\x07pw" not in str(info.value)


# ------------------------------------------------------------------- OAuth


def test_xoauth2_exact_bytes_and_error_challenge() -> None:
    ex = start("XOAUTH2", creds(password=None, oauth_token=lambda: TOKEN))
    assert ex.initial_response() == f"user=alice\x01auth=Bearer {TOKEN}\x01\x01".encode()
    error = base64.b64decode(
        "eyJzdGF0dXMiOiI0MDEiLCJzY2hlbWVzIjoiYmVhcmVyIG10bHMiLCJzY29wZSI6Imh0dHBzOi8vbWFpbC5nb29nbGUuY29tLyJ9"
    )
    assert ex.respond(error) == b""
    assert ex.error_status == "401"  # type: ignore[attr-defined]
    assert "401" in repr(ex)
    with pytest.raises(AuthenticationError, match="401"):
        ex.respond(error)


def test_oauthbearer_exact_bytes_and_error_challenge() -> None:
    ex = start("OAUTHBEARER", creds(password=None, oauth_token=lambda: TOKEN))
    assert ex.initial_response() == (
        f"n,a=alice,\x01host=mail.example.org\x01port=587\x01auth=Bearer {TOKEN}\x01\x01".encode()
    )
    error = json.dumps({"status": "invalid_token", "scope": "example_scope"}).encode()
    assert ex.respond(error) == b"\x01"
    assert ex.error_status == "invalid_token"  # type: ignore[attr-defined]
    ex2 = start("OAUTHBEARER", creds(username="a,b=c", authzid=None, password=TOKEN))
    assert ex2.initial_response().startswith(b"n,a=a=2Cb=3Dc,\x01")  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "challenge", [b"not json", b"\xff\xfe", b"[1,2]", b'{"status": {"x": 1}}', b"[" * 5000]
)
def test_oauth_invalid_error_json_tolerated(challenge: bytes) -> None:
    for name, answer in (("XOAUTH2", b""), ("OAUTHBEARER", b"\x01")):
        ex = start(name, creds(password=TOKEN))
        ex.initial_response()
        assert ex.respond(challenge) == answer
        assert ex.error_status is None  # type: ignore[attr-defined]


def test_oauth_token_source() -> None:
    calls: list[int] = []

    def token() -> str:
        calls.append(1)
        return TOKEN

    c = creds(password="ignored.pw", oauth_token=token)
    for name in ("XOAUTH2", "OAUTHBEARER"):
        message = start(name, c).initial_response()
        assert message is not None and TOKEN.encode() in message and b"ignored" not in message
    assert len(calls) == 2  # once per start
    message = start("XOAUTH2", creds(password=TOKEN)).initial_response()
    assert message is not None and TOKEN.encode() in message


def bad_token_sources() -> list[Callable[[], str]]:
    def boom() -> str:
        raise RuntimeError(TOKEN)

    return [lambda: "", lambda: TOKEN + "\x01", lambda: TOKEN + " x", boom, lambda: 42]  # type: ignore[list-item, return-value]


@pytest.mark.parametrize("name", ["XOAUTH2", "OAUTHBEARER"])
@pytest.mark.parametrize("source", bad_token_sources())
def test_oauth_bad_tokens_refused_without_showing_them(
    name: str, source: Callable[[], str]
) -> None:
    with pytest.raises(AuthenticationError) as info:
        start(name, creds(password=None, oauth_token=source))
    assert TOKEN not in str(info.value) and TOKEN not in repr(info.value)


def test_oauth_wrong_token_detected_by_server() -> None:
    message = start("OAUTHBEARER", creds(password="other.token")).initial_response()
    assert message is not None
    fields = dict(
        kv.split("=", 1) for kv in message.decode().split("\x01") if "=" in kv and "," not in kv
    )
    assert fields["auth"] != f"Bearer {TOKEN}"


# -------------------------------------------------------- EXTERNAL, ANONYMOUS


def test_external_and_anonymous_bytes() -> None:
    assert start("EXTERNAL").initial_response() == b""
    assert (
        start("EXTERNAL", creds(authzid="bob@example.org")).initial_response() == b"bob@example.org"
    )
    assert start("ANONYMOUS").initial_response() == b"alice"
    assert start("ANONYMOUS", creds(username="x" * 300)).initial_response() == b"x" * 255
    for name in ("EXTERNAL", "ANONYMOUS"):
        ex = start(name)
        ex.initial_response()
        with pytest.raises(AuthenticationError):
            ex.respond(b"more?")
        ex.verify()


# ----------------------------------------------------------------- secrets


def failures(name: str, c: SASLCredentials) -> Iterator[AuthenticationError]:
    """Drive a mechanism into every failure reachable with odd challenges."""
    for challenges in ([b"garbage"], [b"", b"", b"", b""], [b"\xff" * 8], [b"rspauth=1"]):
        ex = MECHS[name].start(c)
        yield_repr = repr(ex)
        assert not any(s in yield_repr for s in SECRETS)
        try:
            ex.initial_response()
            for ch in challenges:
                ex.respond(ch)
            ex.verify()
        except AuthenticationError as exc:
            yield exc
        assert not any(s in repr(ex) for s in SECRETS), repr(ex)


@pytest.mark.parametrize("name", sorted(MECHS))
def test_no_secret_in_repr_or_errors(name: str) -> None:
    c = creds(
        password=PASSWORD if "AUTH" not in name else TOKEN,
        tls=tls(tls_exporter=b"e" * 32, tls_unique=b"u" * 12),
    )
    mech = MECHS[name]
    assert not any(s in repr(mech) for s in SECRETS)
    seen = list(failures(name, c))
    if name not in ("EXTERNAL", "ANONYMOUS", "XOAUTH2", "OAUTHBEARER", "LOGIN"):
        assert seen
    for exc in seen:
        text = f"{exc} {exc!r} {exc.diagnostic}"
        assert not any(s in text for s in SECRETS), text
    assert PASSWORD not in repr(replace(c, password=PASSWORD))
