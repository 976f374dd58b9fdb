"""Retrieval: read documents, chunk them by the embedding model's tokens, embed, store, search and evaluate.

The pipeline is `documents.read_documents` -> `chunking.chunk_documents` -> `embeddings.Embedder.embed` -> a store.
"""
