"""A Hugging Face Hub-compatible HTTP server on 127.0.0.1, for tests.

It implements just what huggingface_hub's client uses for

* ``HfApi.create_repo``            POST /api/repos/create
* ``HfApi.upload_folder``          POST /api/validate-yaml (README.md metadata),
                                   POST /api/models/{repo}/preupload/{rev} (answers 'regular' mode),
                                   POST /api/models/{repo}/commit/{rev} (NDJSON, base64 file contents)
* ``HfApi.model_info``             GET  /api/models/{repo}[/revision/{rev}]
* ``hf_hub_download``              HEAD/GET /{repo}/resolve/{rev}/{path} (X-Repo-Commit, ETag, Content-Length)

Repos live in memory. ``refuse_uploads=True`` answers every write with 403, like a Hub on
which the token may not write. ``requests`` logs ``"METHOD path"`` of every request.

Example::

    with HubServer() as hub:
        HfApi(endpoint=hub.url).create_repo("org/name")
"""
from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

_REPO = r"(?P<repo>[^/]+/[^/]+)"
_ROUTES = [  # (method, pattern, handler name)
    ("POST", r"/api/repos/create", "create_repo"),
    ("POST", r"/api/validate-yaml", "validate_yaml"),
    ("POST", rf"/api/models/{_REPO}/preupload/(?P<rev>[^/]+)", "preupload"),
    ("POST", rf"/api/models/{_REPO}/commit/(?P<rev>[^/]+)", "commit"),
    ("GET", rf"/api/models/{_REPO}(?:/revision/(?P<rev>[^/]+))?", "model_info"),
    ("GET", rf"/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
    ("HEAD", rf"/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
]


@dataclass
class Repo:
    """One model repo: its files at the head commit of 'main'."""

    private: bool = False
    files: dict[str, bytes] = field(default_factory=dict)
    sha: str = "0" * 40  # head commit of main

    def commit(self) -> str:
        digest = hashlib.sha1()
        for path in sorted(self.files):
            digest.update(path.encode() + b"\0" + self.files[path])
        self.sha = digest.hexdigest()
        return self.sha


class HubServer:
    """The server; a context manager that starts it in a thread and stops it."""

    def __init__(self, refuse_uploads: bool = False):
        self.refuse_uploads = refuse_uploads
        self.repos: dict[str, Repo] = {}
        self.requests: list[str] = []
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_class(self))
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self) -> HubServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        """Shut down and close the socket: later requests get 'connection refused'."""
        if self._thread.is_alive():
            self._httpd.shutdown()
        self._httpd.server_close()


def _handler_class(hub: HubServer):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep test output clean
            pass

        def do_HEAD(self):
            self._dispatch("HEAD")

        def do_GET(self):
            self._dispatch("GET")

        def do_POST(self):
            self._dispatch("POST")

        # ------------------------------------------------------------------ plumbing
        def _dispatch(self, method: str) -> None:
            path = unquote(urlsplit(self.path).path)
            hub.requests.append(f"{method} {path}")
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) if method == "POST" else b""
            for route_method, pattern, name in _ROUTES:
                match = re.fullmatch(pattern, path)
                if route_method == method and match:
                    if method == "POST" and hub.refuse_uploads and name != "validate_yaml":
                        return self._json(403, {"error": "You don't have the rights to write to this namespace"})
                    return getattr(self, name)(body=body, **match.groupdict())
            self._json(404, {"error": f"no route for {method} {path}"})

        def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
            self.send_response(status)
            for key, value in {"Content-Length": str(len(body)), **headers}.items():
                self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, status: int, payload, headers: dict[str, str] | None = None) -> None:
            self._send(status, json.dumps(payload).encode(), {"Content-Type": "application/json", **(headers or {})})

        def _repo(self, repo: str, rev: str | None = None) -> Repo | None:
            """The repo at ``rev`` ('main' or its head sha), or None after answering 404."""
            found = hub.repos.get(repo)
            if found is None:
                self._json(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
                return None
            if rev not in (None, "main", found.sha):
                self._json(404, {"error": f"Invalid rev id: {rev}"}, {"X-Error-Code": "RevisionNotFound"})
                return None
            return found

        # ------------------------------------------------------------------ endpoints
        def create_repo(self, body: bytes) -> None:
            payload = json.loads(body)
            repo = f"{payload['organization']}/{payload['name']}"
            if repo in hub.repos:
                return self._json(409, {"error": "You already created this model repo", "url": f"{hub.url}/{repo}"})
            hub.repos[repo] = Repo(private=payload.get("visibility") == "private")
            self._json(200, {"url": f"{hub.url}/{repo}"})

        def validate_yaml(self, body: bytes) -> None:
            self._json(200, {"errors": [], "warnings": []})

        def preupload(self, body: bytes, repo: str, rev: str) -> None:
            if self._repo(repo, rev) is None:
                return
            files = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                     for f in json.loads(body)["files"]]
            self._json(200, {"files": files})

        def commit(self, body: bytes, repo: str, rev: str) -> None:
            target = self._repo(repo, rev)
            if target is None:
                return
            for line in body.splitlines():
                item = json.loads(line)
                if item["key"] == "file":
                    target.files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                elif item["key"] == "deletedFile":
                    target.files.pop(item["value"]["path"], None)
                elif item["key"] != "header":
                    return self._json(400, {"error": f"unsupported commit operation {item['key']!r}"})
            sha = target.commit()
            self._json(200, {"commitUrl": f"{hub.url}/{repo}/commit/{sha}", "commitOid": sha,
                             "pullRequestUrl": None})

        def model_info(self, body: bytes, repo: str, rev: str | None = None) -> None:
            target = self._repo(repo, rev)
            if target is not None:
                self._json(200, {"id": repo, "modelId": repo, "sha": target.sha, "private": target.private,
                                 "siblings": [{"rfilename": p} for p in sorted(target.files)]})

        def resolve(self, body: bytes, repo: str, rev: str, path: str) -> None:
            target = self._repo(repo, rev)
            if target is None:
                return
            if path not in target.files:
                return self._json(404, {"error": f"{path} not found"},
                                  {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": target.sha})
            content = target.files[path]
            self._send(200, content, {"Content-Type": "application/octet-stream", "X-Repo-Commit": target.sha,
                                      "ETag": f'"{hashlib.sha256(content).hexdigest()}"'})

    return Handler
