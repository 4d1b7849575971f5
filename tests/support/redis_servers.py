"""Real redis-server processes for tests: a single node (optionally with a password or TLS only) and a
3-master cluster, on free loopback ports."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import redis

from tests.support.servers import free_port, wait_for


class RedisServer:
    """`redis-server` on a free port, nothing kept on disk; stop() and start() again on the same port.

    `password`: `--requirepass`. `tls`: (cert, key, CA) PEM files; the port then speaks only TLS
    (`--port 0 --tls-port`) and clients are not asked for certificates.
    """

    def __init__(
        self,
        folder: Path,
        *extra: str,
        port: int | None = None,
        password: str | None = None,
        tls: tuple[Path, Path, Path] | None = None,
    ) -> None:
        self.folder = folder
        self.extra = extra
        self.port = port or free_port()
        self.password = password
        self.tls = tls
        self.address = f"127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None
        folder.mkdir(parents=True, exist_ok=True)
        self.start()

    def start(self) -> None:
        log = open(self.folder / f"redis-{self.port}.log", "ab")  # noqa: SIM115 (the server's stdout while it runs)
        self.process = subprocess.Popen(
            [
                "redis-server",
                *self._listen_args(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--dir",
                str(self.folder),
                *self.extra,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        try:
            wait_for(self._answers, 10, f"redis-server on port {self.port}")
        except BaseException:
            self.stop()
            raise

    def _listen_args(self) -> list[str]:
        args = ["--port", str(self.port)]
        if self.tls is not None:
            cert, key, ca = self.tls
            args = [
                "--port",
                "0",
                "--tls-port",
                str(self.port),
                "--tls-cert-file",
                str(cert),
                "--tls-key-file",
                str(key),
                "--tls-ca-cert-file",
                str(ca),
                "--tls-auth-clients",
                "no",
            ]
        if self.password is not None:
            args += ["--requirepass", self.password]
        return args

    def _client_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"host": "127.0.0.1", "port": self.port, "password": self.password}
        if self.tls is not None:
            options.update(ssl=True, ssl_ca_certs=str(self.tls[2]))
        return options

    def _answers(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"redis-server on port {self.port} exited with {self.process.returncode}")
        try:
            with redis.Redis(socket_timeout=1, **self._client_options()) as client:
                return bool(client.ping())
        except redis.exceptions.AuthenticationError:
            raise
        except redis.exceptions.ConnectionError:
            return False

    def client(self) -> redis.Redis:
        return redis.Redis(decode_responses=True, **self._client_options())

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


class RedisClusterServers:
    """Three masters joined with `redis-cli --cluster create`, with `replicas` replicas each (default none)."""

    def __init__(self, folder: Path, replicas: int = 0, node_timeout_ms: int = 5000) -> None:
        self.replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        self.nodes: list[RedisServer] = []
        try:
            self._create(folder)
        except BaseException:
            self.stop()
            raise
        self.address = self.nodes[0].address

    def _create(self, folder: Path) -> None:
        for n in range(3 * (1 + self.replicas)):
            port = free_port()
            self.nodes.append(
                RedisServer(
                    folder / f"node-{n}",
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    str(folder / f"nodes-{port}.conf"),
                    "--cluster-node-timeout",
                    str(self.node_timeout_ms),
                    "--cluster-port",
                    str(free_port()),
                    port=port,
                )
            )
        subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *(n.address for n in self.nodes),
                "--cluster-replicas",
                str(self.replicas),
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        wait_for(self._ready, 30, "the redis cluster to report cluster_state:ok")

    def _ready(self) -> bool:
        for node in self.live_nodes():
            with redis.Redis(port=node.port, decode_responses=True) as client:
                info = client.execute_command("CLUSTER INFO")
                text = info if isinstance(info, str) else str(info)
                if "cluster_state:ok" not in text and not (
                    isinstance(info, dict) and info.get("cluster_state") == "ok"
                ):
                    return False
        return True

    def live_nodes(self) -> list[RedisServer]:
        return [n for n in self.nodes if n.process is not None and n.process.poll() is None]

    def master_of(self, key: str) -> RedisServer:
        """The node that a live node's CLUSTER SLOTS names as master for `key`'s slot."""
        with self.live_nodes()[0].client() as client:
            slot = client.execute_command("CLUSTER KEYSLOT", key)
            for start, end, master, *_ in client.execute_command("CLUSTER SLOTS"):
                if start <= slot <= end:
                    return next(n for n in self.nodes if n.port == int(master[1]))
        raise AssertionError(f"no master serves {key!r}")

    def flush(self) -> None:
        for node in self.nodes:
            with node.client() as client:
                client.flushall()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def redis_tls_supported() -> bool:
    """Whether the installed redis-server has TLS built in (it then links OpenSSL: `SSL_CTX_new`)."""
    path = shutil.which("redis-server")
    return path is not None and b"SSL_CTX_new" in Path(path).read_bytes()
