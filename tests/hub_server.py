"""A tiny local stand-in for the Hugging Face Hub HTTP API (stdlib only).

It speaks the subset of the Hub API that the installed ``huggingface_hub`` (2.x, httpx2 based) uses for

* ``create_repo`` / ``upload_folder`` / ``create_commit`` (and therefore ``PreTrainedModel.push_to_hub``,
  ``ProcessorMixin.push_to_hub`` and the tokenizers' ``push_to_hub``), and
* ``hf_hub_download`` / ``snapshot_download`` / ``model_info`` / ``list_repo_tree``
  (and therefore ``from_pretrained("user/repo")``).

Every file is uploaded as a *regular* git blob: ``/preupload`` answers ``uploadMode: "regular"`` for every
file, so the client never touches the LFS batch API, S3, or Xet storage (the server never sends the
``X-Xet-Hash`` header, so downloads are plain HTTP as well). Repos are kept in memory with a real commit
history: each commit has its own sha and its own ``path -> bytes`` snapshot, branches point at commits.

Usage (in-process)::

    with LocalHub() as hub, hub.activate(cache_dir=tmp_path / "hf"):
        model.push_to_hub("user/tiny")
        assert "model.safetensors" in hub.files("user/tiny")

or with pytest's monkeypatch: ``hub.patch(monkeypatch, cache_dir)``.

Usage (subprocess)::

    subprocess.run([sys.executable, "-c", code], env=hub_env(hub.endpoint, cache_dir), check=True)
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import itertools
import json
import os
import re
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["LocalHub", "hub_env", "no_external_network"]

_REPO_TYPES = ("model", "dataset", "space")
_URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}

# What the real Hub puts in a fresh repo (trimmed list of LFS patterns).
_DEFAULT_GITATTRIBUTES = (
    "*.bin filter=lfs diff=lfs merge=lfs -text\n"
    "*.h5 filter=lfs diff=lfs merge=lfs -text\n"
    "*.msgpack filter=lfs diff=lfs merge=lfs -text\n"
    "*.onnx filter=lfs diff=lfs merge=lfs -text\n"
    "*.pt filter=lfs diff=lfs merge=lfs -text\n"
    "*.pth filter=lfs diff=lfs merge=lfs -text\n"
    "*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
    "*.tar.* filter=lfs diff=lfs merge=lfs -text\n"
    "*.zip filter=lfs diff=lfs merge=lfs -text\n"
).encode()


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob (what the Hub uses as ``oid``/ETag for regular files)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass
class _Commit:
    sha: str
    parent: str | None
    title: str
    message: str
    date: str
    files: dict[str, str]  # path -> blob sha1 (blobs live in _Repo.blobs)


@dataclass
class _Repo:
    repo_type: str
    repo_id: str
    private: bool
    created_at: str
    commits: dict[str, _Commit] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)  # commit shas, oldest first
    refs: dict[str, str] = field(default_factory=dict)  # "main" / "refs/pr/1" -> commit sha
    blobs: dict[str, bytes] = field(default_factory=dict)  # blob sha1 -> content
    next_pr: int = 1

    def resolve(self, revision: str) -> _Commit | None:
        if revision in self.refs:
            return self.commits[self.refs[revision]]
        if revision.startswith("refs/heads/") and revision[len("refs/heads/") :] in self.refs:
            return self.commits[self.refs[revision[len("refs/heads/") :]]]
        if re.fullmatch(r"[0-9a-f]{7,40}", revision):
            matches = [sha for sha in self.order if sha.startswith(revision)]
            if len(matches) == 1:
                return self.commits[matches[0]]
        return None


class _HubError(Exception):
    def __init__(self, status: int, message: str, error_code: str | None = None, headers: dict | None = None,
                 body: dict | None = None):
        super().__init__(message)
        self.body = body or {}
        self.status = status
        self.message = message
        self.error_code = error_code
        self.headers = headers or {}


class _State:
    """All repos, guarded by one lock."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.repos: dict[tuple[str, str], _Repo] = {}
        self.counter = itertools.count()
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request seen
        self.unhandled: list[tuple[str, str]] = []  # requests that matched no route

    def new_sha(self, *parts: str) -> str:
        return hashlib.sha1("\0".join((str(next(self.counter)), str(time.time_ns()), *parts)).encode()).hexdigest()

    def get_repo(self, repo_type: str, repo_id: str) -> _Repo:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None:
            raise _HubError(404, f"Repository not found: {repo_type}s/{repo_id}", "RepoNotFound")
        return repo

    def get_commit(self, repo: _Repo, revision: str) -> _Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise _HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit

    def add_commit(self, repo: _Repo, branch: str, files: dict[str, bytes | None], title: str, message: str,
                   parent: _Commit | None) -> _Commit:
        """files: path -> content (None deletes). Applies on top of `parent` and moves `branch`."""
        tree = dict(parent.files) if parent is not None else {}
        for path, content in files.items():
            if content is None:
                tree.pop(path, None)
            else:
                oid = git_blob_sha1(content)
                repo.blobs[oid] = bytes(content)
                tree[path] = oid
        sha = self.new_sha(repo.repo_id, parent.sha if parent else "", title, json.dumps(tree, sort_keys=True))
        commit = _Commit(sha=sha, parent=parent.sha if parent else None, title=title, message=message,
                         date=_now(), files=tree)
        repo.commits[sha] = commit
        repo.order.append(sha)
        repo.refs[branch] = sha
        return commit


def _split(path: str) -> list[str]:
    """Split a raw (still percent-encoded) URL path into unquoted segments."""
    return [unquote(p) for p in path.strip("/").split("/")] if path.strip("/") else []


def _bool(values: dict, key: str) -> bool:
    v = values.get(key, ["false"])[0]
    return str(v).lower() in ("1", "true", "yes")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the real Hub; every response carries Content-Length
    server_version = "LocalHub/1.0"
    timeout = 60  # idle keep-alive connections die eventually

    # set on the subclass created per server
    state: _State
    hub: "LocalHub"

    def log_message(self, format, *args):  # noqa: A002 - silence stderr logging
        if os.environ.get("LOCAL_HUB_DEBUG"):
            sys.stderr.write("[LocalHub] " + (format % args) + "\n")

    # ------------------------------------------------------------------ plumbing
    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None,
              content_type: str = "application/json", head: bool = False, length: int | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if not head and body:
            self.wfile.write(body)

    def _json(self, status: int, obj, headers: dict | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), headers)

    def _error(self, err: _HubError, head: bool = False) -> None:
        headers = dict(err.headers)
        headers["X-Error-Message"] = err.message
        if err.error_code:
            headers["X-Error-Code"] = err.error_code
        self._send(err.status, b"" if head else json.dumps({"error": err.message, **err.body}).encode(), headers, head=head,
                   length=None if not head else 0)

    def _require_auth(self) -> None:
        if self.hub.require_token and not self.headers.get("Authorization", "").startswith("Bearer "):
            raise _HubError(401, "Invalid credentials in Authorization header")

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query, keep_blank_values=True)
        with self.state.lock:
            self.state.requests.append((method, self.path))
        body = self._body() if method in ("POST", "PUT", "DELETE") else b""
        head = method == "HEAD"
        try:
            if not self._route(method, url.path, query, body):
                with self.state.lock:
                    self.state.unhandled.append((method, self.path))
                raise _HubError(404, f"LocalHub: no route for {method} {url.path}")
        except _HubError as err:
            self._error(err, head=head)
        except Exception as exc:  # pragma: no cover - surface server bugs to the client
            self._error(_HubError(500, f"LocalHub internal error: {exc!r}"), head=head)
            raise

    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    def do_DELETE(self):
        self._dispatch("DELETE")

    # ------------------------------------------------------------------ routing
    def _route(self, method: str, path: str, query: dict, body: bytes) -> bool:
        seg = _split(path)
        if seg[:1] == ["api"]:
            rest = seg[1:]
            if rest == ["repos", "create"] and method == "POST":
                return self._create_repo(json.loads(body or b"{}"))
            if rest == ["repos", "delete"] and method == "DELETE":
                return self._delete_repo(json.loads(body or b"{}"))
            if rest == ["validate-yaml"] and method == "POST":
                self._json(200, {"errors": [], "warnings": []})
                return True
            if rest == ["whoami-v2"] and method == "GET":
                self._json(200, {"type": "user", "name": "user", "fullname": "Local User", "orgs": [],
                                 "auth": {"type": "access_token", "accessToken": {"role": "write"}}})
                return True
            if rest == ["agent-harnesses"] and method == "GET":  # huggingface_hub's agent detection registry
                self._json(200, {"standardEnvVars": [], "harnesses": {}})
                return True
            if rest[:1] == ["telemetry"]:
                self._json(200, {})
                return True
            # /api/{type}s/{ns}/{name}[/...]
            if len(rest) >= 3 and rest[0] in ("models", "datasets", "spaces"):
                repo_type = rest[0][:-1]
                repo_id = f"{rest[1]}/{rest[2]}"
                return self._repo_api(method, repo_type, repo_id, rest[3:], query, body)
            return False

        # /{prefix}{ns}/{name}/resolve/{rev}/{path...}
        repo_type = "model"
        if seg[:1] in (["datasets"], ["spaces"]):
            repo_type, seg = seg[0][:-1], seg[1:]
        if len(seg) >= 5 and seg[2] == "resolve" and method in ("GET", "HEAD"):
            return self._resolve(method, repo_type, f"{seg[0]}/{seg[1]}", seg[3], "/".join(seg[4:]))
        return False

    # ------------------------------------------------------------------ repos
    def _create_repo(self, payload: dict) -> bool:
        self._require_auth()
        name, org = payload.get("name"), payload.get("organization")
        if not name or not org:
            raise _HubError(400, "LocalHub needs a namespaced repo id ('user/repo')")
        repo_type = payload.get("type") or "model"
        if repo_type not in _REPO_TYPES:
            raise _HubError(400, f"Invalid repo type {repo_type}")
        repo_id = f"{org}/{name}"
        with self.state.lock:
            if (repo_type, repo_id) in self.state.repos:
                # like the Hub, the 409 body carries the url: create_repo(exist_ok=True) reads it
                raise _HubError(409, "You already created this model repo",
                                body={"url": f"{self.hub.endpoint}/{_URL_PREFIX[repo_type]}{repo_id}"})
            private = payload.get("private") or payload.get("visibility") == "private"
            repo = _Repo(repo_type=repo_type, repo_id=repo_id, private=bool(private), created_at=_now())
            self.state.repos[(repo_type, repo_id)] = repo
            self.state.add_commit(repo, "main", {".gitattributes": _DEFAULT_GITATTRIBUTES}, "initial commit", "",
                                  parent=None)
        self._json(200, {"url": f"{self.hub.endpoint}/{_URL_PREFIX[repo_type]}{repo_id}", "name": repo_id,
                         "id": repo_id})
        return True

    def _delete_repo(self, payload: dict) -> bool:
        self._require_auth()
        key = (payload.get("type") or "model", f"{payload.get('organization')}/{payload.get('name')}")
        with self.state.lock:
            if key not in self.state.repos:
                raise _HubError(404, "Repository not found", "RepoNotFound")
            del self.state.repos[key]
        self._json(200, {})
        return True

    def _repo_api(self, method: str, repo_type: str, repo_id: str, rest: list[str], query: dict,
                  body: bytes) -> bool:
        st = self.state
        with st.lock:
            repo = st.get_repo(repo_type, repo_id)
            if method == "GET" and (not rest or (len(rest) >= 2 and rest[0] == "revision")):
                revision = "/".join(rest[1:]) if rest else "main"
                return self._info(repo, st.get_commit(repo, revision), query)
            if method == "GET" and rest[:1] == ["tree"] and len(rest) >= 2:
                return self._tree(repo, rest[1], "/".join(rest[2:]), query)
            if method == "POST" and rest[:1] == ["paths-info"] and len(rest) >= 2:
                return self._paths_info(repo, "/".join(rest[1:]), body)
            if method == "GET" and rest == ["refs"]:
                branches = [{"name": n, "ref": f"refs/heads/{n}", "targetCommit": s}
                            for n, s in repo.refs.items() if not n.startswith("refs/")]
                prs = [{"name": n, "ref": n, "targetCommit": s} for n, s in repo.refs.items() if n.startswith("refs/pr/")]
                out = {"branches": branches, "tags": [], "converts": []}
                if _bool(query, "include_prs"):
                    out["pullRequests"] = prs
                self._json(200, out)
                return True
            if method == "GET" and rest[:1] == ["commits"] and len(rest) >= 2:
                commit = st.get_commit(repo, "/".join(rest[1:]))
                history = []
                while commit is not None:
                    history.append({"id": commit.sha, "title": commit.title, "message": commit.message,
                                    "authors": [{"user": "user", "avatar": None}], "date": commit.date})
                    commit = repo.commits.get(commit.parent) if commit.parent else None
                self._json(200, history)
                return True
            if method == "POST" and rest[:1] == ["preupload"] and len(rest) >= 2:
                self._require_auth()
                return self._preupload(repo, "/".join(rest[1:]), json.loads(body or b"{}"))
            if method == "POST" and rest[:1] == ["commit"] and len(rest) >= 2:
                self._require_auth()
                return self._commit(repo, "/".join(rest[1:]), query, body)
            if method == "POST" and rest[:1] == ["branch"] and len(rest) >= 2:
                self._require_auth()
                branch = "/".join(rest[1:])
                payload = json.loads(body or b"{}")
                if branch in repo.refs:
                    raise _HubError(409, f"Reference already exists: refs/heads/{branch}")
                start = st.get_commit(repo, payload.get("startingPoint") or "main")
                repo.refs[branch] = start.sha
                self._json(200, {})
                return True
            if method == "DELETE" and rest[:1] == ["branch"] and len(rest) >= 2:
                self._require_auth()
                repo.refs.pop("/".join(rest[1:]), None)
                self._json(200, {})
                return True
        return False

    def _info(self, repo: _Repo, commit: _Commit, query: dict) -> bool:
        author = repo.repo_id.split("/")[0]
        info = {
            "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "author": author,
            "sha": commit.sha,
            "lastModified": commit.date,
            "createdAt": repo.created_at,
            "private": repo.private,
            "disabled": False,
            "gated": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": [
                {"rfilename": p, **({"size": len(repo.blobs[o]), "blobId": o} if _bool(query, "blobs") else {})}
                for p, o in sorted(commit.files.items())
            ],
        }
        if repo.repo_type == "model":
            info["modelId"] = repo.repo_id
            info["library_name"] = "transformers"
        if repo.repo_type == "space":
            info["sdk"] = "static"
        self._json(200, info)
        return True

    def _entries(self, repo: _Repo, commit: _Commit, path: str, recursive: bool) -> list[dict]:
        prefix = path.strip("/") + "/" if path.strip("/") else ""
        files, folders = [], set()
        for p, oid in sorted(commit.files.items()):
            if not p.startswith(prefix):
                continue
            rel = p[len(prefix) :]
            parts = rel.split("/")
            for i in range(1, len(parts)):
                if recursive or i == 1:
                    folders.add(prefix + "/".join(parts[:i]))
            if recursive or len(parts) == 1:
                files.append({"type": "file", "oid": oid, "size": len(repo.blobs[oid]), "path": p})
        dirs = [{"type": "directory", "oid": hashlib.sha1(f.encode()).hexdigest(), "path": f} for f in sorted(folders)]
        return dirs + files

    def _tree(self, repo: _Repo, revision: str, path: str, query: dict) -> bool:
        commit = self.state.get_commit(repo, revision)
        if path and not any(p == path or p.startswith(path.rstrip("/") + "/") for p in commit.files):
            raise _HubError(404, f"Entry not found: {path}", "EntryNotFound")
        self._json(200, self._entries(repo, commit, path, _bool(query, "recursive")))
        return True

    def _paths_info(self, repo: _Repo, revision: str, body: bytes) -> bool:
        commit = self.state.get_commit(repo, revision)
        ctype = self.headers.get("Content-Type", "")
        if "json" in ctype:
            paths = json.loads(body or b"{}").get("paths", [])
        else:
            paths = parse_qs(body.decode(), keep_blank_values=True).get("paths", [])
        out = []
        for path in paths:
            path = path.strip("/")
            if path in commit.files:
                oid = commit.files[path]
                out.append({"type": "file", "oid": oid, "size": len(repo.blobs[oid]), "path": path})
            elif any(p.startswith(path + "/") for p in commit.files):
                out.append({"type": "directory", "oid": hashlib.sha1(path.encode()).hexdigest(), "path": path})
        self._json(200, out)
        return True

    def _preupload(self, repo: _Repo, revision: str, payload: dict) -> bool:
        commit = repo.resolve(revision)
        files = []
        for f in payload.get("files", []):
            files.append({
                "path": f["path"],
                "uploadMode": "regular",  # never "lfs" => no LFS batch API, no S3, no Xet
                "shouldIgnore": False,
                # like the Hub: the oid of the file currently at `revision`, so unchanged files are skipped
                "oid": commit.files.get(f["path"]) if commit is not None else None,
            })
        self._json(200, {"files": files, "commitOid": commit.sha if commit else None})
        return True

    def _commit(self, repo: _Repo, revision: str, query: dict, body: bytes) -> bool:
        st = self.state
        header: dict = {}
        changes: dict[str, bytes | None] = {}
        for line in body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item.get("key"), item.get("value", {})
            if key == "header":
                header = value
            elif key == "file":
                if value.get("encoding", "base64") != "base64":
                    raise _HubError(400, f"Unsupported encoding {value.get('encoding')}")
                changes[value["path"]] = base64.b64decode(value["content"])
            elif key == "deletedFile":
                changes[value["path"]] = None
            elif key == "deletedFolder":
                folder = value["path"].rstrip("/") + "/"
                base = repo.resolve(revision)
                for p in (base.files if base else {}):
                    if p.startswith(folder):
                        changes[p] = None
            elif key == "lfsFile":
                raise _HubError(422, "LocalHub stores regular files only; it never asks for LFS uploads")
            else:
                raise _HubError(400, f"Unknown commit operation {key!r}")
        base = st.get_commit(repo, revision)
        parent_commit = header.get("parentCommit")
        if parent_commit and parent_commit != base.sha:
            raise _HubError(412, "A commit has happened since. Please refresh and try again.")
        title = header.get("summary") or "Upload files"
        if _bool(query, "create_pr"):
            branch = f"refs/pr/{repo.next_pr}"
            repo.next_pr += 1
        else:
            branch = revision
            if branch not in repo.refs and not branch.startswith("refs/heads/"):
                raise _HubError(400, f"Cannot commit to {revision!r}: not a branch", "RevisionNotFound")
            branch = branch[len("refs/heads/"):] if branch.startswith("refs/heads/") else branch
        commit = st.add_commit(repo, branch, changes, title, header.get("description", ""), parent=base)
        prefix = f"{self.hub.endpoint}/{_URL_PREFIX[repo.repo_type]}{repo.repo_id}"
        out = {"success": True, "commitOid": commit.sha, "commitUrl": f"{prefix}/commit/{commit.sha}"}
        if branch.startswith("refs/pr/"):
            out["pullRequestUrl"] = f"{prefix}/discussions/{branch.rsplit('/', 1)[1]}"
        self._json(200, out)
        return True

    # ------------------------------------------------------------------ downloads
    def _resolve(self, method: str, repo_type: str, repo_id: str, revision: str, path: str) -> bool:
        head = method == "HEAD"
        with self.state.lock:
            repo = self.state.get_repo(repo_type, repo_id)
            commit = self.state.get_commit(repo, revision)
            oid = commit.files.get(path)
            if oid is None:
                raise _HubError(404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": commit.sha})
            data = repo.blobs[oid]
        headers = {"X-Repo-Commit": commit.sha, "ETag": f'"{oid}"', "Accept-Ranges": "bytes"}
        status, payload = 200, data
        rng = self.headers.get("Range")
        m = re.fullmatch(r"bytes=(\d*)-(\d*)", rng.strip()) if rng else None
        if m and data:
            start = int(m.group(1)) if m.group(1) else max(len(data) - int(m.group(2) or 0), 0)
            end = int(m.group(2)) if (m.group(2) and m.group(1)) else len(data) - 1
            end = min(end, len(data) - 1)
            if start > end:
                raise _HubError(416, "Range not satisfiable", headers={"Content-Range": f"bytes */{len(data)}"})
            status, payload = 206, data[start : end + 1]
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        self._send(status, payload, headers, content_type="application/octet-stream", head=head)
        return True


class LocalHub:
    """A local, in-memory Hub server on 127.0.0.1 (free port) running in a daemon thread.

    Attributes / methods:
        endpoint: ``"http://127.0.0.1:PORT"``.
        files(repo_id, revision="main", repo_type="model") -> dict[path, bytes]: snapshot of a commit.
        commits(repo_id, repo_type="model") -> list[str]: commit shas of the repo, oldest first
            (the first one is the initial commit made by create_repo).
        head(repo_id, revision="main", repo_type="model") -> str: commit sha a branch points to.
        repo_ids(repo_type=None) -> list[str].
        requests: list of (method, raw path) seen; unhandled: those that matched no route.
        activate(cache_dir) / patch(monkeypatch, cache_dir): point this process's huggingface_hub (and
            transformers) at the server; env(cache_dir): env vars for a subprocess (see `hub_env`).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, require_token: bool = True) -> None:
        self.host = host
        self.port = port
        self.require_token = require_token
        self._state = _State()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle
    def start(self) -> "LocalHub":
        handler = type("_BoundHandler", (_Handler,), {"state": self._state, "hub": self})
        server = ThreadingHTTPServer((self.host, self.port), handler)
        server.daemon_threads = True
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"LocalHub:{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = None

    def __enter__(self) -> "LocalHub":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    # ---- inspection
    def _repo(self, repo_id: str, repo_type: str) -> _Repo:
        try:
            return self._state.get_repo(repo_type, repo_id)
        except _HubError as e:
            raise KeyError(e.message) from None

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, bytes]:
        with self._state.lock:
            repo = self._repo(repo_id, repo_type)
            commit = repo.resolve(revision)
            if commit is None:
                raise KeyError(f"unknown revision {revision!r} of {repo_id}")
            return {p: repo.blobs[o] for p, o in commit.files.items()}

    def commits(self, repo_id: str, repo_type: str = "model") -> list[str]:
        with self._state.lock:
            return list(self._repo(repo_id, repo_type).order)

    def head(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> str:
        with self._state.lock:
            commit = self._repo(repo_id, repo_type).resolve(revision)
            if commit is None:
                raise KeyError(revision)
            return commit.sha

    def repo_ids(self, repo_type: str | None = None) -> list[str]:
        with self._state.lock:
            return sorted(rid for (rt, rid) in self._state.repos if repo_type in (None, rt))

    @property
    def requests(self) -> list[tuple[str, str]]:
        with self._state.lock:
            return list(self._state.requests)

    @property
    def unhandled(self) -> list[tuple[str, str]]:
        with self._state.lock:
            return list(self._state.unhandled)

    # ---- client configuration
    def env(self, cache_dir: str | os.PathLike) -> dict[str, str]:
        return hub_env(self.endpoint, cache_dir)

    def _patches(self, cache_dir: str | os.PathLike) -> tuple[list[tuple[object, str, object]], dict[str, str]]:
        """(object, attribute, value) patches + env vars that point this process at the server."""
        import huggingface_hub
        from huggingface_hub import constants
        import huggingface_hub.hf_api as hf_api_mod

        env = hub_env(self.endpoint, cache_dir, base={})
        hub_cache = env["HF_HUB_CACHE"]
        attrs: list[tuple[object, str, object]] = [
            (constants, "ENDPOINT", self.endpoint),
            (constants, "HUGGINGFACE_CO_URL_TEMPLATE", self.endpoint + "/{repo_id}/resolve/{revision}/{filename}"),
            (constants, "HF_HUB_OFFLINE", False),
            (constants, "HF_HUB_DISABLE_XET", True),
            (constants, "HF_HUB_DISABLE_TELEMETRY", True),
            (constants, "HF_HUB_CACHE", hub_cache),
            (constants, "HUGGINGFACE_HUB_CACHE", hub_cache),
            (constants, "HF_HOME", env["HF_HOME"]),
            (constants, "AGENT_HARNESSES_PATH", os.path.join(env["HF_HOME"], ".agent_harnesses.json")),
            (hf_api_mod.api, "endpoint", self.endpoint),  # module-level HfApi behind huggingface_hub.create_repo & co
        ]
        if hasattr(huggingface_hub, "HUGGINGFACE_CO_URL_TEMPLATE"):
            attrs.append((huggingface_hub, "HUGGINGFACE_CO_URL_TEMPLATE", attrs[1][2]))
        tf_hub = sys.modules.get("transformers.utils.hub")
        if tf_hub is not None and hasattr(tf_hub, "_hf_api"):
            attrs.append((tf_hub, "_hf_api", None))  # transformers caches one HfApi: force a fresh one
        attrs = [(o, a, v) for (o, a, v) in attrs if hasattr(o, a)]
        return attrs, env

    def patch(self, monkeypatch, cache_dir: str | os.PathLike) -> None:
        """pytest: point huggingface_hub/transformers in *this* process at the server (undone by monkeypatch)."""
        attrs, env = self._patches(cache_dir)
        for obj, name, value in attrs:
            monkeypatch.setattr(obj, name, value)
        for k, v in env.items():
            monkeypatch.setenv(k, v)

    @contextlib.contextmanager
    def activate(self, cache_dir: str | os.PathLike):
        """Context manager version of `patch` for use without pytest."""
        attrs, env = self._patches(cache_dir)
        saved_attrs = [(o, a, getattr(o, a)) for (o, a, _) in attrs]
        saved_env = {k: os.environ.get(k) for k in env}
        try:
            for obj, name, value in attrs:
                setattr(obj, name, value)
            os.environ.update(env)
            yield self
        finally:
            for obj, name, value in reversed(saved_attrs):
                setattr(obj, name, value)
            for k, v in saved_env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def hub_env(endpoint: str, cache_dir: str | os.PathLike, base: dict | None = None) -> dict[str, str]:
    """Environment for a subprocess that must talk to the local hub at `endpoint` and nothing else.

    Starts from `base` (default: a copy of os.environ) and sets the endpoint, a dummy token, a private
    HF_HOME / cache under `cache_dir`, disables Xet/telemetry/update checks, forces online mode
    (HF_HUB_OFFLINE=0, the server is local) and bypasses any proxy for 127.0.0.1.
    """
    env = dict(os.environ) if base is None else dict(base)
    home = os.path.join(os.fspath(cache_dir), "hf_home")
    hub_cache = os.path.join(home, "hub")
    os.makedirs(hub_cache, exist_ok=True)
    for k in ("HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE", "HF_HUB_ENABLE_HF_TRANSFER", "HUGGING_FACE_HUB_TOKEN",
              "HF_TOKEN_PATH", "HUGGINGFACE_CO_STAGING"):
        env.pop(k, None)
    no_proxy = ",".join(filter(None, [env.get("NO_PROXY") or env.get("no_proxy"), "127.0.0.1", "localhost"]))
    env.update({
        "HF_ENDPOINT": endpoint,
        "HF_TOKEN": "dummy",
        "HF_HOME": home,
        "HF_HUB_CACHE": hub_cache,
        "HF_XET_CACHE": os.path.join(home, "xet"),
        "HF_ASSETS_CACHE": os.path.join(home, "assets"),
        "HF_MODULES_CACHE": os.path.join(home, "modules"),
        "HF_HUB_OFFLINE": "0",
        "TRANSFORMERS_OFFLINE": "0",
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_UPDATE_CHECK": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "NO_PROXY": no_proxy,
        "no_proxy": no_proxy,
    })
    return env


# Code a subprocess can exec first to make any connection to a non-loopback host fail loudly.
NO_EXTERNAL_NETWORK_SNIPPET = '''
import socket as _s
_orig_gai = _s.getaddrinfo
def _guard(host, *a, **k):
    if host not in ("127.0.0.1", "localhost", "::1", None):
        raise OSError("LocalHub guard: network access to %r is forbidden in this test" % (host,))
    return _orig_gai(host, *a, **k)
_s.getaddrinfo = _guard
'''


@contextlib.contextmanager
def no_external_network():
    """In-process guard: name resolution of anything but loopback raises OSError (records attempts)."""
    attempts: list[str] = []
    orig = socket.getaddrinfo

    def guard(host, *args, **kwargs):
        if host not in ("127.0.0.1", "localhost", "::1", None):
            attempts.append(str(host))
            raise OSError(f"LocalHub guard: network access to {host!r} is forbidden in this test")
        return orig(host, *args, **kwargs)

    socket.getaddrinfo = guard
    try:
        yield attempts
    finally:
        socket.getaddrinfo = orig


if __name__ == "__main__":  # manual use: python tests/hub_server.py  (serves until Ctrl-C)
    with LocalHub() as _hub:
        print(f"LocalHub serving at {_hub.endpoint}; use HF_ENDPOINT={_hub.endpoint} HF_TOKEN=dummy", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
