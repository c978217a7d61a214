"""The protocol and transport-hardening tests again, over TLS: every case of
test_protocol_v1 (slowloris, bad heads, bad frames, bounds, secrets) and the
pipelining and framing-error cases of test_hardening, against a MASTER that
serves wss:// and https:// with a certificate from a CA made at test time.
The clients (python3-websockets, ssl-wrapped raw sockets, urllib) verify it.
"""
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import test_hardening  # noqa: E402
import test_protocol_v1  # noqa: E402
from harness import Certs  # noqa: E402

CERTS = Certs()
PAIR = CERTS.issue()


class ProtocolV1OverTls(test_protocol_v1.ProtocolV1):
    MASTER_KW = {"tls": PAIR}


class PipeliningOverTls(test_hardening.Pipelining):
    MASTER_KW = {"tls": PAIR}


class FramingErrorsOverTls(test_hardening.FramingErrors):
    MASTER_KW = {"tls": PAIR}


if __name__ == "__main__":
    try:
        unittest.main(verbosity=2)
    finally:
        CERTS.close()
