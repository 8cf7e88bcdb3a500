"""Encoders, the Retriever pipeline and fusion."""
