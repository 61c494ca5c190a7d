"""The serving configuration: `orchestrate serve --config serve.yaml` (configs/serve.yaml is the
annotated example). Unknown keys are refused; command-line flags override the file.

An alias is a model name standing for the mixture with routing settings, e.g.
`orchestrator-k5: {k: 5, router: knn, aggregator: vote, mode: chat}`: it is listed in
`/v1/models`, so that clients which cannot send extra body fields (`llm`, LangChain) choose
routing by model name.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..errors import ConfigError

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")


class Alias(BaseModel):
    """Routing settings a model name stands for (unset: the server's defaults)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    k: int | None = Field(default=None, ge=1)
    router: str | None = None
    aggregator: str | None = None
    mode: Literal["chat", "task"] | None = None
    escalation: Literal["lossless", "confident", "none"] | None = None
    description: str | None = None


class Limits(BaseModel):
    """What bad clients cannot exceed (issue 12, item 7)."""

    model_config = ConfigDict(extra="forbid")
    header_timeout_s: float = Field(default=10.0, gt=0)  # request line and headers, from connect
    body_timeout_s: float = Field(default=30.0, gt=0)  # the whole body, once headers arrived
    keep_alive_s: int = Field(default=5, ge=1)  # idle time between requests on one connection
    max_connections: int = Field(default=512, ge=1)  # beyond it: 503 and close
    max_header_bytes: int = Field(default=16384, ge=1024)  # h11's incomplete-event cap
    error_log_lines: int = Field(default=20, ge=1)  # warnings/errors per interval, then summary
    error_log_interval_s: float = Field(default=10.0, gt=0)


class ServeConfig(BaseModel):
    """Everything `orchestrate serve` needs, as one file; relative paths are read from the
    file's folder."""

    model_config = ConfigDict(extra="forbid")
    pool: Path | None = None
    profile: Path | None = None
    run: Path | None = None  # a run preset (configs/*.yaml): router, k, aggregator...
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    served_model_name: str = "orchestrator"
    aliases: dict[str, Alias] = {}
    allowed_hosts: list[str] = []  # Host/Origin names accepted without an API key, beyond loopback
    api_key_env: str = "ORCHESTRATOR_API_KEY"
    window_ms: float = Field(default=20.0, ge=0)
    max_batch: int = Field(default=32, ge=1)
    concurrency: int = Field(default=4, ge=1)  # batches at once (a hung expert blocks no other)
    max_queue: int = Field(default=256, ge=1)
    deadline_s: float = Field(default=300.0, gt=0)
    max_body_bytes: int = Field(default=1_000_000, ge=1)
    graceful_timeout_s: int = Field(default=30, ge=0)
    min_experts_ok: int | None = Field(default=None, ge=1)
    # each chat request: one INFO line (id, model, user, metadata, usage) and a record of the
    # request, its routing and its answer in the generation store (`orchestrate logs`)
    log_requests: bool = False
    store: Path | None = None  # the store the request records go to (default: the per-user one)
    limits: Limits = Limits()

    @field_validator("served_model_name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME.match(value):
            raise ValueError(f"'{value[:40]}' is not a model name (letters, digits, . _ : / -)")
        return value

    @field_validator("aliases")
    @classmethod
    def _aliases(cls, value: dict[str, Alias]) -> dict[str, Alias]:
        for name in value:
            if not NAME.match(name):
                raise ValueError(f"alias '{name[:40]}' is not a model name")
        return value

    def check_names(self, experts: list[str]) -> None:
        """Served name, aliases and expert ids must differ (one name, one meaning)."""
        seen: dict[str, str] = {}
        for name, kind in ([(self.served_model_name, "served_model_name")]
                           + [(a, "alias") for a in self.aliases] + [(e, "expert") for e in experts]):
            if name in seen:
                raise ConfigError(f"The model name '{name}' is both {seen[name]} and {kind}; "
                                  "rename the alias or the served model.")
            seen[name] = kind


def load_serve_config(path: str | Path | None, **overrides) -> ServeConfig:
    """The file's settings (none: the defaults) with `overrides` (flags given on the command
    line; None values are not overrides)."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except OSError as err:
            raise ConfigError(f"Cannot read the serving config {path}: {err.strerror}.") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"The serving config {path} is not valid YAML: "
                              f"{str(err).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"The serving config {path} must be a mapping of settings.")
        for key in ("pool", "profile", "run", "store"):
            if isinstance(data.get(key), str) and not Path(data[key]).is_absolute():
                data[key] = str(path.parent / data[key])
    data.update({k: v for k, v in overrides.items() if v is not None})
    _refuse_run_preset(data, path)
    try:
        return ServeConfig.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        source = f" in {path}" if path else ""
        raise ConfigError(f"Invalid serving setting '{where}'{source}: {first['msg']}.") from None


def _refuse_run_preset(data: dict, path: Path | None) -> None:
    """`--config` used to take a run preset; say so instead of listing unknown keys."""
    from ..config import RunConfig

    unknown = set(data) - set(ServeConfig.model_fields)
    if unknown and unknown <= set(RunConfig.model_fields):
        raise ConfigError(f"{path} looks like a run preset ({', '.join(sorted(unknown))}): pass "
                          "it with --run, or as 'run:' in the serving config.")
