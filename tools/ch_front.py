#!/usr/bin/env python3
"""ch_front.py: a small ClickHouse HTTP interface in front of chDB, for tests and CI.

deepflow-tempo's tests need a real ClickHouse engine but no ClickHouse server. This script
runs the engine in-process (chDB: PyPI `chdb-core` 26.9.0, i.e. ClickHouse 26.9) and speaks
the part of the ClickHouse HTTP protocol that the Rust `clickhouse` crate 0.15.3 uses, so
the crate works against it unchanged: SQL in the body and/or the `query` parameter,
`default_format`, `database`, settings as URL parameters (`readonly` allows only reads),
`param_*` (also in multipart/form-data bodies), `INSERT ... FORMAT X` with chunked and/or
LZ4 native-framed bodies (`decompress=1`), `compress=1` responses, errors as HTTP 500 with
`X-ClickHouse-Exception-Code`, and `GET /ping`.

It is not a server: one chDB session, requests serialised by a lock, no authentication;
`database` and URL settings are reset after each request. Bind it to loopback only.

  python tools/ch_front.py --port 0 --path :memory: [--config tools/chdb-deepflow.xml]
                           [--log FILE|-|none] [--exit-on-stdin-eof]

The first stdout line is the base URL, e.g. http://127.0.0.1:43117 (--port 0: any free port).
"""

import argparse
import json
import os
import re
import socket
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

if not os.environ.get("TZ"):  # the engine follows TZ; keep text output deterministic
    os.environ["TZ"] = "UTC"
    time.tzset()

from chdb import session as chdb_session  # noqa: E402  (imported after TZ is fixed)

try:
    import lz4.block as lz4_block
except ImportError:  # only needed for decompress=1 / compress=1
    lz4_block = None
try:
    from clickhouse_cityhash.cityhash import CityHash128
except ImportError:  # only needed for compress=1 (crate <= 0.15.2)
    CityHash128 = None

# URL parameters that belong to the HTTP protocol; every other one is a setting.
PROTOCOL_PARAMS = {
    "query", "database", "default_format", "decompress", "compress", "user", "password",
    "query_id", "session_id", "session_timeout", "session_check", "role",
    "wait_end_of_query", "buffer_size", "enable_http_compression",
    "http_zlib_compression_level",
}
# Settings of ClickHouse's HTTP server rather than of the engine (the front is that server):
# never SET on the shared session. `readonly` is enforced by the front per request, because
# `SET readonly` cannot be undone on the session; `cancel_http_readonly_queries_on_client_close`
# is accepted and has no effect here (requests are serialised on one session, and a query the
# engine has started runs to its end).
SERVER_SETTINGS = {"readonly", "cancel_http_readonly_queries_on_client_close"}
READ_ONLY_RE = re.compile(r"\s*\(*\s*(SELECT|WITH|SHOW|DESCRIBE|DESC|EXISTS|EXPLAIN)\b", re.I)
# `INSERT INTO <head> FORMAT <fmt>`; the head may not contain string literals.
INSERT_RE = re.compile(rb"\s*(INSERT\s+INTO\s[^']*?)\s+FORMAT\s+([A-Za-z0-9_]+)", re.I)
TRAILING_FORMAT_RE = re.compile(r"\bFORMAT\s+([A-Za-z0-9_]+)\s*;?\s*$", re.I)
CODE_RE = re.compile(r"Code: (\d+)")
INSERT_PREFIX_RE = re.compile(r"^Streaming insert \w+ failed: ")
IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
NUMBER_RE = re.compile(r"-?\d+(\.\d+)?")
METHOD_NONE, METHOD_LZ4 = 0x02, 0x82  # ZSTD (0x90) is not supported
HEADER = struct.Struct("<BII")  # method, compressed size (incl. these 9 bytes), raw size
MAX_BLOCK = 1 << 20


class FrontError(Exception):
    """A failure found by the front itself, worded like a ClickHouse exception."""

    def __init__(self, code, text, name):
        super().__init__(f"Code: {code}. DB::Exception: {text}. ({name})")


def decode_native_blocks(body):
    """Undo ClickHouse's native compressed-block framing (checksums are not verified)."""
    out, pos = [], 0
    while pos < len(body):
        if len(body) - pos < 16 + HEADER.size:
            raise FrontError(271, "Truncated compressed block header", "CANNOT_DECOMPRESS")
        method, csize, dsize = HEADER.unpack_from(body, pos + 16)
        end = pos + 16 + csize
        if csize < HEADER.size or end > len(body):
            raise FrontError(271, "Truncated compressed block", "CANNOT_DECOMPRESS")
        payload = body[pos + 16 + HEADER.size:end]
        if method == METHOD_LZ4:
            if lz4_block is None:
                raise FrontError(271, "LZ4 body but python 'lz4' is missing", "CANNOT_DECOMPRESS")
            out.append(lz4_block.decompress(payload, uncompressed_size=dsize))
        elif method == METHOD_NONE:
            out.append(payload)
        else:
            raise FrontError(271, f"Unknown compression method 0x{method:02x}", "UNKNOWN_COMPRESSION_METHOD")
        pos = end
    return b"".join(out)


def encode_native_blocks(data):
    """Frame `data` as native LZ4 blocks with CityHash128 checksums (for compress=1)."""
    if lz4_block is None or CityHash128 is None:
        raise FrontError(1000, "compress=1 needs python 'lz4' and 'clickhouse-cityhash'", "UNSUPPORTED_METHOD")
    out = []
    for start in range(0, len(data), MAX_BLOCK):
        chunk = data[start:start + MAX_BLOCK]
        packed = lz4_block.compress(chunk, store_size=False)
        block = HEADER.pack(METHOD_LZ4, HEADER.size + len(packed), len(chunk)) + packed
        digest = CityHash128(block)  # int: (low64 << 64) | high64 of CityHash v1.0.2
        out += [struct.pack("<QQ", digest >> 64, digest & 0xFFFFFFFFFFFFFFFF), block]
    return b"".join(out)


def parse_multipart(body, content_type):
    """Return the text fields of a multipart/form-data body as a dict."""
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if not match:
        raise FrontError(1000, "multipart/form-data without a boundary", "BAD_REQUEST")
    fields = {}
    for part in body.split(b"--" + match.group(1).encode())[1:]:
        if part.startswith(b"--"):  # closing delimiter
            break
        head, _, value = part.partition(b"\r\n\r\n")
        name = re.search(rb'name="([^"]*)"', head)
        if name:
            fields[name.group(1).decode()] = value.removesuffix(b"\r\n").decode()
    return fields


def split_insert(query, body):
    """If the request is `INSERT ... FORMAT X` + data, return (head, X, data), else None."""
    text = query.encode() + b"\n" + body if query and body else (query.encode() or body)
    match = INSERT_RE.match(text, 0, 1 << 20)
    if not match:
        return None
    pos = match.end()  # the data starts after blanks up to and including one newline
    while pos < len(text) and text[pos] in b" \t\r":
        pos += 1
    if pos < len(text) and text[pos] == ord("\n"):
        pos += 1
    return match.group(1).decode(), match.group(2).decode(), text[pos:]


def is_read(sql):
    """Whether the statement only reads (what `readonly` allows)."""
    return READ_ONLY_RE.match(sql) is not None


def sql_literal(value):
    if NUMBER_RE.fullmatch(value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class Front:
    """One chDB session and the lock that serialises every request on it."""

    def __init__(self, session, log):
        self.session, self.log_file = session, log
        self.lock, self.log_lock = threading.Lock(), threading.Lock()

    def log(self, line):
        if self.log_file:
            with self.log_lock:
                self.log_file.write(time.strftime("%H:%M:%S ") + line + "\n")
                self.log_file.flush()

    def run(self, params, body):
        """Run one request; return (output format, output bytes, summary dict)."""
        fmt = params.get("default_format") or "TabSeparated"
        bound = {k[len("param_"):]: v for k, v in params.items() if k.startswith("param_")}
        settings = [(k, v) for k, v in params.items()
                    if k not in PROTOCOL_PARAMS and k not in SERVER_SETTINGS
                    and not k.startswith("param_")]
        database = params.get("database")
        if params.get("readonly", "0") not in ("", "0"):
            statement = params.get("query") or body[:4096].decode("utf-8", "replace")
            if not is_read(statement):
                raise FrontError(164, "Cannot execute query in readonly mode", "READONLY")
        applied = []
        with self.lock:
            try:
                if database:
                    self.session.query("USE `" + database.replace("`", "\\`") + "`")
                for name, value in settings:
                    if not IDENT_RE.fullmatch(name):
                        raise FrontError(115, f"Unknown setting '{name}'", "UNKNOWN_SETTING")
                    self.session.query(f"SET {name} = {sql_literal(value)}")
                    applied.append(name)
                return self.execute(params.get("query", ""), body, fmt, bound)
            finally:  # leave the shared session as we found it
                for name in applied:
                    self.quietly(f"SET {name} = DEFAULT")
                if database:
                    self.quietly("USE default")

    def quietly(self, sql):
        try:
            self.session.query(sql)
        except Exception as exc:  # never hide the request's own error behind this one
            self.log(f"reset failed: {sql}: {exc}")

    def execute(self, query, body, fmt, bound):
        started = time.perf_counter_ns()
        insert = split_insert(query, body)
        if insert:
            head, in_fmt, data = insert
            with self.session.send_insert(head, in_fmt) as stream:  # cancels on error
                if data:
                    stream.append(data)
                res = stream.finish()
            return fmt, b"", {"written_rows": res.rows_written, "written_bytes": res.bytes_written,
                              "elapsed_ns": time.perf_counter_ns() - started}
        sql = "\n".join(p for p in (query, body.decode("utf-8", "replace")) if p)
        if not sql.strip():
            raise FrontError(62, "Empty query", "SYNTAX_ERROR")
        result = self.session.query(sql, fmt, params=bound or None)
        out = result.bytes() or b""
        explicit = TRAILING_FORMAT_RE.search(sql)
        return explicit.group(1) if explicit else fmt, out, {
            "read_rows": result.rows_read(), "read_bytes": result.bytes_read(),
            "result_bytes": len(out), "elapsed_ns": time.perf_counter_ns() - started}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: hyper pools connections
    disable_nagle_algorithm = True  # without TCP_NODELAY every query takes ~44 ms
    server_version = "ch_front"

    def do_GET(self):
        url = urlsplit(self.path)
        params = dict(parse_qsl(url.query, keep_blank_values=True))
        if "query" in params:
            self.handle_query(params, b"")
        elif url.path in ("/", "/ping"):
            self.reply(200, b"Ok.\n", {"Content-Type": "text/plain; charset=UTF-8"})
        else:
            self.reply(404, b"Not found.\n", {"Content-Type": "text/plain; charset=UTF-8"})

    def do_POST(self):
        params = dict(parse_qsl(urlsplit(self.path).query, keep_blank_values=True))
        try:
            body = self.read_body()
        except Exception as exc:  # framing is broken: answer, then drop the connection
            self.close_connection = True
            self.fail(exc, params, b"")
            return
        self.handle_query(params, body)

    def read_body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while True:
                self.quick_ack()
                size = int(self.rfile.readline(65537).split(b";")[0].strip(), 16)
                if size == 0:
                    break
                parts.append(self.rfile.read(size))
                if len(parts[-1]) != size or self.rfile.readline(65537).strip():
                    raise FrontError(1000, "Malformed chunked request body", "BAD_REQUEST")
            while self.rfile.readline(65537).strip():  # trailers, up to the blank line
                pass
            return b"".join(parts)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if len(body) != length:
            raise FrontError(1000, "Request body shorter than Content-Length", "BAD_REQUEST")
        return body

    def quick_ack(self):
        """ACK what has arrived now: the crate sends a chunked body in several small writes,
        and its Nagle plus our delayed ACK would otherwise add ~40 ms to every LZ4 INSERT."""
        if hasattr(socket, "TCP_QUICKACK"):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)

    def handle_query(self, params, body):
        front = self.server.front
        started = time.perf_counter()
        try:
            if params.get("decompress") == "1" and body:
                body = decode_native_blocks(body)
            content_type = self.headers.get("Content-Type", "")
            if content_type.startswith("multipart/form-data"):
                params.update(parse_multipart(body, content_type))
                body = b""
            fmt, out, summary = front.run(params, body)
            if params.get("compress") == "1":
                out = encode_native_blocks(out)
        except Exception as exc:
            self.fail(exc, params, body)
            return
        self.reply(200, out, {
            "Content-Type": "application/octet-stream",
            "X-ClickHouse-Format": fmt,
            "X-ClickHouse-Summary": json.dumps({k: str(v) for k, v in summary.items()}),
        })
        front.log(f"200 {(time.perf_counter() - started) * 1e3:.1f}ms {describe(params, body)}")

    def fail(self, exc, params, body):
        text = INSERT_PREFIX_RE.sub("", str(exc)).strip()
        match = CODE_RE.search(text)
        code = match.group(1) if match else "1000"
        if not text.startswith("Code: "):
            text = f"Code: {code}. DB::Exception: {type(exc).__name__}: {text}"
        self.reply(500, (text + "\n").encode(), {
            "Content-Type": "text/plain; charset=UTF-8",
            "X-ClickHouse-Exception-Code": code,
        })
        self.server.front.log(f"500 {describe(params, body)} -> {text}")

    def reply(self, status, body, headers):
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_request(self, code="-", size="-"):
        pass  # requests are logged by handle_query / fail, with timings

    def log_message(self, format, *args):  # http.server's own complaints
        self.server.front.log("http: " + format % args)


def describe(params, body):
    text = params.get("query") or body[:200].decode("utf-8", "replace")
    return " ".join(text.split())[:200]


def exit_on_stdin_eof():
    while sys.stdin.buffer.read(65536):
        pass
    os._exit(0)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback)")
    parser.add_argument("--port", type=int, default=8123, help="port, 0 = pick a free one")
    parser.add_argument("--path", default=":memory:", help="chDB data directory or :memory:")
    parser.add_argument("--config", help="ClickHouse server config file passed to chDB")
    parser.add_argument("--log", default="none", help="request log: FILE, - (stderr) or none")
    parser.add_argument("--exit-on-stdin-eof", action="store_true",
                        help="exit when stdin reaches EOF (i.e. when the parent dies)")
    args = parser.parse_args()

    log = None if args.log == "none" else sys.stderr if args.log == "-" else open(args.log, "a")
    path = args.path
    if path != ":memory:":
        path = os.path.abspath(path)
        os.makedirs(path, exist_ok=True)
    if args.config:
        if not os.path.isfile(args.config):
            parser.error(f"config file not found: {args.config}")
        path += "?config-file=" + os.path.abspath(args.config)

    front = Front(chdb_session.Session(path), log)
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.front = front
    host, port = server.server_address[:2]
    print(f"http://{host}:{port}", flush=True)
    front.log(f"listening on http://{host}:{port}, chDB session {path}")
    if args.exit_on_stdin_eof:
        threading.Thread(target=exit_on_stdin_eof, daemon=True).start()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
