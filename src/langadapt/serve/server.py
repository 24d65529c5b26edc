"""`langadapt serve`: an OpenAI-compatible HTTP API (FastAPI + uvicorn) over the generation engine.

Endpoints: `GET /health` (public; 503 while the model loads), `GET /v1/models`,
`POST /v1/chat/completions`, `POST /v1/completions`; with `--ui`, a gradio chat at `/ui`.

- Requests are checked against OpenAI's fields. The ones honoured: model, messages/prompt,
  max_tokens (max_completion_tokens), temperature (0: greedy), top_p, stop, seed, stream,
  stream_options.include_usage. A field the server cannot honour (n > 1, logprobs, tools, a
  non-text response_format, penalties, logit_bias, echo, suffix, best_of, or any unknown field)
  gets a 400 that names it instead of being ignored.
- Errors always have OpenAI's envelope `{"error": {"message", "type", "param", "code"}}`:
  validation 400, bad API key 401, unknown model 404, a full queue 503 with Retry-After; a
  failure after a stream has started is a `data: {"error": ...}` event.
- Streams are plain server-sent events: `data: {chunk}\\n\\n` ... `data: [DONE]\\n\\n`. A client
  that disconnects cancels its generation (stream or not), so the next request is served.
- `--api-key` (or $LANGADAPT_API_KEY) requires `Authorization: Bearer KEY` on every endpoint but
  /health (and a login with that key as the password for /ui). Binds 127.0.0.1 unless --host says
  otherwise.

The app is built by `build_app(load_engine, ...)` around any object with the engine's interface
(tests use a fake one); `serve_command` loads the model in the background so /health answers at once.
"""

# No `from __future__ import annotations` here: FastAPI reads the request models from the endpoints' annotations,
# and they are local to build_app.
import asyncio
import hmac
import json
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from langadapt.errors import LangadaptError
from langadapt.model.generate import Generation, Sampling
from langadapt.model.load import MODEL_HELP
from langadapt.options import Options, OptionError, embed, option
from langadapt.serve.engine import ContextTooLong, EngineBusy, ModelSourceOptions

API_KEY_ENV = "LANGADAPT_API_KEY"
DISCONNECT_POLL_SECONDS = 0.25


class RequestError(LangadaptError):
    """A request the server refuses: HTTP status, message, the field at fault, an error code."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.param, self.code, self.headers = status, param, code, headers or {}

    @property
    def type(self) -> str:
        return {401: "authentication_error", 404: "invalid_request_error", 503: "server_error",
                500: "server_error"}.get(self.status, "invalid_request_error")

    def body(self) -> dict:
        return {"error": {"message": str(self), "type": self.type, "param": self.param, "code": self.code}}


# ----------------------------------------------------------------------------- request bodies

def _request_models():
    """The pydantic request models (built on first use: pydantic is imported only by `serve`)."""
    from pydantic import BaseModel, ConfigDict, Field

    class StreamOptions(BaseModel):
        model_config = ConfigDict(extra="forbid")
        include_usage: bool = False

    class Message(BaseModel):
        model_config = ConfigDict(extra="forbid")
        role: Literal["system", "developer", "user", "assistant"]
        content: str | list[dict[str, Any]]
        name: str | None = None

    class Common(BaseModel):
        model_config = ConfigDict(extra="forbid")
        model: str
        max_tokens: int | None = Field(None, ge=1)
        temperature: float = Field(1.0, ge=0, le=2)
        top_p: float = Field(1.0, gt=0, le=1)
        stop: str | list[str] | None = None
        seed: int | None = None
        stream: bool = False
        stream_options: StreamOptions | None = None
        n: int | None = None
        presence_penalty: float | None = None
        frequency_penalty: float | None = None
        logit_bias: dict[str, float] | None = None
        user: str | None = None

    class ChatRequest(Common):
        messages: list[Message] = Field(min_length=1)
        max_completion_tokens: int | None = Field(None, ge=1)
        logprobs: bool | None = None
        top_logprobs: int | None = None
        tools: list[dict[str, Any]] | None = None
        tool_choice: Any = None
        parallel_tool_calls: bool | None = None
        response_format: dict[str, Any] | None = None

    class CompletionRequest(Common):
        prompt: str | list[str]
        logprobs: int | None = None
        echo: bool | None = None
        suffix: str | None = None
        best_of: int | None = None

    return ChatRequest, CompletionRequest


def refused_field(request) -> tuple[str, str] | None:
    """(field, why) of the first field of `request` the server cannot honour, or None."""
    def value(name):
        return getattr(request, name, None)

    checks = [
        ("n", value("n") not in (None, 1), "only n=1 is supported"),
        ("logprobs", value("logprobs") not in (None, False, 0), "log probabilities are not supported"),
        ("top_logprobs", value("top_logprobs") not in (None, 0), "log probabilities are not supported"),
        ("tools", bool(value("tools")), "tools are not supported"),
        ("tool_choice", value("tool_choice") not in (None, "none"), "tools are not supported"),
        ("parallel_tool_calls", bool(value("parallel_tool_calls")), "tools are not supported"),
        ("response_format", (value("response_format") or {"type": "text"}).get("type") != "text",
         "only the text response format is supported"),
        ("presence_penalty", value("presence_penalty") not in (None, 0), "penalties are not supported"),
        ("frequency_penalty", value("frequency_penalty") not in (None, 0), "penalties are not supported"),
        ("logit_bias", bool(value("logit_bias")), "logit_bias is not supported"),
        ("echo", bool(value("echo")), "echo is not supported"),
        ("suffix", bool(value("suffix")), "suffix is not supported"),
        ("best_of", value("best_of") not in (None, 1), "only best_of=1 is supported"),
    ]
    return next(((name, why) for name, bad, why in checks if bad), None)


def stop_strings(stop: str | list[str] | None) -> list[str]:
    """The `stop` field as a list (at most 4, as OpenAI allows)."""
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > 4:
        raise RequestError(400, f"at most 4 stop strings are allowed, got {len(stops)}", param="stop")
    return [s for s in stops if s]


def message_text(content: str | list[dict], where: str) -> str:
    """The text of a message's content: a string, or a list of {"type": "text", "text": ...} parts."""
    if isinstance(content, str):
        return content
    parts = []
    for i, part in enumerate(content):
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise RequestError(400, f"only text content parts are supported, got type {part.get('type')!r}",
                               param=f"{where}.content[{i}]")
        parts.append(part["text"])
    return "".join(parts)


def _validation_param(errors: list[dict]) -> tuple[str, str]:
    """(param, message) of the first pydantic validation error of a request body."""
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) if loc else None
    kind = first.get("type", "")
    if kind == "extra_forbidden":
        return param, f"unsupported field '{param}': the server cannot honour it"
    if kind == "missing":
        return param, f"'{param}' is required"
    return param, f"'{param}': {first.get('msg', 'invalid value')}" if param else first.get("msg", "invalid request")


# ----------------------------------------------------------------------------- the app

def build_app(load_engine: Callable[[], Any], api_key: str | None = None, ui: bool = False,
              host: str = "127.0.0.1", default_max_tokens: int = 512,
              on_load_error: Callable[[str], None] | None = None):
    """The FastAPI app: the OpenAI endpoints over the engine `load_engine()` returns (called in a
    background thread at start-up, so /health answers 503 until it is ready), plus gradio at /ui.
    A load that fails is reported by /health and every request, and handed to `on_load_error(message)`
    (`serve` stops the server with it)."""
    from fastapi import APIRouter, Depends, FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException

    ChatRequest, CompletionRequest = _request_models()
    state: dict[str, Any] = {"engine": None, "error": None}

    def load() -> None:
        try:
            state["engine"] = load_engine()
        except Exception as e:  # noqa: BLE001 - reported by /health and every request
            state["error"] = str(e) if isinstance(e, LangadaptError) else f"{type(e).__name__}: {e}"
            if on_load_error:
                on_load_error(state["error"])

    async def lifespan(app):
        loader = threading.Thread(target=load, name="langadapt-load", daemon=True)
        loader.start()
        yield
        loader.join(timeout=0)
        if state["engine"] is not None and hasattr(state["engine"], "close"):
            state["engine"].close()

    app = FastAPI(title="langadapt", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.langadapt = state

    def error_response(e: RequestError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(RequestError)
    async def _request_error(request, e: RequestError):
        return error_response(e)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, e: RequestValidationError):
        param, message = _validation_param(e.errors())
        return error_response(RequestError(400, message, param=param, code="invalid_value"))

    @app.exception_handler(HTTPException)
    async def _http_error(request, e: HTTPException):
        return error_response(RequestError(e.status_code, str(e.detail), code="not_found" if e.status_code == 404
                                           else None))

    def engine() -> Any:
        if state["error"]:
            raise RequestError(500, f"the model failed to load: {state['error']}", code="model_load_failed")
        if state["engine"] is None:
            raise RequestError(503, "the model is still loading", code="loading", headers={"Retry-After": "5"})
        return state["engine"]

    def check_api_key(request: Request) -> None:  # a dependency, not a middleware: those hide disconnects
        if api_key and not hmac.compare_digest(request.headers.get("authorization", "").encode(),
                                               f"Bearer {api_key}".encode()):
            raise RequestError(401, "incorrect or missing API key: send the header 'Authorization: Bearer KEY'",
                               code="invalid_api_key")

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(check_api_key)])

    @app.get("/health")
    async def health():
        if state["error"]:
            return JSONResponse({"status": "failed", "error": state["error"]}, status_code=500)
        if state["engine"] is None:
            return JSONResponse({"status": "loading"}, status_code=503, headers={"Retry-After": "5"})
        return {"status": "ok", "model": state["engine"].name}

    @v1.get("/models")
    async def models():
        served = engine()
        return {"object": "list", "data": [{"id": served.name, "object": "model", "created": 0,
                                            "owned_by": "langadapt"}]}

    def start(served, request, prompt_ids: list[int], stop_ids: list[int], max_tokens: int | None):
        """Submit a job whose events land in an asyncio queue; (job, queue)."""
        if request.model != served.name:
            raise RequestError(404, f"the model '{request.model}' does not exist; this server serves "
                                    f"'{served.name}'", param="model", code="model_not_found")
        refused = refused_field(request)
        if refused:
            raise RequestError(400, f"'{refused[0]}': {refused[1]}", param=refused[0], code="unsupported_field")
        sampling = Sampling(max_new_tokens=max_tokens or default_max_tokens, temperature=request.temperature,
                            top_p=request.top_p, seed=request.seed, stop=stop_strings(request.stop))
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        try:  # the inference thread hands events over to this event loop
            job = served.submit(prompt_ids, sampling, stop_ids,
                                lambda e: loop.call_soon_threadsafe(events.put_nowait, e))
        except EngineBusy as e:
            raise RequestError(503, str(e), code="server_overloaded", headers={"Retry-After": str(e.retry_after)})
        except ContextTooLong as e:
            raise RequestError(400, str(e), param="messages" if hasattr(request, "messages") else "prompt",
                               code="context_length_exceeded")
        return job, events

    async def collect(events: asyncio.Queue, job, http_request: Request) -> tuple[list[str], Any]:
        """(text pieces, last event) of a job; the last event is None when the client went away (the job is
        then cancelled), else the Generation or the exception that ended it."""
        pieces: list[str] = []
        checked = time.monotonic()
        while True:
            try:
                event = await asyncio.wait_for(events.get(), timeout=DISCONNECT_POLL_SECONDS)
            except asyncio.TimeoutError:
                event = ""  # nothing new: only look for a disconnect
            if time.monotonic() - checked >= DISCONNECT_POLL_SECONDS:
                checked = time.monotonic()
                if await http_request.is_disconnected():
                    job.cancel()
                    return pieces, None
            if not isinstance(event, str):
                return pieces, event
            pieces.append(event)

    def usage(result: Generation) -> dict:
        return {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
                "total_tokens": result.prompt_tokens + result.completion_tokens}

    def finish_reason(result: Generation) -> str:
        return "length" if result.finish_reason == "length" else "stop"

    def error_event(e: BaseException) -> str:
        body = RequestError(500, f"generation failed: {type(e).__name__}: {e}", code="generation_failed").body()
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    async def respond(http_request: Request, request, prompt_ids, stop_ids, max_tokens, chat: bool):
        served = engine()
        job, events = start(served, request, prompt_ids, stop_ids, max_tokens)
        ident = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        created = int(time.time())
        head = {"id": ident, "created": created, "model": served.name}

        def choice(text: str | None, reason: str | None, first: bool = False) -> dict:
            if not chat:
                return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": reason}
            delta = {} if text is None else {"content": text}
            if first:
                delta = {"role": "assistant", "content": ""}
            return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}

        chunk_object = "chat.completion.chunk" if chat else "text_completion"
        if request.stream:
            include_usage = bool(request.stream_options and request.stream_options.include_usage)

            def sse(choices: list, **extra) -> str:
                chunk = {**head, "object": chunk_object, "choices": choices, **extra}
                return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"

            async def stream():
                try:
                    if chat:
                        yield sse([choice(None, None, first=True)])
                    while True:
                        event = await events.get()  # a disconnect cancels this task; `finally` cancels the job
                        if isinstance(event, str):
                            yield sse([choice(event, None)])
                        elif isinstance(event, BaseException):
                            yield error_event(event)
                            break
                        else:
                            yield sse([choice(None if chat else "", finish_reason(event))])
                            if include_usage:
                                yield sse([], usage=usage(event))
                            break
                    yield "data: [DONE]\n\n"
                finally:
                    job.cancel()

            return StreamingResponse(stream(), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        pieces, event = await collect(events, job, http_request)
        if event is None:  # the client went away
            return JSONResponse({}, status_code=499)
        if isinstance(event, BaseException):
            raise RequestError(500, f"generation failed: {type(event).__name__}: {event}", code="generation_failed")
        text = "".join(pieces)
        if chat:
            body_choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                           "finish_reason": finish_reason(event)}
        else:
            body_choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason(event)}
        return {**head, "object": "chat.completion" if chat else "text_completion", "choices": [body_choice],
                "usage": usage(event)}

    @v1.post("/chat/completions")
    async def chat_completions(request: ChatRequest, http_request: Request):
        served = engine()
        messages = [{"role": "system" if m.role == "developer" else m.role,
                     "content": message_text(m.content, f"messages[{i}]")} for i, m in enumerate(request.messages)]
        try:
            prompt_ids = served.chat_prompt(messages)
        except LangadaptError as e:
            raise RequestError(400, str(e), param="messages") from e
        return await respond(http_request, request, prompt_ids, served.chat_stop_ids,
                             request.max_completion_tokens or request.max_tokens, chat=True)

    @v1.post("/completions")
    async def completions(request: CompletionRequest, http_request: Request):
        served = engine()
        prompts = [request.prompt] if isinstance(request.prompt, str) else request.prompt
        if len(prompts) != 1:
            raise RequestError(400, f"one prompt per request is supported, got {len(prompts)}", param="prompt")
        return await respond(http_request, request, served.text_prompt(prompts[0]), served.text_stop_ids,
                             request.max_tokens or 16, chat=False)

    app.include_router(v1)
    if ui:
        from langadapt.serve.ui import mount_ui

        mount_ui(app, lambda: engine(), api_key=api_key, host=host)
    return app


# ----------------------------------------------------------------------------- running it

class BackgroundServer:
    """Serve an app with uvicorn in a thread (tests and benchmarks): `with BackgroundServer(app) as url: ...`."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0):
        import socket

        import uvicorn

        if port == 0:
            with socket.socket() as s:
                s.bind((host, 0))
                port = s.getsockname()[1]
        self.url = f"http://{host}:{port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not start on {self.url}")
            time.sleep(0.05)
        return self.url

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@dataclass
class ServeOptions(Options):
    """Serve a model over an OpenAI-compatible HTTP API (FastAPI + uvicorn): GET /health, GET /v1/models,
    POST /v1/chat/completions and /v1/completions, streamed as server-sent events when asked. One inference
    thread decodes up to --max-batch requests together (continuous batching: a request joins and leaves the
    batch at any step); more wait in a bounded queue (503 + Retry-After when it is full); a client that
    disconnects cancels its generation. --ui adds a gradio chat at /ui on the same server."""

    model: str = option(None, metavar="MODEL", positional=True, required=True, help=MODEL_HELP)
    source: ModelSourceOptions = embed(ModelSourceOptions)
    host: str = option("127.0.0.1", help="address to bind (0.0.0.0 exposes the server to the network)")
    port: int = option(8000, help="TCP port")
    api_key: str | None = option(None, metavar="KEY", help=f"require 'Authorization: Bearer KEY' (default: "
                                                          f"${API_KEY_ENV} when set)")
    max_batch: int = option(32, help="requests decoded together (one forward pass per token for all of them)")
    max_queue: int = option(32, help="requests that may wait for a place in the batch; more get 503")
    max_tokens: int = option(512, help="tokens per chat answer when a request does not say (max_tokens)")
    served_model_name: str | None = option(None, metavar="NAME", help="the model id clients send (default: MODEL "
                                                                      "as given)")
    ui: bool = option(False, help="also serve a gradio chat at /ui (needs the 'serve' extra)")

    def __post_init__(self):
        super().__post_init__()
        if not 0 <= self.port <= 65535:
            raise OptionError("port", f"must be 0-65535, got {self.port}")
        for name in ("max_queue", "max_batch"):
            if getattr(self, name) < 1:
                raise OptionError(name, f"must be positive, got {getattr(self, name)}")
        if self.max_tokens < 1:
            raise OptionError("max_tokens", f"must be positive, got {self.max_tokens}")


def _require(module: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise LangadaptError(f"`langadapt serve` needs {module}; install the extra: pip install 'langadapt[serve]'")


def serve_command(opts: ServeOptions) -> int:
    """Check the model is there, load it (in the background: /health answers at once) and serve it until
    Ctrl-C. A model that is not there fails before the server starts; one that fails to load stops it."""
    for module in ("fastapi", "uvicorn") + (("gradio",) if opts.ui else ()):
        _require(module)
    import uvicorn

    from langadapt.serve.engine import Engine, check_served_model, load_served_model

    check_served_model(opts.model, opts.source)

    name = opts.served_model_name or opts.model

    def load_engine():
        model, tokenizer, template = load_served_model(opts.model, opts.source)
        engine = Engine(model, tokenizer, template, max_queue=opts.max_queue, max_batch=opts.max_batch, name=name)
        print(f"langadapt serve: {name} ready at http://{opts.host}:{opts.port}/v1"
              + (f" and http://{opts.host}:{opts.port}/ui" if opts.ui else ""), flush=True)
        return engine

    failure: list[str] = []

    def stop(error: str) -> None:
        print(f"langadapt serve: the model failed to load: {error}", file=sys.stderr, flush=True)
        failure.append(error)
        server.should_exit = True

    api_key = opts.api_key or os.environ.get(API_KEY_ENV) or None
    app = build_app(load_engine, api_key=api_key, ui=opts.ui, host=opts.host, default_max_tokens=opts.max_tokens,
                    on_load_error=stop)
    server = uvicorn.Server(uvicorn.Config(app, host=opts.host, port=opts.port, log_level="info"))
    server.run()
    if failure:
        raise LangadaptError(f"the model failed to load: {failure[0]}")
    return 0
