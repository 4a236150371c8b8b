"""Request and response shapes of the HTTP API: OpenAI's, plus a marked block of ReFusion extensions.

Fields follow the order of OpenAI's API reference. OpenAI fields that this server cannot honour
are accepted only at their neutral value (e.g. `n=1`, `logprobs=None`); anything else is rejected
by `unsupported()` with a 400 naming the field, never silently ignored. Unknown fields are
rejected too (`extra="forbid"`), so a misspelt extension is an error, not a no-op.
The decoder options' fields come from their declarations (`refusion.decoding.options`); otherwise
this module knows nothing about models or decoding.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, create_model

# Wide enough for every real request; stops absurd values before they reach a decoder.
Temperature = Annotated[float, Field(ge=0.0, le=2.0, allow_inf_nan=False)]
Stop = StrictStr | Annotated[list[Annotated[StrictStr, Field(min_length=1)]], Field(max_length=4)] | None


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StreamOptions(Request):
    include_usage: StrictBool = False


class RefusionFields(Request):
    """ReFusion extensions: send them as extra body fields (openai client: `extra_body={...}`).

    Each one left out takes the server's default (the `refusion serve` decoding options).
    """

    decoder: StrictStr | None = None
    """refusion (plan-and-infill), lossless, ar (one token per forward), or any registered decoder."""
    stream_events: StrictBool = False
    """With stream=true: also send every raw decode step as an SSE `event: refusion.decode`."""

    def knobs(self) -> dict:
        """The decoder options the request set (every decoder's, as declared in refusion.decoding)."""
        return {name: getattr(self, name) for name in DECODER_OPTION_NAMES}


def _decoder_option_fields() -> dict:
    """One optional field per declared decoder option; its value is checked where decoding is set up."""
    from ..decoding.dispatch import DECODERS
    from ..decoding.options import all_options

    value = StrictInt | StrictFloat | StrictStr | None
    return {name: (value, Field(None, description=option.describe())) for name, (option, _) in all_options(DECODERS).items()}


_FIELDS = _decoder_option_fields()
DECODER_OPTION_NAMES = tuple(_FIELDS)
RefusionOptions = create_model("RefusionOptions", __base__=RefusionFields, **_FIELDS)


class OpenAICompletionFields(Request):
    """POST /v1/completions as OpenAI defines it, fields in the API reference's order."""

    model: StrictStr
    prompt: StrictStr | Annotated[list[StrictStr], Field(min_length=1)] | Annotated[list[StrictInt], Field(min_length=1)]
    best_of: StrictInt | None = None
    echo: StrictBool | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    logprobs: StrictInt | None = None
    max_tokens: StrictInt | None = None
    n: StrictInt | None = None
    presence_penalty: float | None = None
    seed: StrictInt | None = None
    stop: Stop = None
    stream: StrictBool | None = False
    stream_options: StreamOptions | None = None
    suffix: StrictStr | None = None
    temperature: Temperature | None = None
    top_p: float | None = None
    user: StrictStr | None = None


class CompletionRequest(RefusionOptions, OpenAICompletionFields):
    """The OpenAI fields, then the ReFusion extensions (pydantic lists the last base's fields first)."""

    def unsupported(self) -> str | None:
        """The first field set to something this server cannot do, or None."""
        if isinstance(self.prompt, list) and self.prompt and isinstance(self.prompt[0], str) and len(self.prompt) > 1:
            return "prompt"
        return _first_unsupported(self, best_of=(None, 1), echo=(None, False), frequency_penalty=(None, 0),
                                  logit_bias=(None, {}), logprobs=(None,), n=(None, 1), presence_penalty=(None, 0),
                                  suffix=(None, ""), top_p=(None, 1))


class TextPart(Request):
    type: Literal["text"]
    text: StrictStr


class ChatMessage(Request):
    role: Literal["system", "developer", "user", "assistant"]
    content: StrictStr | Annotated[list[TextPart], Field(min_length=1)]
    name: StrictStr | None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)


class OpenAIChatFields(Request):
    """POST /v1/chat/completions as OpenAI defines it, fields in the API reference's order."""

    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    model: StrictStr
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    logprobs: StrictBool | None = None
    top_logprobs: StrictInt | None = None
    max_completion_tokens: StrictInt | None = None
    max_tokens: StrictInt | None = None
    n: StrictInt | None = None
    parallel_tool_calls: StrictBool | None = None
    presence_penalty: float | None = None
    response_format: dict[str, Any] | None = None
    seed: StrictInt | None = None
    stop: Stop = None
    stream: StrictBool | None = False
    stream_options: StreamOptions | None = None
    temperature: Temperature | None = None
    tool_choice: Any = None
    tools: list[Any] | None = None
    top_p: float | None = None
    user: StrictStr | None = None


class ChatCompletionRequest(RefusionOptions, OpenAIChatFields):
    """The OpenAI fields, then the ReFusion extensions."""

    def unsupported(self) -> str | None:
        return _first_unsupported(self, frequency_penalty=(None, 0), logit_bias=(None, {}), logprobs=(None, False),
                                  top_logprobs=(None,), n=(None, 1), parallel_tool_calls=(None,), presence_penalty=(None, 0),
                                  response_format=(None, {"type": "text"}), tool_choice=(None, "none"), tools=(None, []),
                                  top_p=(None, 1))

    def token_budget(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


def _first_unsupported(request: BaseModel, **neutral: tuple) -> str | None:
    for name, allowed in neutral.items():
        if getattr(request, name) not in allowed:
            return name
    return None


# --- responses -----------------------------------------------------------------------------------


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class DecodeStats(BaseModel):
    """ReFusion extension on every response (`refusion` field): how the answer was decoded."""

    decoder: str
    forward_passes: int
    tokens_per_forward: float
    tokens_per_second: float
    seconds: float
    settings: dict[str, Any]


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    logprobs: None = None
    finish_reason: Literal["stop", "length"] | None


class ChatCompletionMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: ChatCompletionMessage
    logprobs: None = None
    finish_reason: Literal["stop", "length"]


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int = 0
    delta: ChatDelta
    logprobs: None = None
    finish_reason: Literal["stop", "length"] | None = None


class Response(BaseModel):
    id: str
    object: str
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[Any]
    usage: Usage | None = None
    # --- ReFusion extension ---
    refusion: DecodeStats | None = None


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "refusion"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


def surrogate_field(request: BaseModel) -> str | None:
    """The dotted path of the first string in the request holding a lone surrogate, or None.

    JSON may escape half of a UTF-16 pair ("\\ud800"); Python keeps it in a str that cannot be
    written as UTF-8, so such a value would only fail once a response or a log line is encoded,
    after the decode. A dict key holding one names its dict. Iterative: nesting depth is the
    client's choice.
    """
    stack: list[tuple[str, Any]] = [("", request)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            if not encodable(value):
                return path
            continue
        if isinstance(value, BaseModel):
            items = [(name, getattr(value, name)) for name in type(value).model_fields]
        elif isinstance(value, dict):
            if not all(encodable(key) for key in value if isinstance(key, str)):
                return path
            items = list(value.items())
        elif isinstance(value, (list, tuple)):
            items = list(enumerate(value))
        else:
            continue
        stack.extend((f"{path}.{key}" if path else str(key), item) for key, item in reversed(items))
    return None


def encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable(text: str) -> str:
    """`text` safe to write as UTF-8 (for error messages and logs that quote a client's input)."""
    return text if encodable(text) else text.encode("utf-8", "backslashreplace").decode("utf-8")


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None, code: str | None = None) -> dict:
    """OpenAI's error shape."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}
