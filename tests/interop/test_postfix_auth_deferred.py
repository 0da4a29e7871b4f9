"""RFC 4954 section 4 against Postfix/Cyrus: a PLAIN initial response too long
for the AUTH line goes after the empty 334, and Postfix reads it as the
credentials (a wrong, long password: the harness has one user, with a short one)."""

from __future__ import annotations

import pytest

import smtplug
from apis import both_apis
from smtplug import AuthenticationError

from .test_postfix_auth import message, options

pytestmark = [pytest.mark.interop, both_apis]


def test_long_plain_response_after_the_empty_challenge(postfix_clean, capsys):
    pf = postfix_clean
    offset = pf.log_offset()
    password = pf.password + "-" + "x" * 600  # AUTH PLAIN <base64> would be over 800 octets
    with pytest.raises(AuthenticationError) as info:
        smtplug.sendmessage(
            message("long"),
            password=password,
            mechanisms=["PLAIN"],
            debug=True,
            **options(pf, False),
        )
    transcript = capsys.readouterr().err.splitlines()
    at = transcript.index("--> AUTH PLAIN")  # no initial response on the line
    assert transcript[at + 1].startswith("<-- 334")
    assert transcript[at + 2] == "--> <redacted>"
    # 535 (credentials wrong), not 500/501 (line refused, or the exchange misframed).
    assert info.value.code == 535
    assert password not in str(info.value)
    pf.wait_for_log("SASL PLAIN authentication failed", offset)
    assert pf.messages() == []
