"""Loopback stand-ins for the Hugging Face Hub and for the authors' download server (127.0.0.1 only)."""

import hashlib
import http.server
import threading


class _Handler(http.server.BaseHTTPRequestHandler):
    server: "_Server"

    def log_message(self, *args):  # keep test output clean
        pass

    def do_HEAD(self):
        self._serve(body=False)

    def do_GET(self):
        self._serve(body=True)

    def _serve(self, body: bool):
        self.server.requests.append(self.path)
        status, headers, data = self.server.route(self.path)
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(headers.pop("_length", len(data))))
        self.end_headers()
        if body and data:
            self.wfile.write(data[: self.server.truncate_to] if self.server.truncate_to is not None else data)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, route):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.route = route
        self.requests = []
        self.truncate_to: int | None = None
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def close(self):
        self.shutdown()
        self.server_close()


class FakeHub:
    """Serves `/{repo_id}/resolve/{revision}/{filename}` for repos added with `add(repo_id, files)`.
    Each `add` makes a new commit; `main` points to the latest one."""

    def __init__(self):
        self.repos: dict[str, dict[str, dict[str, bytes]]] = {}
        self.heads: dict[str, str] = {}
        self.server = _Server(self._route)

    def add(self, repo_id: str, files: dict[str, bytes]) -> str:
        commit = hashlib.sha1(
            repo_id.encode() + b"".join(sorted(files.values())) + str(len(self.repos.get(repo_id, {}))).encode()
        ).hexdigest()
        self.repos.setdefault(repo_id, {})[commit] = dict(files)
        self.heads[repo_id] = commit
        return commit

    def _route(self, path: str):
        if "/resolve/" not in path:
            return 404, {"X-Error-Code": "RepoNotFound"}, b""
        repo_id, rest = path.lstrip("/").split("/resolve/", 1)
        revision, filename = rest.split("/", 1)
        if repo_id not in self.repos:
            return 404, {"X-Error-Code": "RepoNotFound"}, b""
        commit = self.heads[repo_id] if revision == "main" else revision
        if commit not in self.repos[repo_id]:
            return 404, {"X-Error-Code": "RevisionNotFound"}, b""
        files = self.repos[repo_id][commit]
        if filename not in files:
            return 404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": commit}, b""
        data = files[filename]
        return 200, {"X-Repo-Commit": commit, "ETag": '"' + hashlib.sha256(data).hexdigest() + '"'}, data

    @property
    def url(self) -> str:
        return self.server.url

    def close(self):
        self.server.close()


class FileServer:
    """Plays the authors' blob storage: GET /{name} returns the bytes registered under that name.
    `truncate_to` sends only that many bytes while announcing the full length (a broken download)."""

    def __init__(self, files: dict[str, bytes]):
        self.files = files
        self.server = _Server(self._route)

    def _route(self, path: str):
        name = path.lstrip("/")
        if name not in self.files:
            return 404, {}, b""
        return 200, {"Content-Type": "application/octet-stream"}, self.files[name]

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def requests(self):
        return self.server.requests

    def set_truncate(self, n: int | None):
        self.server.truncate_to = n

    def close(self):
        self.server.close()
