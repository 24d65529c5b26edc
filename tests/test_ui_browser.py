"""The web chat (`serve --ui`) in a real browser: headless Chromium (Debian's `chromium`, driven by playwright with
`executable_path`, since playwright's own browser download needs the internet) opens /ui, sends a Tibetan
message, waits for the streamed reply, presses Stop on a long answer and saves a screenshot. The model is a
rule-driven fake behind the real engine, so the test is quick and its answers are known. Skips, saying why,
when Chromium, playwright or gradio is absent (`make install-test` installs them)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).is_file():
    pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install --no-install-recommends chromium fonts-tibetan-machine "
                "(or run `make install-test`)", allow_module_level=True)
pytest.importorskip("gradio", reason="gradio is not installed: pip install -e '.[serve]'")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install -e '.[test]'")

from conftest import TIBETAN_SEED_SENTENCE  # noqa: E402
from fake_lm import RuleLM, scripted_rule  # noqa: E402

from langadapt.serve.engine import Engine  # noqa: E402
from langadapt.serve.server import BackgroundServer, build_app  # noqa: E402
from langadapt.tokenizer.load import load_tokenizer  # noqa: E402
from langadapt.tokenizer.templates import BUILTIN_TEMPLATES  # noqa: E402

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run"]
LONG_REPEATS = 40


@pytest.fixture(scope="module")
def served(tiny_tokenizer_dir):
    """(url, engine, mode, jobs): the web chat over a fake model that answers the Tibetan seed sentence,
    or, with mode["long"], that sentence LONG_REPEATS times, slowly."""
    tok = load_tokenizer(tiny_tokenizer_dir)
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    short = scripted_rule(tok(TIBETAN_SEED_SENTENCE, add_special_tokens=False)["input_ids"], len(tok), eos)
    long = scripted_rule(tok(TIBETAN_SEED_SENTENCE * LONG_REPEATS, add_special_tokens=False)["input_ids"],
                         len(tok), eos)
    mode = {"long": False}

    def rule(ids):
        if mode["long"]:
            time.sleep(0.03)
            return long(ids)
        return short(ids)

    engine = Engine(RuleLM(len(tok), rule, eos_token_id=eos, pad_token_id=eos), tok, BUILTIN_TEMPLATES["chatml"],
                    name="tiny")
    jobs = []
    submit = engine.submit
    engine.submit = lambda *a, **kw: jobs.append(submit(*a, **kw)) or jobs[-1]
    with BackgroundServer(build_app(lambda: engine, ui=True)) as url:
        yield url, engine, mode, jobs
    engine.close()


def test_web_chat_in_chromium(served, tmp_path):
    url, engine, mode, jobs = served
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 800})
            page.goto(url + "/ui/", timeout=120_000)
            box = page.locator("#message textarea")
            box.fill("བཀྲ་ཤིས་བདེ་ལེགས།")
            box.press("Enter")
            bot = page.locator('[data-testid="bot"]')
            sync_api.expect(bot.last).to_have_text(TIBETAN_SEED_SENTENCE, timeout=60_000)
            sync_api.expect(page.locator('[data-testid="user"]').first).to_have_text("བཀྲ་ཤིས་བདེ་ལེགས།")
            assert jobs[0].done.wait(10) and jobs[0].result.finish_reason == "stop"

            mode["long"] = True
            box.fill("ཡང་བསྐྱར་བཤད་རོགས།")
            box.press("Enter")
            sync_api.expect(bot).to_have_count(2, timeout=60_000)
            page.wait_for_function("() => document.querySelectorAll('[data-testid=bot]')[1].innerText.length > 20",
                                   timeout=60_000)
            page.locator('[data-testid="stop-button"]').click()
            assert jobs[1].done.wait(10), "Stop did not end the generation"
            assert jobs[1].result.finish_reason == "cancelled"
            assert jobs[1].result.completion_tokens < len(TIBETAN_SEED_SENTENCE.encode()) * LONG_REPEATS
            shown = bot.nth(1).inner_text()
            assert (TIBETAN_SEED_SENTENCE * LONG_REPEATS).startswith(shown) and "\ufffd" not in shown
            page.screenshot(path=str(tmp_path / "web-chat.png"), full_page=True)
            assert (tmp_path / "web-chat.png").stat().st_size > 10_000
        finally:
            browser.close()
            mode["long"] = False
    assert not engine.busy()
