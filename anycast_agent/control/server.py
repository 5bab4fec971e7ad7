"""The control endpoint's lifecycle: bind, serve in the agent's own loop, stop in bounded time."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import secrets
import socket
import stat
import time
from ipaddress import ip_address
from pathlib import Path

from aiohttp import web

from anycast_agent.config import Control
from anycast_agent.control.api import BODY_TIMEOUT_S, MAX_BODY, Controller, make_app
from anycast_agent.control.guard import HEAD_TIMEOUT_S, KEEPALIVE_S, MAX_CONNECTIONS, GuardedSite
from anycast_agent.errors import ConfigError

log = logging.getLogger("anycast_agent.control")

SOCKET_MODE = 0o660
TOKEN_FILE = "control.token"  # in state_dir, made at the first start without a token_file
# The agent must exit within 1 s of EOF from ExaBGP (DESIGN §3.6): stop() takes at most this.
SHUTDOWN_TIMEOUT_S = 0.4
BIND_RETRY_S = 2.0
BIND_RETRY_EVERY_S = 0.1


def load_token(path: Path | str) -> str:
    """The bearer token in `path`; refuse a file others can read or a group can write."""
    path = Path(path)
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(str(path), ["the token file is not a regular file"])
        mode = stat.S_IMODE(st.st_mode)
        if mode & (stat.S_IRWXO | stat.S_IWGRP):
            raise ConfigError(
                str(path),
                [
                    f"token file mode {mode:04o} lets others read it or its group write it: "
                    f"chmod 0600 (or 0640) {path}"
                ],
            )
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read the token file: {exc.strerror}"]) from None
    except UnicodeDecodeError:
        raise ConfigError(str(path), ["the token file is not UTF-8 text"]) from None
    token = text.strip()
    if not token:
        raise ConfigError(str(path), ["the token file is empty"])
    if not token.isascii() or not token.isprintable() or " " in token:
        raise ConfigError(
            str(path), ["the token must be one word of printable ASCII (it goes in a header)"]
        )
    return token


def ensure_token(path: Path) -> str:
    """The token in `path`, made first (0600, random) when there is none."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        token = secrets.token_urlsafe(32)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:  # another start made it meanwhile: use that one
            return load_token(path)
        except OSError as exc:
            raise ConfigError(
                str(path), [f"cannot create the token file: {exc.strerror}"]
            ) from None
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(token + "\n")
            f.flush()
            os.fsync(f.fileno())
        log.info("made the control token %s (the CLI reads it from there)", path)
    return load_token(path)


def _tcp_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ip_address(host).version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _unix_socket(path: str) -> socket.socket:
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            if _answers(path):  # another agent's (a dry run must never take it over)
                raise OSError(errno.EADDRINUSE, os.strerror(errno.EADDRINUSE), path)
            os.unlink(path)  # left by a previous run (a respawn does not clean up)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # The socket is created with the process umask: narrow it around bind so the file is never
    # reachable by others, even for the moment before the chmod (no await in between).
    old = os.umask(0o117)
    try:
        sock.bind(path)
        os.chmod(path, SOCKET_MODE)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    finally:
        os.umask(old)
    return sock


def _answers(path: str) -> bool:
    """Whether a process listens on the unix socket at `path`."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except OSError:
            return False
    return True


def default_hosts(listen: str, allowed: tuple[str, ...]) -> frozenset[str]:
    """The Host names a request may carry: `allowed` when the config names them, else the
    listen address and the loopback names (DNS rebinding brings any other name)."""
    if allowed:
        return frozenset(h.strip("[]").lower() for h in allowed)
    listen_host = listen.rpartition(":")[0].strip("[]").lower()
    return frozenset({listen_host, "localhost", "127.0.0.1", "::1"})


class ControlServer:
    """The aiohttp control endpoint, started and stopped by the agent inside its own loop."""

    def __init__(
        self,
        controller: Controller,
        listen: str,
        token: str | None,
        *,
        max_body: int = MAX_BODY,
        shutdown_timeout_s: float = SHUTDOWN_TIMEOUT_S,
        allowed_hosts: tuple[str, ...] = (),
        max_connections: int = MAX_CONNECTIONS,
        head_timeout_s: float = HEAD_TIMEOUT_S,
        body_timeout_s: float = BODY_TIMEOUT_S,
    ) -> None:
        self.listen = listen
        self._guard_args = {"max_connections": max_connections, "head_timeout_s": head_timeout_s}
        self.site: GuardedSite | None = None
        hosts = None if listen.startswith("unix:") else default_hosts(listen, allowed_hosts)
        self._app = make_app(
            controller,
            token,
            max_body=max_body,
            allowed_hosts=hosts,
            body_timeout_s=body_timeout_s,
        )
        if shutdown_timeout_s <= 0:
            raise ValueError(f"shutdown_timeout_s must be > 0, got {shutdown_timeout_s!r}")
        self._shutdown_timeout_s = shutdown_timeout_s
        self._runner: web.AppRunner | None = None
        self._address: tuple[str, int] | str | None = None
        self._inode: int | None = None  # of the unix socket this process bound

    @classmethod
    def from_config(
        cls, controller: Controller, control: Control, state_dir: Path, *, ephemeral: bool = False
    ) -> ControlServer:
        """Read (or make) the token now, never after start; raises ConfigError. Every change
        needs a credential, on loopback too (R34): the configured token file; on a unix
        socket, its mode 0660 and group; else a token the agent makes at its first start in
        `state_dir/control.token`, where the CLI finds it (`ephemeral`: one that is never
        written, for `run --dry-run`)."""
        if control.token_file is not None:
            token: str | None = load_token(control.token_file)
        elif control.listen.startswith("unix:"):
            token = None
        elif ephemeral:
            token = secrets.token_urlsafe(32)
        else:
            token = ensure_token(state_dir / TOKEN_FILE)
        return cls(
            controller,
            control.listen,
            token,
            allowed_hosts=control.allowed_hosts,
            max_connections=control.max_connections,
        )

    @property
    def app(self) -> web.Application:
        return self._app

    @property
    def address(self) -> tuple[str, int] | str:
        """The bound (host, port) (the real port when asked for 0) or unix socket path."""
        if self._address is None:
            raise RuntimeError("the control server is not started")
        return self._address

    async def start(self) -> None:
        if self._runner is not None:
            raise RuntimeError("the control server is already started")
        sock = self._bind()
        runner = web.AppRunner(
            self._app,
            handle_signals=False,  # the agent owns signals
            access_log=None,  # stderr is for the agent's own log lines
            # aiohttp waits this long twice for a busy connection (let the handler finish, then
            # cancel it and wait again), and 0 means forever: half the budget each.
            shutdown_timeout=self._shutdown_timeout_s / 2,
            keepalive_timeout=KEEPALIVE_S,
        )
        try:
            await runner.setup()
            self.site = GuardedSite(runner, sock, self._guard_args)
            await self.site.start()
        except BaseException:
            sock.close()
            await runner.cleanup()
            raise
        self._runner = runner
        name = sock.getsockname()
        self._address = name if isinstance(name, str) else (str(name[0]), int(name[1]))
        self._inode = os.lstat(name).st_ino if isinstance(name, str) else None
        log.info("control endpoint listening on %s", self.describe())

    async def serve(self, retry_s: float = BIND_RETRY_S) -> bool:
        """`start`, but a failure to bind is logged, not raised: the agent runs on without its
        endpoint (routes matter more than status); False then. An address in use is tried
        again for `retry_s`: the previous agent may still be letting it go (R8)."""
        deadline = time.monotonic() + retry_s
        while True:
            try:
                await self.start()
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE and time.monotonic() < deadline:
                    await asyncio.sleep(BIND_RETRY_EVERY_S)
                    continue
                log.critical(
                    "control endpoint %s unavailable (%s): running without status, metrics and "
                    "operator control",
                    self.listen,
                    exc.strerror or exc,
                )
                return False
            return True

    def _bind(self) -> socket.socket:
        if self.listen.startswith("unix:"):
            return _unix_socket(self.listen[5:])
        host, _, port = self.listen.rpartition(":")
        return _tcp_socket(host.removeprefix("[").removesuffix("]"), int(port))

    def describe(self) -> str:
        addr = self.address
        if isinstance(addr, str):
            return f"unix:{addr}"
        host, port = addr
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    async def stop(self) -> None:
        """Close the listener and connections; returns within `shutdown_timeout_s` (+ a tick)."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        await runner.cleanup()
        if isinstance(self._address, str) and self._inode is not None:
            # Only the socket this process made: another agent's must survive our exit (R8).
            with contextlib.suppress(FileNotFoundError):
                if os.lstat(self._address).st_ino == self._inode:
                    os.unlink(self._address)
        log.info("control endpoint stopped")

    async def __aenter__(self) -> ControlServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
