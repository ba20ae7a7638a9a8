"""Request bodies of `sbd serve` and the OpenAI-style error object.

`CompletionRequest` is the JSON body of `POST /v1/completions`: OpenAI's fields (prompt,
max_tokens, temperature, top_p, n, seed, stop, stream, user, and a few that are accepted
only at their neutral value), and `sbd`, an `SbdOptions` object with the settings OpenAI
has no name for (stages, gammas, remask strategy, threshold, cache, ...). Every default is
the one `sbd generate` uses, so an empty request samples what the command samples.
`EditRequest` is the body of `POST /v1/sbd/edit`: a text (and its fixed prompt) with the
options of `sbd edit` (same names and defaults). `ApiError` is every error the server
answers: status, message, and the field at fault.

Not here: turning a request into sampler configurations (jobs.py), the routes (app.py).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt

Number = StrictInt | StrictFloat
"""A JSON number (a string or a boolean is not one)."""


class ApiError(Exception):
    """An error answer: HTTP status and an OpenAI-style error object naming the field."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        kind: str = "invalid_request_error",
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param = status, message, param
        self.kind, self.code, self.headers = kind, code, headers or {}

    def body(self) -> dict[str, Any]:
        """`{"error": {message, type, param, code}}` as OpenAI answers."""
        err = {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}
        return {"error": err}


class SbdOptions(BaseModel):
    """The `sbd` object of a request: what `sbd generate`'s flags set (same defaults)."""

    model_config = ConfigDict(extra="forbid")

    stages: str | list[StrictInt | Literal["full"]] = "4,full"
    """Block sizes per stage, draft first: "4,full" or [4, "full"]."""
    gammas: str | Number | list[Number] = "0.25"
    """Remask ratio per revise stage (one value = every stage), each in [0, 1]."""
    strategy: str = "snapshot"
    """Remask score: snapshot, random, posthoc or masked."""
    passes: StrictInt = 8
    """Passes of the masked strategy."""
    reveal: str | None = Field(default=None, max_length=64)
    """How many positions each call reveals, as `sbd generate --reveal` spells it:
    steps[:S][:confident], reference[:S], threshold:TAU or first-hitting (default steps)."""
    cache: str = Field(default="exact", max_length=64)
    """Where a call's keys/values come from, as `--cache` spells it: none, exact, approx[:R]
    (inside revise blocks; the draft runs exact) or captured."""
    revise_steps_per_block: StrictInt | None = None
    """Network calls per revise block (default: one token per call)."""
    dtype: str = "float64"
    # the 0.2 names of a policy and a cache, still accepted (docs/sampling.md maps them)
    threshold: Number | None = None
    """Old name of reveal threshold:TAU."""
    steps_per_block: StrictInt | None = None
    """Old name of reveal steps:S."""
    first_hitting: StrictBool = False
    schedule: str = "fixed"
    unmask: str = "random"
    kv_cache: StrictBool = True
    refresh: StrictInt | None = None
    stop_at_eos: StrictBool = False
    """Stop a sample after the block in which it generated EOS."""
    id: str | None = Field(default=None, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")
    """The record id (default p1, as `sbd generate --prompts` names a one-line file's prompt;
    `<id>-<j>` with n > 1). Unseeded requests get their completion id."""
    events: StrictBool = False
    """With `stream`: also send the typed sbd events (docs/serving.md)."""


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: StrictBool = False


class CompletionRequest(BaseModel):
    """The body of `POST /v1/completions`."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    prompt: str | list[StrictInt] = ""
    max_tokens: StrictInt | None = Field(default=None, ge=1)
    """Tokens after the prompt (default: up to the model's trained length)."""
    temperature: Number = Field(default=1.0, gt=0)
    top_p: Number = Field(default=0.9, gt=0, le=1)
    n: StrictInt = Field(default=1, ge=1)
    seed: StrictInt | None = Field(default=None, ge=0, lt=2**63)
    stop: str | list[str] | None = None
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(default=None, max_length=256)
    sbd: SbdOptions = Field(default_factory=SbdOptions)
    # OpenAI fields accepted at their neutral value only (anything else is a 400)
    echo: Literal[False] = False
    logprobs: None = None
    suffix: None = None
    best_of: Literal[1] | None = None
    presence_penalty: Literal[0] = 0
    frequency_penalty: Literal[0] = 0
    logit_bias: None = None


class EditRequest(BaseModel):
    """The body of `POST /v1/sbd/edit`: one text and the options of `sbd edit`."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    text: str
    """The text to edit ([MASK] / [MASK:n] markers are positions to fill)."""
    prompt: str = ""
    """A fixed prefix: conditions the edit, never edited (a JSONL input's `prompt`)."""
    id: str = Field(default="t1", max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")
    """The record id (`t1`, as `sbd edit` names a one-text input's text)."""
    gamma: Number | None = None
    """Revise this fraction of the text's weakest tokens (or `infill`)."""
    infill: StrictBool = False
    """Only fill the text's mask markers (no remask)."""
    strategy: str | None = None
    """Remask score: masked (default), posthoc or random."""
    passes: StrictInt = 8
    block: str | StrictInt = "full"
    """Revise block size B, or "full"."""
    top_p: Number = Field(default=0.9, gt=0, le=1)
    temperature: Number = Field(default=1.0, gt=0)
    seed: StrictInt = Field(default=0, ge=0, lt=2**63)
    mask_token: str = Field(default="[MASK]", min_length=1, max_length=32)
    allow_normalize: StrictBool = False
    """Accept a text the tokenizer does not reproduce byte for byte."""
    stream: StrictBool = False
    """Answer server-sent events: remask, revise per network call, final."""
