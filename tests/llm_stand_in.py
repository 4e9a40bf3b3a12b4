"""An OpenAI-compatible chat endpoint on loopback, for judges on AI-gateway models in tests: every
completion answers a judge's verdict as JSON after ``delay`` seconds (a model takes time), and
each request is kept so a test can count them."""

from __future__ import annotations

import json
import time

from tests.services import LoopbackServer, QuietHandler, send_json

VERDICT = {"result": "yes", "rationale": "the stand-in judge agrees"}


class ChatStandIn(LoopbackServer):
    def __init__(self, delay: float = 0.0):
        self.requests: list[dict] = []
        stand_in = self

        class Handler(QuietHandler):
            def do_POST(self):  # noqa: N802 - the name BaseHTTPRequestHandler calls
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                stand_in.requests.append(body)
                time.sleep(delay)
                send_json(self, 200, {
                    "id": f"chatcmpl-{len(stand_in.requests)}", "object": "chat.completion", "created": int(time.time()),
                    "model": body.get("model", "stand-in"),
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": json.dumps(VERDICT)}}],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}})

        super().__init__(Handler)

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> ChatStandIn:
        self.start()
        return self

    def calls_mentioning(self, *texts: str) -> int:
        """How many requests carried every one of ``texts`` (in a judge's prompt: its name, a
        trace's output)."""
        bodies = [json.dumps(body) for body in list(self.requests)]
        return sum(1 for body in bodies if all(text in body for text in texts))

    def __exit__(self, *exc) -> None:
        self.stop()
