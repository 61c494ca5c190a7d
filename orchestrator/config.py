"""Pydantic models of the YAML files: pool manifests (`pools/`) and run presets (`configs/`).

Unknown keys are rejected everywhere so that a typo never silently falls back to a default.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from .errors import ConfigError
from .types import ExpertSpec

ExpertId = str
_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$"


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Price(StrictModel):
    """An expert's price in money per million tokens (any currency, the same for the pool)."""

    input_per_mtok: float = Field(ge=0.0, description="per million prompt tokens")
    output_per_mtok: float = Field(ge=0.0, description="per million generated tokens")


class ExpertConfig(StrictModel):
    """One pool member."""

    id: ExpertId = Field(pattern=_ID_PATTERN)
    backend: str
    model: str = ""
    adapter: str | None = Field(default=None, description="a PEFT LoRA folder on `model`")
    lora_moe: str | None = Field(default=None, description="a LoRA-MoE folder (`orchestrate "
                                 "lora-moe train`) on `model`: a gate mixing LoRA experts")
    smore: str | None = Field(default=None, description="an S'MoRE folder (`orchestrate smore "
                              "train`) on `model`: a structural mixture of residual experts")
    system_prompt: str | None = None
    dtype: Literal["auto", "bfloat16", "float16", "float32"] | None = None
    max_tokens: int | None = Field(default=None, ge=1, le=131072)
    temperature: float | None = Field(default=None, ge=0.0, le=5.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    options: dict[str, Any] = Field(default_factory=dict)
    placement: str | int | list[int] | None = Field(
        default=None, description="a GPU index or list for vllm/transformers, a server name "
        "for openai_http (default: its base URL); default auto")
    price: Price | None = Field(default=None, description="money per million tokens, for the "
                                "run's cost view (summary.json `cost`)")

    @model_validator(mode="after")
    def _one_adaptation(self) -> ExpertConfig:
        if self.adapter and self.lora_moe:
            raise ValueError(f"expert '{self.id}' sets both adapter and lora_moe; a LoRA-MoE "
                             "folder already names its LoRA experts, so give only lora_moe")
        if self.smore and (self.adapter or self.lora_moe):
            other = "adapter" if self.adapter else "lora_moe"
            raise ValueError(f"expert '{self.id}' sets both {other} and smore; an expert carries "
                             "one adaptation, so give only one (or make two experts)")
        return self

    @model_validator(mode="after")
    def _placement(self) -> ExpertConfig:
        p = self.placement
        gpus = [p] if isinstance(p, int) else p if isinstance(p, list) else []
        if isinstance(p, list) and (not p or len(set(p)) != len(p)):
            raise ValueError(f"expert '{self.id}': placement {p} must list distinct GPU "
                             "indices, e.g. [0, 1]")
        if any(g < 0 for g in gpus) or p == "":
            raise ValueError(f"expert '{self.id}': placement {p!r} is not a GPU index >= 0, "
                             "a list of them or a server name")
        return self

    def to_spec(self) -> ExpertSpec:
        return ExpertSpec(**self.model_dump(exclude={"price"}))


class PoolConfig(StrictModel):
    """A pool manifest: which experts, which backend, which weights."""

    name: str
    description: str | None = None
    resident_limit: int = Field(default=1, ge=1, description="loaded experts per placement")
    gpus: list[int] | None = Field(default=None, description="GPU indices the executor packs "
                                   "experts without a placement onto (one worker per GPU)")
    experts: list[ExpertConfig] = Field(min_length=1)
    aggregator: ExpertId | None = Field(
        default=None, description="the expert that fuses answers unless the run or the "
        "profile's aggregator ranking names another")

    _base_dir: Path = PrivateAttr(default_factory=Path.cwd)

    @model_validator(mode="after")
    def _unique_ids(self) -> PoolConfig:
        seen: set[str] = set()
        for expert in self.experts:
            if expert.id in seen:
                raise ValueError(f"expert id '{expert.id}' appears twice; ids must be unique")
            seen.add(expert.id)
        if self.aggregator is not None and self.aggregator not in seen:
            raise ValueError(f"aggregator '{self.aggregator}' is not an expert of this pool; "
                             f"name one of: {', '.join(seen)}")
        return self

    @model_validator(mode="after")
    def _gpus(self) -> PoolConfig:
        if self.gpus is not None and (not self.gpus or len(set(self.gpus)) != len(self.gpus)
                                      or min(self.gpus) < 0):
            raise ValueError(f"gpus {self.gpus} must list distinct GPU indices >= 0, e.g. "
                             "[0, 1, 2, 3]")
        return self

    @property
    def base_dir(self) -> Path:
        """Folder that relative model paths in the manifest are resolved against."""
        return self._base_dir

    @property
    def expert_ids(self) -> list[str]:
        return [e.id for e in self.experts]

    def specs(self) -> dict[str, ExpertSpec]:
        return {e.id: e.to_spec() for e in self.experts}


class GenerationDefaults(StrictModel):
    """Decoding for experts whose manifest entry does not set its own."""

    max_tokens: int = Field(default=256, ge=1, le=131072)
    temperature: float = Field(default=0.0, ge=0.0, le=5.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)


class RoutingOptions(StrictModel):
    """Knobs of the profile-based routers."""

    neighbors: int = Field(default=100, ge=1, description="knn: validation neighbours per query")
    shrinkage: float = Field(default=5.0, ge=0, description="knn: prior weight toward global acc.")
    temperature: float = Field(default=0.5, gt=0, description="symbolic-moe: global strength temp.")
    replace_rare: bool = False
    min_share: float = Field(default=0.05, ge=0, le=1)
    top_m: int = Field(default=3, ge=1, description="embedding annotator: skills per question")
    threshold: float = Field(default=0.15, ge=-1, le=1, description="embedding annotator: min cos")
    adaptive_k: bool = Field(default=False, description="one expert when the leader is sure")
    confidence: float = Field(default=0.8, ge=0, le=1, description="adaptive k: leader's bound")
    z: float = Field(default=1.0, ge=0, description="adaptive k: standard errors below estimate")
    max_experts: int | None = Field(default=None, ge=1, description="load-aware: distinct experts")
    candidates: int = Field(default=8, ge=1, description="ensemble: experts its tuples draw from")
    ensemble_shrinkage: float = Field(default=100.0, ge=0, description="ensemble: prior weight")
    k_by_evidence: bool = Field(default=True, description="profile routers: k is a cap; each "
                                "query takes the size (1..k) whose vote did best on validation "
                                "for its skills (false: exactly k)")
    evidence_shrinkage: float | None = Field(
        default=None, ge=0, description="k by evidence: prior weight of the pool-wide choice "
        "when choosing per skill (none: picked by cross-validation on the validation set)")
    call_cost: float = Field(default=0.0, ge=0, le=1, description="k by evidence: the share of "
                             "validation questions (0.005: half a point) each further expert "
                             "must win to be chosen")


# The router `auto` picks when a profile is given: the best one measured on the replay pools
# (benchmarks/replay_quality.py).
PROFILE_ROUTER = "ensemble"


class AggregationOptions(StrictModel):
    """Knobs of the aggregators."""

    early_exit: bool = Field(default=False, description="skip the aggregator when all agree")
    weighting: Literal["auto", "log-odds", "linear", "none"] = Field(
        default="auto", description="vote: how estimated success becomes a vote weight")
    response_budget: int = Field(default=256, ge=16, le=8192,
                                 description="fuse: words kept of each expert response")
    max_tokens: int | None = Field(default=None, ge=1, le=131072,
                                   description="fuse: new tokens of the aggregator's answer")


class EscalationOptions(StrictModel):
    """Calling a question's experts in rounds, only as many as can still change its answer.

    lossless   the answers of calling all k (vote: stop once the remaining experts cannot
               change the weighted majority, ties included; first: stop at the first expert
               that answered); aggregators that need every response (fuse) call all k
    confident  vote: also stop once at least `min_votes` answers were cast and the leader
               holds `agreement` of their weight (cheaper, may change answers)
    none       every chosen expert is called
    """

    mode: Literal["lossless", "confident", "none"] = "lossless"
    agreement: float = Field(default=1.0, gt=0.5, le=1.0,
                             description="confident: the leader's share of the cast weight")
    min_votes: int = Field(default=2, ge=1, description="confident: answers cast at least")


class RunConfig(StrictModel):
    """A run preset (`configs/*.yaml`); CLI flags override single fields."""

    router: str = Field(default="auto", description="auto: the best profile router when a "
                        "profile is given (PROFILE_ROUTER), else fixed")
    experts: list[ExpertId] | None = None
    k: int | None = Field(default=None, ge=1)
    aggregator: str = Field(default="auto", description="auto: the method the profile's "
                            "validation table found best (`orchestrator.methods`), else vote")
    executor: Literal["grouped", "naive"] = "grouped"
    batch_size: int = Field(default=16, ge=1, le=4096)
    seed: int = 0
    threads: int | None = Field(default=None, ge=1, le=512)
    max_tokens: int | None = Field(
        default=None, ge=1, le=131072, description="caps every expert's max_tokens when set"
    )
    generation: GenerationDefaults = Field(default_factory=GenerationDefaults)
    profile: str | None = Field(default=None, description="skill profile JSON for routing")
    annotator: Literal["embedding", "llm", "field"] = "embedding"
    annotator_expert: str | None = Field(default=None, description="llm annotator: expert id")
    vocabulary: str | None = Field(default=None, description="skills YAML (embedding annotator)")
    routing: RoutingOptions = Field(default_factory=RoutingOptions)
    aggregator_expert: str | None = Field(
        default=None, description="fuse: the pool expert that aggregates (default: the "
        "profile's best-ranked aggregator, else the first expert)")
    aggregation: AggregationOptions = Field(default_factory=AggregationOptions)
    escalation: EscalationOptions = Field(default_factory=EscalationOptions)
    min_experts_ok: int = Field(default=1, ge=1, description="chat: fewer experts answering "
                                "than this (or than k) fails the request instead of degrading")

    def with_overrides(self, **overrides: Any) -> RunConfig:
        """A copy with the non-None overrides applied, validated again."""
        data = self.model_dump()
        given = {k: v for k, v in overrides.items() if v is not None}
        if "experts" in given and "k" not in given:
            data["k"] = None  # naming experts without --k means k = how many were named
        for section in ("routing", "aggregation", "escalation"):
            values = given.pop(section, None)
            if values is not None and not isinstance(values, Mapping):
                raise ConfigError(f"{section}= must be a mapping of {section} options (e.g. "
                                  f"{section}={{...}}); got {type(values).__name__} "
                                  f"{str(values)[:40]!r}.")
            if values:
                data[section] = {**data[section], **{k: v for k, v in values.items()
                                                     if v is not None}}
        data.update(given)
        return validate_model(RunConfig, data, "options (command-line flags or keyword overrides)")

    def resolved(self) -> RunConfig:
        """The same preset with `router: auto` replaced by the router it stands for, and
        `aggregator: auto` (not decided by evidence: `orchestrator.methods`) by vote."""
        update = {}
        if self.router == "auto":
            update["router"] = PROFILE_ROUTER if self.profile else "fixed"
        if self.aggregator == "auto":
            update["aggregator"] = "vote"
        return self.model_copy(update=update) if update else self

    def effective_k(self) -> int:
        if self.k is not None:
            return self.k
        return len(self.experts) if self.experts else 1


def _format_validation(err: ValidationError, source: str) -> str:
    lines = []
    for item in err.errors()[:8]:
        loc = ".".join(str(p) for p in item["loc"]) or "(top level)"
        msg = item["msg"]
        if item["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; unknown keys are rejected)"
        lines.append(f"{loc}: {msg}")
    more = len(err.errors()) - 8
    if more > 0:
        lines.append(f"... and {more} more")
    return f"Invalid {source}: " + "; ".join(lines)


def validate_model(model: type[StrictModel], data: Any, source: str):
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation(err, source)) from None


def read_yaml(path: str | Path, what: str) -> Any:
    """A YAML file as a mapping: UTF-8, no key given twice, no alias bomb (safeio)."""
    from .safeio import read_yaml_file

    path = as_path(path, what)
    if not path.is_file():
        raise ConfigError(f"{what} file '{path}' does not exist. Pass the path of a YAML file.")
    data = read_yaml_file(path, what, ConfigError)
    if not isinstance(data, dict):
        raise ConfigError(f"{what} file '{path}' must hold a mapping at the top level.")
    return data


def as_path(path: Any, what: str) -> Path:
    """A str or os.PathLike as a Path; anything else (None, a number, bytes, a mapping) is a
    ConfigError saying what was given."""
    if isinstance(path, Path):
        return path
    if isinstance(path, str) or (hasattr(path, "__fspath__") and not isinstance(path, bytes)):
        text = os.fspath(path)
        if isinstance(text, str) and text.strip():
            return Path(text)
    shown = type(path).__name__ if not isinstance(path, str) else "an empty string"
    hint = (" To build from a mapping, validate it first: Orchestrator(PoolConfig.model_validate"
            "(data)) or RunConfig.model_validate(data).") if isinstance(path, dict) else ""
    raise ConfigError(f"The {what.lower()} must be the path of a YAML file (a str or Path); got "
                      f"{shown}.{hint}")


def load_pool(path: str | Path) -> PoolConfig:
    """Read and validate a pool manifest; relative model paths resolve against its folder."""
    path = as_path(path, "Pool")
    pool = validate_model(PoolConfig, read_yaml(path, "Pool"), f"pool manifest '{path}'")
    pool._base_dir = path.resolve().parent
    return pool


def load_config(path: str | Path | None = None) -> RunConfig:
    """Read a run preset; with no path, the defaults."""
    if path is None:
        return RunConfig()
    return validate_model(RunConfig, read_yaml(path, "Config"), f"run config '{path}'")
