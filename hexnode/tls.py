"""Client TLS for hexnode's outbound connections (C-STORE, STOW-RS, MLLP): the peer's certificate
chain and its name are both verified, as `ssl.create_default_context` does for a browser.

A certificate proves a name, not an address: without the name check any certificate the trusted
CAs signed — for any host, and with the system CAs any public one — would do for a man in the
middle. A peer addressed by IP whose certificate carries a host name instead is given that name
explicitly (the destination's ``tls_server_name``): it is what the certificate must carry, and it
goes out as SNI; the connection still goes to the configured address.
"""

from __future__ import annotations

import ssl

# OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH and X509_V_ERR_IP_ADDRESS_MISMATCH.
_NAME_MISMATCH = (62, 64)


def client_context(ca_file: str = "", cert_file: str = "", key_file: str = "") -> ssl.SSLContext:
    """Verify the chain against `ca_file` (empty: the system CAs) and the peer's name (always);
    present `cert_file` / `key_file` when the peer wants a client certificate."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file or None)
    if cert_file:
        ctx.load_cert_chain(cert_file, key_file or None)
    return ctx


def record_handshake_failures(ctx: ssl.SSLContext) -> list[BaseException]:
    """The handshake errors of every socket `ctx` wraps from now on, in order.

    pynetdicom catches a failed handshake, logs it and reports only that no association was made;
    the delivery's status must say why (a wrong certificate is not a peer that is down). The
    context's socket class (`SSLContext.sslsocket_class`, the documented hook) notes the error
    and lets it go on as before."""
    failures: list[BaseException] = []

    class Recording(ssl.SSLSocket):
        def do_handshake(self, block: bool = False) -> None:
            try:
                super().do_handshake(block)
            except (ssl.SSLError, OSError) as exc:
                failures.append(exc)
                raise

    ctx.sslsocket_class = Recording
    return failures


def describe(exc: BaseException, server_name: str, outcome: str = "not sent") -> str:
    """One line saying why a TLS handshake with the peer expected to be `server_name` failed, and
    what that meant (`outcome`: a delivery's "not sent", a test's "no association")."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        detail = (exc.verify_message or exc.reason or str(exc)).rstrip(".")
        if exc.verify_code in _NAME_MISMATCH:
            return (f"TLS: the peer's certificate is not valid for {server_name!r} ({detail}); {outcome}. "
                    "If the peer is addressed by IP and its certificate names a host, set tls_server_name "
                    "to that name")
        return f"TLS: the peer's certificate was not accepted ({detail}); {outcome}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {exc.reason or exc}; {outcome}"
    return f"TLS handshake failed: {type(exc).__name__}: {exc}; {outcome}"
