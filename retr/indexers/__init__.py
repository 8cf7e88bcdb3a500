"""Indexes: FAISS flat / HNSW / IVF for dense vectors, Lucene for BM25."""
