"""A MECAnywhere task in plain Python (standard library only).

The executor starts this container, waits for the line `meca-init-done`, then sends each
input as the body of `POST /` (Content-Type: application/json) and returns the body of the
answer to the caller.
"""
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def compute(data):
    """The task's work: here, greet whoever is named in the input."""
    name = data.get("name", "world") if isinstance(data, dict) else "world"
    return {"greeting": f"hello, {name}"}


class Task(BaseHTTPRequestHandler):
    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        try:
            data = json.loads(self.rfile.read(length) or b"null")
        except ValueError:
            self.answer(400, {"error": "the input is not JSON"})
            return
        self.answer(200, compute(data))

    def answer(self, status, value):
        body = json.dumps(value).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


# Listen first, then say so: the executor calls the task once it has seen the line.
server = ThreadingHTTPServer(("0.0.0.0", 8080), Task)
print("meca-init-done", flush=True)
server.serve_forever()
