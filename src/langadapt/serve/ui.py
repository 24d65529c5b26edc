"""The web chat of `langadapt serve --ui`: a gradio `ChatInterface` mounted at /ui on the API's app.

It answers through the same engine as the API (same queue, UTF-8 mask, per-character text), with
a system-prompt box and the sampling settings; the Stop button cancels the generation. gradio is
imported only here, i.e. only with --ui (importing it takes seconds). With an API key, the page
asks for a login whose password is the key.
"""

from __future__ import annotations

import asyncio
import hmac
import os
from collections.abc import Callable

from langadapt.errors import LangadaptError
from langadapt.model.generate import Sampling
from langadapt.serve.chat import fit_history
from langadapt.serve.engine import EngineBusy


def _text(content) -> str:
    """A gradio message's content as text (a string, or a list of text parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)
    return str(content or "")


def conversation(message: str, history: list[dict], system: str) -> list[dict]:
    """The messages of a gradio chat turn: the system prompt, the earlier turns, the new message."""
    messages = [{"role": "system", "content": system.strip()}] if system and system.strip() else []
    messages += [{"role": h["role"], "content": _text(h["content"])} for h in history
                 if h.get("role") in ("user", "assistant")]
    return messages + [{"role": "user", "content": message}]


def answer_function(get_engine: Callable[[], object]):
    """The ChatInterface function: streams the growing answer; a Stop (task cancelled) cancels the job."""
    import gradio as gr

    async def answer(message: str, history: list[dict], system: str, temperature: float, top_p: float,
                     max_tokens: int):
        try:
            engine = get_engine()
        except LangadaptError as e:
            raise gr.Error(str(e)) from e
        sampling = Sampling(max_new_tokens=int(max_tokens), temperature=float(temperature), top_p=float(top_p))
        try:
            messages = fit_history(conversation(message, history, system),
                                   lambda m: len(engine.chat_prompt(m)), engine.context - sampling.max_new_tokens)
        except LangadaptError as e:
            raise gr.Error(str(e)) from e
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        try:
            job = engine.submit(engine.chat_prompt(messages), sampling, engine.chat_stop_ids,
                                lambda e: loop.call_soon_threadsafe(events.put_nowait, e))
        except EngineBusy as e:
            raise gr.Error(str(e)) from e
        text = ""
        try:
            while True:
                event = await events.get()
                if isinstance(event, str):
                    text += event
                    yield text
                elif isinstance(event, BaseException):
                    raise gr.Error(f"generation failed: {event}")
                else:
                    break
        finally:
            job.cancel()

    return answer


def mount_ui(app, get_engine: Callable[[], object], api_key: str | None = None, host: str = "127.0.0.1") -> None:
    """Mount the chat at /ui on `app` (a FastAPI app)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # nothing leaves the machine
    import gradio as gr

    blocks = gr.ChatInterface(
        answer_function(get_engine),
        textbox=gr.Textbox(placeholder="Message", show_label=False, elem_id="message", lines=1, max_lines=8,
                           submit_btn=True, stop_btn=True),
        chatbot=gr.Chatbot(elem_id="chat", height=480),
        additional_inputs=[
            gr.Textbox(label="System prompt", lines=2, elem_id="system"),
            gr.Slider(0.0, 2.0, value=0.7, step=0.05, label="Temperature (0: greedy)"),
            gr.Slider(0.05, 1.0, value=0.9, step=0.05, label="Top-p"),
            gr.Slider(1, 2048, value=256, step=1, label="Max new tokens"),
        ],
        additional_inputs_accordion=gr.Accordion(label="System prompt and sampling", open=False),
        title="langadapt chat",
        flagging_mode="never",
        api_visibility="private",
    )
    auth = (lambda user, password: hmac.compare_digest(password.encode(), api_key.encode())) if api_key else None
    theme = gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["monospace"])  # no web fonts to fetch
    gr.mount_gradio_app(app, blocks, path="/ui", server_name=host, auth=auth, theme=theme, ssr_mode=False,
                        mcp_server=False, footer_links=[])
