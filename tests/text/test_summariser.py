"""BrgSA summariser: the deterministic rule backend and the OpenAI-compatible LLM backend with its cache."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from medvl3d.text.reports import is_english
from medvl3d.text.summariser import (
    NO_FINDINGS,
    LLMError,
    LLMSummariser,
    RuleSummariser,
    Summariser,
    build_summariser,
    mention_locations,
)

REPORT = (
    "Trachea, both main bronchi are open. Cardiomegaly is observed. Pericardial effusion was not detected. "
    "When examined in the lung parenchyma window; bilateral pleural effusion is observed. "
    "A 6 mm nodule is seen in the upper lobe of the right lung. No consolidation. Possible atelectasis."
)


def test_rule_summary_exact():
    s = RuleSummariser()
    assert isinstance(s, Summariser)
    assert s.summarise(REPORT) == (
        "cardiomegaly. pleural effusion (bilateral). lung nodule (right upper lobe)."
    )
    with_unc = RuleSummariser(include_uncertain=True).summarise(REPORT)
    assert with_unc.endswith("possible atelectasis.")
    assert (
        RuleSummariser(with_locations=False).summarise(REPORT)
        == "cardiomegaly. pleural effusion. lung nodule."
    )


def test_rule_summary_negation_scope():
    text = "No pleural effusion, but bilateral consolidations are present."
    assert RuleSummariser().summarise(text) == "consolidation (bilateral)."


@pytest.mark.parametrize("text", ["", "   ", "...", "Trachea and both main bronchi are open. No effusion."])
def test_rule_summary_nothing_found(text):
    assert RuleSummariser().summarise(text) == NO_FINDINGS


def test_rule_summary_long_report():
    normal = "Heart contour and size are normal. No pleural effusion was detected. "
    report = normal * 1000 + "There is a sliding hiatal hernia."
    assert RuleSummariser().summarise(report) == "hiatal hernia."


def test_locations():
    assert mention_locations("nodules in the right lung lower lobe and left upper lobe") == [
        "right lower lobe",
        "left upper lobe",
        "bilateral",
    ]
    assert mention_locations("effusion in both hemithorax") == ["bilateral"]
    assert mention_locations("right paratracheal lymph node") == ["paratracheal", "right"]


def test_real_reports_summaries(real_dir):
    import csv

    with open(real_dir / "ctrate_reports" / "train.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))[:100]
    s = RuleSummariser()
    for row in rows:
        summary = s.summarise(row["report_text"])
        assert summary == summary.lower() and summary.endswith(".")
    # The summary names pleural effusion exactly when the manual label says so, in nearly all reports.
    assert all(is_english(s.summarise(r["report_text"])) for r in rows)
    hits = [
        ("pleural effusion" in s.summarise(r["report_text"])) == (r["Pleural effusion"] == "1") for r in rows
    ]
    assert sum(hits) >= 95


# ---------------------------------------------------------------------------------------------------
# A tiny OpenAI-compatible server on 127.0.0.1 (port 0).


class _Server:
    def __init__(self, reply):
        self.requests: list[dict] = []
        self.reply = reply  # (status, body bytes)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server API)
                length = int(self.headers["Content-Length"])
                outer.requests.append(
                    {
                        "path": self.path,
                        "auth": self.headers.get("Authorization"),
                        "body": json.loads(self.rfile.read(length)),
                    }
                )
                status, body = outer.reply(outer.requests[-1]["body"])
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


def _completion(content):
    return 200, json.dumps(
        {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}
    ).encode()


@pytest.fixture
def server():
    servers = []

    def make(reply):
        srv = _Server(reply)
        servers.append(srv)
        return srv

    yield make
    for srv in servers:
        try:
            srv.stop()
        except OSError:
            pass


def test_llm_request_and_cache(server, tmp_path, monkeypatch):
    srv = server(lambda body: _completion(" pleural effusion (bilateral). "))
    monkeypatch.setenv("TEST_LLM_KEY", "sk-test")
    s = LLMSummariser(
        srv.url, "tiny-model", api_key_env="TEST_LLM_KEY", cache_dir=tmp_path / "cache", timeout=5
    )
    assert s.summarise(REPORT) == "pleural effusion (bilateral)."
    (req,) = srv.requests
    assert req["path"] == "/v1/chat/completions"
    assert req["auth"] == "Bearer sk-test"
    body = req["body"]
    assert body["model"] == "tiny-model" and body["temperature"] == 0
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    assert body["messages"][0]["content"] == s.prompt and body["messages"][1]["content"] == REPORT
    # The answer is cached under sha256(model, prompt, report): served with the server stopped.
    cached = list((tmp_path / "cache").glob("*.json"))
    assert [p.stem for p in cached] == [s.cache_key(REPORT)]
    srv.stop()
    again = LLMSummariser(srv.url, "tiny-model", cache_dir=tmp_path / "cache", timeout=1)
    assert again.summarise(REPORT) == "pleural effusion (bilateral)."
    # A different model is a different key: it must ask the (stopped) server and fail clearly.
    other = LLMSummariser(srv.url, "other-model", cache_dir=tmp_path / "cache", timeout=1)
    with pytest.raises(LLMError, match="cannot reach"):
        other.summarise(REPORT)
    # Empty input needs no server at all.
    assert other.summarise("") == NO_FINDINGS


def test_llm_long_report_is_chunked(server, tmp_path):
    srv = server(
        lambda body: _completion(
            "lung nodule." if "nodule" in body["messages"][1]["content"] else NO_FINDINGS
        )
    )
    long_report = "Heart size is normal. " * 200 + "A nodule in the right upper lobe."
    s = LLMSummariser(srv.url, "m", cache_dir=None, max_chars=1000)
    assert s.summarise(long_report) == "lung nodule."
    assert len(srv.requests) == 5 and all(
        len(r["body"]["messages"][1]["content"]) <= 1000 for r in srv.requests
    )


@pytest.mark.parametrize(
    "reply, match",
    [
        (lambda body: (500, b'{"error": "boom"}'), "HTTP 500.*boom"),
        (lambda body: (200, b"not json"), "malformed answer"),
        (lambda body: (200, b'{"choices": []}'), "malformed answer"),
        (lambda body: _completion("   "), "empty message"),
    ],
)
def test_llm_errors(server, tmp_path, reply, match):
    srv = server(reply)
    s = LLMSummariser(srv.url, "m", cache_dir=tmp_path, timeout=5)
    with pytest.raises(LLMError, match=match):
        s.summarise(REPORT)
    assert not list(tmp_path.glob("*.json")), "failures are not cached"


def test_llm_missing_api_key(server, monkeypatch):
    srv = server(lambda body: _completion("x."))
    monkeypatch.delenv("NOT_SET_KEY_FOR_TEST", raising=False)
    with pytest.raises(LLMError, match="NOT_SET_KEY_FOR_TEST"):
        LLMSummariser(srv.url, "m", api_key_env="NOT_SET_KEY_FOR_TEST").summarise(REPORT)


def test_build_summariser(tmp_path):
    assert isinstance(build_summariser(None), RuleSummariser)
    assert build_summariser({"backend": "rule", "include_uncertain": True}).include_uncertain
    llm = build_summariser(
        {"backend": "llm", "url": "http://127.0.0.1:9", "model": "m", "cache_dir": str(tmp_path)}
    )
    assert isinstance(llm, LLMSummariser) and llm.endpoint == "http://127.0.0.1:9/v1/chat/completions"
    with pytest.raises(TypeError, match="temprature"):
        build_summariser({"backend": "llm", "url": "http://x", "model": "m", "temprature": 0})
    with pytest.raises(ValueError, match="backend"):
        build_summariser({"backend": "gpt"})
    with pytest.raises(ValueError, match="model"):
        build_summariser({"backend": "llm", "url": "http://x"})
    with pytest.raises(ValueError, match="http"):
        LLMSummariser("localhost:8000", "m")


def test_include_uncertain_keeps_hedged_but_not_historical_findings():
    from medvl3d.text.summariser import RuleSummariser

    s = RuleSummariser(include_uncertain=True)
    assert "consolidation" not in s.summarise(
        "The consolidation seen in the previous examination has regressed."
    )
    assert "possible consolidation" in s.summarise("Possible consolidation in the right lower lobe.")
