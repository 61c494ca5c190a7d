"""The generation store: every generation in one SQLite file per user, keyed by everything that
decides its text (keys.py), so runs resume, reuse each other's answers and export to replay."""

from .db import GenerationStore, Row, StoredGeneration, default_store_path
from .executor import StoredExecutor, key_maker, query_extractor
from .keys import KeyMaker, expert_identity, identity_digest, request_key, reusable
from .schema import SCHEMA_VERSION

__all__ = [
    "SCHEMA_VERSION", "GenerationStore", "KeyMaker", "Row", "StoredExecutor", "StoredGeneration",
    "default_store_path", "expert_identity", "identity_digest", "key_maker", "query_extractor",
    "request_key", "reusable",
]
