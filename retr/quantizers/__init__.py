"""Quantizers turn dense vectors into compact codes (the ``Quantizer`` protocol in retr.protocols)."""
