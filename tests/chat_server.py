"""A real HTTP server on loopback that speaks the OpenAI chat-completions protocol (`POST /v1/chat/completions`), as
a vLLM server hosting a vision-language model does. It records every request and answers from a script: a reply
text, an HTTP error status, or a reply after a delay (the last entry repeats)."""

from __future__ import annotations

import http.server
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Answer:
    text: str = ""
    status: int = 200
    delay: float = 0.0


@dataclass
class ChatServer:
    model: str
    base_url: str = ""
    script: list[Answer] = field(default_factory=lambda: [Answer("The user wants to ...")])
    requests: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def play(self, *answers: Answer) -> None:
        with self.lock:
            self.script = list(answers)
            self.requests.clear()

    def next_answer(self) -> Answer:
        with self.lock:
            return self.script.pop(0) if len(self.script) > 1 else self.script[0]

    def received(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.requests)


def completion(model: str, text: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 90, "total_tokens": 190},
    }


def start_chat_server(model: str) -> tuple[ChatServer, http.server.ThreadingHTTPServer]:
    chat = ChatServer(model)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            if self.path != "/v1/chat/completions":
                return self._send(404, {"error": {"message": f"no route {self.path}"}})
            with chat.lock:
                chat.requests.append(body)
            answer = chat.next_answer()
            time.sleep(answer.delay)
            if answer.status != 200:
                return self._send(answer.status, {"error": {"message": "scripted failure", "type": "server_error"}})
            if body.get("model") != chat.model:
                return self._send(404, {"error": {"message": f"model {body.get('model')} is not served"}})
            self._send(200, completion(chat.model, answer.text))

        def _send(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                pass

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    chat.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    return chat, server
