"""The one key function of the generation store: SHA-256 over everything that decides a text.

    key = sha256(KEY_VERSION, expert identity digest, sampling, messages[, question id])

The expert identity (`expert_identity`) is the backend, what the model resolves to (a hub
snapshot's revision, else a content hash of the file or folder), the adapter and lora_moe folder
content hashes, dtype, system prompt and the backend options that can change a text (connection
settings such as timeouts and retries are left out; secrets are never options, see
openai_http's `api_key_env`). For the model backends (`SHARED_BY_CONTENT`) the expert's *id* is
not part of it: two pools that name the same model differently share its generations; any other
backend (fake, a user's own) adds the id, since its texts may depend on it.

Sampling: greedy decoding ignores seed and top_p, so a greedy key holds max_tokens (and stop)
only; a sampled key holds temperature, top_p, max_tokens, stop and seed. A sampled request whose
seed is None is *unseeded*: stored, but not reused unless asked (`reusable`).

Backends that answer by question id (replay: two questions with one text may have different
recordings) add the question id.

File hashes are full SHA-256 digests, computed once per (path, size, mtime) and remembered in
the store (`FileHashes`), so a 15 GB checkpoint is read once per machine, not once per run.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from ..types import ExpertSpec, GenerationRequest, Sampling

KEY_VERSION = b"orchestrator-generation-key-v1\0"

# Options that change how a backend talks or schedules, never which text comes back.
OPERATIONAL_OPTIONS = frozenset({
    "api_key_env", "concurrency", "timeout_s", "connect_timeout_s", "max_retries", "backoff_s",
    "backoff_max_s", "gpu_memory_utilization", "load_s", "token_s", "batch_s", "fail_load",
})
# Backends whose texts depend only on what the identity holds, never on the expert's id.
SHARED_BY_CONTENT = frozenset({"transformers", "vllm", "openai_http", "replay"})
_SNAPSHOT = re.compile(r"/snapshots/([0-9a-f]{40})(?:/|$)")
_CHUNK = 1 << 20


class FileHashes(Protocol):
    """A persistent memo of file digests (the store implements it)."""

    def file_hash(self, path: str, size: int, mtime_ns: int) -> str | None: ...

    def remember_file_hash(self, path: str, size: int, mtime_ns: int, digest: str) -> None: ...


class MemoryFileHashes:
    def __init__(self):
        self._memo: dict[tuple[str, int, int], str] = {}

    def file_hash(self, path, size, mtime_ns):
        return self._memo.get((path, size, mtime_ns))

    def remember_file_hash(self, path, size, mtime_ns, digest):
        self._memo[(path, size, mtime_ns)] = digest


def file_digest(path: Path, memo: FileHashes) -> str:
    """SHA-256 of a file's bytes, read at most once per (path, size, mtime)."""
    resolved = str(path.resolve())
    st = os.stat(resolved)
    known = memo.file_hash(resolved, st.st_size, st.st_mtime_ns)
    if known is not None:
        return known
    digest = hashlib.sha256()
    with open(resolved, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    value = digest.hexdigest()
    memo.remember_file_hash(resolved, st.st_size, st.st_mtime_ns, value)
    return value


def folder_digest(path: Path, memo: FileHashes) -> str:
    """SHA-256 over (relative path, file digest) of every non-hidden file in a folder."""
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = file.relative_to(path).as_posix()
        if any(part.startswith(".") for part in rel.split("/")) or rel.endswith(".lock"):
            continue
        digest.update(f"{rel}\0{file_digest(file, memo)}\0".encode())
    return digest.hexdigest()


def content_digest(reference: str | None, base_dir: Path | None, memo: FileHashes,
                   base_first: bool = False) -> str | None:
    """A file's or folder's content hash; the reference itself when it names nothing local
    (a hub id, a remote model), so a missing file never blocks a run here: its load fails.
    Relative paths are looked up as the backends do: the working directory, then the pool's
    folder (`base_first`: the pool's folder first, as for adapters and gates)."""
    if not reference:
        return None
    path = Path(reference).expanduser()
    candidates = [path]
    if not path.is_absolute() and base_dir is not None:
        candidates.insert(0 if base_first else 1, base_dir / path)
    path = next((c for c in candidates if c.exists()), path)
    snapshot = _SNAPSHOT.search(str(path.resolve()) if path.exists() else str(path))
    if snapshot:  # a Hugging Face cache snapshot: the commit names the content
        return f"revision:{snapshot.group(1)}"
    if path.is_file():
        return f"sha256:{file_digest(path, memo)}"
    if path.is_dir():
        return f"tree:{folder_digest(path, memo)}"
    return f"ref:{reference}"


def _model_digest(spec: ExpertSpec, base_dir: Path | None, memo: FileHashes) -> str | None:
    if spec.backend in ("openai_http", "fake", "replay") or not spec.model:
        return spec.model or None
    from ..errors import ModelNotFoundError
    from ..modelref import resolve

    try:
        ref = resolve(spec.model, base_dir)
    except ModelNotFoundError:
        return f"ref:{spec.model}"
    if ref.kind == "hub":
        revision = spec.options.get("revision") or _hub_revision(ref.path)
        return f"hub:{ref.path}@{revision}" if revision else f"hub:{ref.path}"
    return content_digest(ref.path, None, memo)


def _hub_revision(repo_id: str) -> str | None:
    """The commit the local Hugging Face cache resolves `main` to (refs/main), if cached."""
    root = os.environ.get("HF_HUB_CACHE") or Path(
        os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface") / "hub"
    ref = Path(root) / f"models--{repo_id.replace('/', '--')}" / "refs" / "main"
    try:
        return ref.read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def _plain(value: Any) -> Any:
    """Options as canonical JSON values (mappings sorted by json.dumps)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def expert_identity(
    spec: ExpertSpec, base_dir: Path | None, memo: FileHashes | None = None
) -> dict[str, Any]:
    """What decides an expert's texts, as a JSON-able dict (stored once per expert)."""
    memo = memo or MemoryFileHashes()
    options = {k: v for k, v in spec.options.items() if k not in OPERATIONAL_OPTIONS}
    if spec.backend == "replay":
        files = options.pop("recordings", [])
        files = [files] if isinstance(files, str) else list(files)
        # the recordings' content, wherever they are, decides the answers
        options["recordings"] = [content_digest(f, base_dir, memo) for f in files]
    return {
        "backend": spec.backend,
        "id": None if spec.backend in SHARED_BY_CONTENT else spec.id,
        "model": _model_digest(spec, base_dir, memo),
        "adapter": content_digest(spec.adapter, base_dir, memo, base_first=True),
        "lora_moe": content_digest(spec.lora_moe, base_dir, memo, base_first=True),
        "dtype": spec.dtype,
        "system_prompt": spec.system_prompt,
        "options": _plain(options),
    }


def identity_digest(identity: Mapping[str, Any]) -> bytes:
    text = json.dumps(identity, sort_keys=True, ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(KEY_VERSION + text.encode("ascii")).digest()


def sampling_bytes(sampling: Sampling) -> bytes:
    stop = getattr(sampling, "stop", None)
    stop = list(stop) if stop else None
    if sampling.temperature <= 0.0:
        fields: list[Any] = ["greedy", sampling.max_tokens, stop]
    else:
        fields = ["sampled", float(sampling.temperature), float(sampling.top_p),
                  sampling.max_tokens, stop, sampling.seed]
    return json.dumps(fields, ensure_ascii=True).encode("ascii")


def reusable(sampling: Sampling) -> bool:
    """Greedy, or sampled with an explicit seed: the same request gives the same text."""
    return sampling.temperature <= 0.0 or sampling.seed is not None


def request_key(expert: bytes, request: GenerationRequest, by_id: bool = False,
                _sampling: dict[Sampling, bytes] | None = None) -> bytes:
    """The 32-byte key of one generation; `expert` is its `identity_digest`."""
    digest = hashlib.sha256(expert)
    sampled = None if _sampling is None else _sampling.get(request.sampling)
    if sampled is None:
        sampled = sampling_bytes(request.sampling)
        if _sampling is not None:
            _sampling[request.sampling] = sampled
    digest.update(sampled)
    for message in request.messages:
        # length-prefixed, escaped: any text (lone surrogates included) hashes unambiguously
        content = message.content.encode("utf-8", "surrogatepass")
        digest.update(f"\0{message.role}\0{len(content)}\0".encode())
        digest.update(content)
    if by_id:
        digest.update(b"\0id\0" + request.query_id.encode("utf-8", "surrogatepass"))
    return digest.digest()


class KeyMaker:
    """Keys of a pool's requests: identities computed once per expert, then one SHA-256 per
    request. `answers_by_id(expert_id)` says whether the expert's backend answers by question
    id; `memo` remembers file digests (the store)."""

    def __init__(self, specs: Mapping[str, ExpertSpec], base_dir: Path | None,
                 memo: FileHashes | None = None,
                 answers_by_id: Callable[[str], bool] | None = None):
        self.specs, self.base_dir = specs, base_dir
        self.memo = memo or MemoryFileHashes()
        self.answers_by_id = answers_by_id or (lambda expert_id: self.specs[expert_id].backend == "replay")
        self._experts: dict[str, tuple[bytes, bool, dict[str, Any]]] = {}
        self._sampling: dict[Sampling, bytes] = {}

    def expert(self, expert_id: str) -> tuple[bytes, bool, dict[str, Any]]:
        """(identity digest, answers by id, identity) of one expert."""
        if expert_id not in self._experts:
            identity = expert_identity(self.specs[expert_id], self.base_dir, self.memo)
            self._experts[expert_id] = (identity_digest(identity),
                                        bool(self.answers_by_id(expert_id)), identity)
        return self._experts[expert_id]

    def key(self, request: GenerationRequest) -> bytes:
        digest, by_id, _ = self.expert(request.expert)
        return request_key(digest, request, by_id, self._sampling)

    def keys(self, requests) -> list[bytes]:
        return [self.key(r) for r in requests]
