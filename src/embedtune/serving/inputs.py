"""The body of ``POST /v1/embeddings``: parsing, validation, text sanitation, tokenizing within limits.

Every function here turns a bad input into an :class:`ApiError` with a 4xx status and a message naming the
field or the input's index; none of them lets an input-caused exception escape (a 500 means the server
failed, never the client). The checks run cheapest first, so a hostile request costs little:

1. JSON: malformed bytes, invalid UTF-8, numbers of over 4,300 digits and nesting too deep for the parser
   are 400.
2. Shape and types: 404 for another model, 413 for too many inputs, 422 for the rest.
3. Texts, without tokenizing: a lone surrogate (legal JSON, ``"\\ud800"``, but not encodable text) is 422
   ``invalid_text``; an empty or whitespace-only text is 422 ``empty_input``; a text longer than
   :attr:`TextLimits.max_chars` characters cannot fit the token limit and is refused (422
   ``input_too_long``) or, with ``truncate``, cut to that many characters before it is tokenized. NUL and
   other control characters are text like any other: kept and tokenized.
4. Tokens (:func:`tokenize_checked`, run off the event loop): over the token limit is 422 unless truncating.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ..models.embedder import Embedder

_SURROGATE = re.compile("[\ud800-\udfff]")  # the only code points of a str that UTF-8 cannot encode


class ApiError(Exception):
    """An error answered with an OpenAI-style JSON body (and, for some, extra headers: ``Retry-After``,
    ``Connection: close``)."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type_: str = "invalid_request_error", headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type_
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def _short(value: Any, limit: int = 60) -> str:
    """``repr`` of a client's value, cut so that an error message never echoes a huge input back."""
    try:
        text = repr(value)
    except (ValueError, RecursionError):  # an int past Python's digit limit, a deeply nested list
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class TextLimits:
    """How long an input may be: ``max_tokens`` (prompt and EOS included) and the character bound derived
    from it. No token of the tokenizer covers more than ``token_chars`` characters (its longest vocabulary
    entry), so a text of more than ``max_chars = max_tokens * token_chars`` characters has more than
    ``max_tokens`` tokens and is refused, or cut there, without being tokenized. The bound is exact for
    tokenizers that give every character a token (byte-level BPE, SentencePiece with byte fallback: all the
    model families embedtune targets); for one that drops whitespace or maps long unknown words to one
    token it is a plain character cap."""

    max_tokens: int
    token_chars: int

    @property
    def max_chars(self) -> int:
        return self.max_tokens * self.token_chars

    @classmethod
    def for_tokenizer(cls, tokenizer: Any, max_tokens: int) -> TextLimits:
        """Limits for a Hugging Face tokenizer (its vocabulary, added tokens included, gives ``token_chars``)."""
        if max_tokens < 2:
            raise ValueError(f"max_tokens_per_input must be at least 2 (text + EOS), got {max_tokens}")
        vocab = tokenizer.get_vocab()
        return cls(max_tokens=max_tokens, token_chars=max((len(t) for t in vocab), default=1))


# ---- parsing ----------------------------------------------------------------------------------------------
def _load_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except UnicodeDecodeError as exc:
        raise ApiError(400, f"the request body is not valid UTF-8 (byte {exc.start})", code="invalid_json") from None
    except json.JSONDecodeError as exc:
        raise ApiError(400, f"the request body is not valid JSON: {exc}", code="invalid_json") from None
    except ValueError:  # int('9' * 5000): Python refuses to read integers of over 4,300 digits
        raise ApiError(400, "the request body holds a number with too many digits", code="invalid_json") from None
    except RecursionError:
        raise ApiError(400, "the request body is nested too deeply", code="invalid_json") from None


def _input_list(req: dict, max_inputs: int) -> list:
    if "input" not in req:
        raise ApiError(422, "'input' is required: a string or a list of strings", param="input",
                       code="missing_required_parameter")
    texts = req["input"]
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list):
        raise ApiError(422, f"'input' must be a string or a list of strings, not {type(texts).__name__}",
                       param="input", code="invalid_type")
    if not texts:
        raise ApiError(422, "'input' is an empty list; send at least one string", param="input", code="empty_input")
    if len(texts) > max_inputs:
        raise ApiError(413, f"'input' has {len(texts)} items; this server takes at most {max_inputs} per request",
                       param="input", code="too_many_inputs")
    return texts


def check_text(i: int, t: Any) -> None:
    """Refuse ``input[i]`` unless it is a non-blank string that UTF-8 can encode (422, naming the index)."""
    param = f"input[{i}]"
    if isinstance(t, (int, list)) and not isinstance(t, bool):
        raise ApiError(422, f"{param} is a token-id array; this server takes text only, send strings",
                       param=param, code="token_ids_not_supported")
    if not isinstance(t, str):
        raise ApiError(422, f"{param} is a {type(t).__name__}; expected a string", param=param, code="invalid_type")
    if not t or t.isspace():
        raise ApiError(422, f"{param} is empty or whitespace-only", param=param, code="empty_input")
    bad = _SURROGATE.search(t)
    if bad:
        raise ApiError(422, f"{param} is not valid Unicode text: a lone surrogate (U+{ord(bad.group()):04X}) at "
                       f"character {bad.start()}", param=param, code="invalid_text")


def parse_request(body: bytes, *, model_name: str, dim: int, max_inputs: int) -> dict[str, Any]:
    """Validate an embeddings request body; returns ``texts``, ``encoding_format``, ``dimensions``, ``truncate``.

    Raises:
        ApiError: 400 for a body that is not JSON, 404 for another model, 413 for too many inputs, 422 otherwise.
    """
    req = _load_json(body)
    if not isinstance(req, dict):
        raise ApiError(422, "the request body must be a JSON object", code="invalid_type")
    model = req.get("model", model_name)
    if not isinstance(model, str):
        raise ApiError(422, "'model' must be a string", param="model", code="invalid_type")
    if model != model_name:
        raise ApiError(404, f"model {_short(model)} is not served here; this server serves {model_name!r}",
                       param="model", code="model_not_found")
    texts = _input_list(req, max_inputs)
    for i, t in enumerate(texts):
        check_text(i, t)
    fmt = req.get("encoding_format")
    fmt = "float" if fmt is None else fmt
    if fmt not in ("float", "base64"):
        raise ApiError(422, f"'encoding_format' must be 'float' or 'base64', not {_short(fmt)}",
                       param="encoding_format", code="invalid_value")
    dims = req.get("dimensions")
    if dims is not None and (not isinstance(dims, int) or isinstance(dims, bool) or not 1 <= dims <= dim):
        raise ApiError(422, f"'dimensions' must be an integer from 1 to {dim} (this model's size), not "
                       f"{_short(dims)}", param="dimensions", code="invalid_value")
    truncate = req.get("truncate", False)
    if not isinstance(truncate, bool):
        raise ApiError(422, "'truncate' must be true or false", param="truncate", code="invalid_type")
    return {"texts": texts, "encoding_format": fmt, "dimensions": dims, "truncate": truncate}


def bound_texts(texts: list[str], limits: TextLimits, truncate: bool) -> list[str]:
    """Texts within ``limits.max_chars`` characters, checked without tokenizing: longer ones are cut there
    (``truncate``; what is cut lies beyond the token limit, which tokenizing cuts next) or refused.

    Raises:
        ApiError: 422 ``input_too_long`` naming the first text over the bound (when not truncating).
    """
    cap, out = limits.max_chars, texts
    for i, t in enumerate(texts):
        if len(t) > cap:
            if not truncate:
                raise ApiError(422, f"input[{i}] has {len(t):,} characters, more than fit in {limits.max_tokens} "
                               f"tokens (at most {cap:,}); shorten it or send \"truncate\": true",
                               param=f"input[{i}]", code="input_too_long")
            out = list(texts) if out is texts else out  # the caller's list is left as it was
            out[i] = t[:cap]
    return out


# ---- tokens -----------------------------------------------------------------------------------------------
def tokenize_checked(embedder: Embedder, texts: Sequence[str], max_tokens: int, truncate: bool,
                     first_index: int = 0) -> list[list[int]]:
    """Id rows (prompt applied, EOS last) through the Embedder's own tokenizer, within ``max_tokens``.

    With ``truncate``, over-long texts are cut like ``Embedder.encode`` cuts them (EOS and a prompt's suffix
    kept); without it, rows are made with a cap one above the limit, and a row that reaches it is refused.
    ``first_index`` is the index of ``texts[0]`` in the request (error messages name the request's index).
    Call it from one thread only: a fast tokenizer must not be shared across threads.

    Raises:
        ApiError: 422 naming the first input over the limit (when not truncating), or one the tokenizer
            cannot read.
    """
    tt = embedder.text_tokenizer
    cap = max_tokens if truncate else max_tokens + 1
    try:
        rows = tt.ids(texts, cap)
    except Exception:  # noqa: BLE001 - find the text that broke the tokenizer; if none alone does, it is ours
        for i, t in enumerate(texts):
            try:
                tt.ids([t], cap)
            except Exception as exc:  # noqa: BLE001
                param = f"input[{first_index + i}]"
                raise ApiError(422, f"{param} could not be tokenized ({type(exc).__name__})", param=param,
                               code="invalid_text") from None
        raise
    if not truncate:
        for i, row in enumerate(rows):
            if len(row) > max_tokens:
                param = f"input[{first_index + i}]"
                raise ApiError(422, f"{param} is longer than {max_tokens} tokens (prompt and EOS included); "
                               "shorten it or send \"truncate\": true", param=param, code="input_too_long")
    return rows


def format_vectors(vectors: np.ndarray, *, dimensions: int | None, normalize: bool, encoding_format: str) -> list:
    """Matryoshka-style truncation to ``dimensions`` (re-normalized when the model normalizes), then the
    JSON form: lists of floats, or base64 of little-endian float32 bytes."""
    if dimensions is not None and dimensions < vectors.shape[1]:
        vectors = vectors[:, :dimensions]  # (N, d)
        if normalize:
            vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    vectors = np.ascontiguousarray(vectors, dtype="<f4")
    if encoding_format == "base64":
        return [base64.b64encode(v.tobytes()).decode("ascii") for v in vectors]
    return vectors.tolist()
