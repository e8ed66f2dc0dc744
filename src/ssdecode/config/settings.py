"""The engine's settings: frozen, built alike by the CLI (``ssdecode generate`` / ``serve``), the
Python API (``LLM(...)``) and tests, and validated here, once, with one exception type
(``InvalidParams``), before any model loads.

Two layers, as the engine uses them:

- ``DecodingSettings``: what turns loaded models into a strategy (``decoding/build.py``): the
  mode, K, the SD confidence gate, the SSD algorithm (``SSDConfig``), where its draft worker runs
  (``DraftDeployment``) and the runners' attention backend. ``configure`` swaps only these.
- ``EngineSettings``: what to load and how big the engine is: the target and draft, their
  devices and weight formats, the slots and their length, plus its ``DecodingSettings``.

Adding a decoding option means a field here (checked in ``__post_init__``), its use in
``build_strategy`` and the strategy it configures; the CLI flag maps onto the field.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ssdecode.config.deploy import DraftDeployment
from ssdecode.config.formats import check_format
from ssdecode.config.ssd import SSDConfig
from ssdecode.params import InvalidParams

MODES = ("auto", "ar", "sd", "ssd")
DEFAULT_TARGET, DEFAULT_DRAFT = "demo-target", "demo-draft"
DEFAULT_K = 5  # sd / ssd: draft tokens per round
AUTO_K_MAX = 8  # auto: the largest K it weighs (plan/calibrate.py measures widths up to it + 1)
DEFAULT_MAX_NUM_SEQS = 8
ACCEPTANCE_PRIOR = 0.84  # auto: per-token acceptance before any is measured (the demo pair on real text)
BACKENDS = ("eager", "static")  # the model runners' attention (runtime/runner.py)

# What the draft worker loads is the draft as this process loaded it (build_strategy sets these).
_DERIVED_DEPLOYMENT = ("draft_weights", "draft_dtype")


@dataclass(frozen=True)
class DecodingSettings:
    mode: str = "ar"  # auto | ar | sd | ssd
    k: int | None = None  # sd / ssd: K (default DEFAULT_K); auto: the largest K (default AUTO_K_MAX)
    min_confidence: float | None = None  # sd (and auto's SD rounds): end drafting below this q
    ssd: SSDConfig = field(default_factory=SSDConfig)  # its K follows ``k`` (auto: its pick)
    deploy: DraftDeployment = field(default_factory=DraftDeployment)
    backend: str | None = None  # eager | static (CUDA graphs); None: static on CUDA, else eager
    # auto: the acceptance its first pick assumes and its per-sequence estimates start from
    # (~0.84 for the demo pair on real text, ~0.99 on code such as HumanEval)
    acceptance_prior: float = ACCEPTANCE_PRIOR

    def __post_init__(self):
        if self.mode not in MODES:
            raise InvalidParams(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.k is not None and (isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1):
            raise InvalidParams(f"K (draft tokens per round) must be an integer >= 1, got {self.k!r}")
        if self.min_confidence is not None and not 0.0 < self.min_confidence < 1.0:
            raise InvalidParams(f"draft confidence threshold must be in (0, 1), got {self.min_confidence}")
        if not 0.0 < self.acceptance_prior < 1.0:
            raise InvalidParams(f"acceptance prior must be in (0, 1), got {self.acceptance_prior}")
        if self.backend is not None and self.backend not in BACKENDS:
            raise InvalidParams(f"attention backend must be one of {BACKENDS}, got {self.backend!r}")
        if not isinstance(self.ssd, SSDConfig) or not isinstance(self.deploy, DraftDeployment):
            raise InvalidParams("ssd must be an SSDConfig and deploy a DraftDeployment")
        if self.ssd.k != self.speculation_k:
            object.__setattr__(self, "ssd", self.ssd.with_k(self.speculation_k))

    @property
    def speculation_k(self) -> int:
        """K of a fixed-K round (sd, ssd; auto's SSD is rebuilt with its own pick)."""
        return self.k or DEFAULT_K

    @property
    def k_max(self) -> int:
        """The largest K a round may draft (auto: the most it weighs)."""
        return self.k or (AUTO_K_MAX if self.mode == "auto" else DEFAULT_K)

    @classmethod
    def build(cls, mode: str = "ar", k: int | None = None, min_confidence: float | None = None,
              ssd: SSDConfig | dict | None = None, cuda_graphs: bool | None = None,
              acceptance_prior: float = ACCEPTANCE_PRIOR) -> DecodingSettings:
        """From loose options: ``ssd`` is an SSDConfig, or a dict (the CLI's) of SSDConfig and
        DraftDeployment fields, split here (``None`` values: the default); ``cuda_graphs`` None /
        True / False is the backend by device / static / eager."""
        backend = None if cuda_graphs is None else "static" if cuda_graphs else "eager"
        if ssd is None or isinstance(ssd, SSDConfig):
            return cls(mode, k, min_confidence, ssd or SSDConfig(), DraftDeployment(), backend, acceptance_prior)
        if not isinstance(ssd, dict):
            raise InvalidParams(f"ssd options must be an SSDConfig or a dict, got {type(ssd).__name__}")
        deploy_keys = DraftDeployment.field_names() - set(_DERIVED_DEPLOYMENT)
        known = deploy_keys | SSDConfig.option_names()
        unknown = set(ssd) - known
        if unknown:
            raise InvalidParams(f"unknown SSD options {sorted(unknown)}; known: {sorted(known)}")
        given = {key: v for key, v in ssd.items() if v is not None}
        deploy = DraftDeployment(**{key: v for key, v in given.items() if key in deploy_keys})
        algo = SSDConfig(k=k or DEFAULT_K, **{key: v for key, v in given.items() if key not in deploy_keys})
        return cls(mode, k, min_confidence, algo, deploy, backend, acceptance_prior)


@dataclass(frozen=True)
class EngineSettings:
    target: str = DEFAULT_TARGET  # an alias (demo-target), an HF folder, a .gguf file or a hub id
    draft: str | None = None  # None: demo-draft where the mode speculates (see ``draft_source``)
    device: str | None = None  # None: cuda if present, else cpu
    dtype: torch.dtype | None = None  # None: the loader's choice for the device
    weights: str = "auto"  # the target's matmul weight format (TARGET_FORMATS; FORMATS for tools)
    draft_weights: str = "auto"  # the draft's (DRAFT_FORMATS)
    max_num_seqs: int = DEFAULT_MAX_NUM_SEQS  # requests decoded at once (more wait)
    max_model_len: int | None = None  # prompt + output tokens per request (None: the context, <= 4096)
    decoding: DecodingSettings = field(default_factory=DecodingSettings)

    def __post_init__(self):
        check_format(self.weights, "target")
        check_format(self.draft_weights, "draft")
        check_limits(self.max_num_seqs, self.max_model_len)
        if not isinstance(self.decoding, DecodingSettings):
            raise InvalidParams("decoding must be a DecodingSettings")

    @property
    def draft_source(self) -> str | None:
        """The draft to load: the one named, else the demo draft when the mode speculates (auto
        only for the demo target: another target's tokenizer would not match it)."""
        mode = self.decoding.mode
        if self.draft is not None or mode in ("sd", "ssd") or (mode == "auto" and self.target == DEFAULT_TARGET):
            return self.draft or DEFAULT_DRAFT
        return None

    @classmethod
    def build(cls, target: str = DEFAULT_TARGET, draft: str | None = None, mode: str = "ar",
              k: int | None = None, device: str | None = None, dtype: torch.dtype | None = None,
              ssd: SSDConfig | dict | None = None, min_confidence: float | None = None,
              draft_weights: str = "auto", max_num_seqs: int = DEFAULT_MAX_NUM_SEQS,
              max_model_len: int | None = None, weights: str = "auto",
              cuda_graphs: bool | None = None, acceptance_prior: float = ACCEPTANCE_PRIOR) -> EngineSettings:
        """From the keyword arguments ``LLM(...)`` takes (``DecodingSettings.build`` for the rest)."""
        return cls(target, draft, device, dtype, weights, draft_weights, max_num_seqs, max_model_len,
                   DecodingSettings.build(mode, k, min_confidence, ssd, cuda_graphs, acceptance_prior))


def check_limits(max_num_seqs, max_model_len) -> None:
    """The engine's sizes, as far as they can be checked without the model (its context)."""
    if isinstance(max_num_seqs, bool) or not isinstance(max_num_seqs, int) or max_num_seqs < 1:
        raise InvalidParams(f"max_num_seqs must be an integer >= 1, got {max_num_seqs!r}")
    if max_model_len is not None and (not isinstance(max_model_len, int) or max_model_len < 2):
        raise InvalidParams(f"max_model_len must be an integer >= 2, got {max_model_len!r}")
