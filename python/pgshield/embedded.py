"""Embedded Postgres: a local cluster started from the machine's own server binaries.

Used by ``pgshield db``, ``pgshield demo`` and the tests. When the process runs as root the
server runs as an unprivileged OS user (``postgres`` when it exists, else a ``pgshield`` system
user that is created), because ``initdb`` refuses to run as root.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pgshield.errors import SetupError

SERVER_TOOLS = ("initdb", "pg_ctl", "postgres")
SEARCH_GLOBS = (
    "/usr/lib/postgresql/*/bin",
    "/usr/pgsql-*/bin",
    "/opt/homebrew/opt/postgresql@*/bin",
    "/usr/local/opt/postgresql@*/bin",
    "/opt/homebrew/bin",
    "/usr/local/pgsql/bin",
    "/usr/local/bin",
)
RUN_AS_CANDIDATES = ("postgres", "pgshield")


def _has_tools(path: Path) -> bool:
    return all((path / tool).is_file() for tool in SERVER_TOOLS)


def _version_key(path: str) -> tuple[int, ...]:
    digits = "".join(c if c.isdigit() else " " for c in path).split()
    return tuple(int(d) for d in digits)


def find_bindir() -> Path:
    """The directory holding initdb, pg_ctl and postgres.

    Order: ``$PGSHIELD_PG_BINDIR``, ``pg_config --bindir``, ``PATH``, then the usual Debian,
    RPM and Homebrew locations (newest major first). Raises SetupError naming what to install.
    """
    explicit = os.environ.get("PGSHIELD_PG_BINDIR")
    if explicit:
        if _has_tools(Path(explicit)):
            return Path(explicit)
        raise SetupError(f"PGSHIELD_PG_BINDIR={explicit} does not hold {', '.join(SERVER_TOOLS)}")
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            )
            candidates.append(Path(out.stdout.strip()))
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).resolve().parent)
    for pattern in SEARCH_GLOBS:
        candidates.extend(
            Path(p) for p in sorted(glob.glob(pattern), key=_version_key, reverse=True)
        )
    for path in candidates:
        if _has_tools(path):
            return path
    raise SetupError(
        "no Postgres server binaries found (initdb, pg_ctl, postgres)",
        hint="install them, e.g. `apt-get install postgresql-15 postgresql-15-pgtap "
        "postgresql-15-cron postgresql-15-plpgsql-check`, or set PGSHIELD_PG_BINDIR",
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run_as_user() -> pwd.struct_passwd | None:
    """The unprivileged OS user the server runs as when we are root (None when not root)."""
    if os.geteuid() != 0:
        return None
    for name in RUN_AS_CANDIDATES:
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "pgshield"],
        check=True,
        capture_output=True,
    )
    return pwd.getpwnam("pgshield")


@dataclass
class Cluster:
    """One Postgres cluster in ``base`` (data in ``base/data``, socket in ``base/run``)."""

    base: Path
    port: int | None = None
    bindir: Path | None = None
    fast: bool = False  # fsync off etc.: for throw-away test clusters only

    def __post_init__(self) -> None:
        self.base = Path(self.base)
        self.bindir = Path(self.bindir) if self.bindir else find_bindir()
        self.user = _run_as_user()
        if self.port is None:
            self.port = self._saved().get("port") or free_port()

    # ------------------------------------------------------------ paths ----
    @property
    def data(self) -> Path:
        return self.base / "data"

    @property
    def socket_dir(self) -> Path:
        return self.base / "run"

    @property
    def log(self) -> Path:
        return self.base / "postgres.log"

    @property
    def sharedir(self) -> Path:
        out = subprocess.run(
            [str(self.bindir / "pg_config"), "--sharedir"], capture_output=True, text=True
        )
        if out.returncode == 0:
            return Path(out.stdout.strip())
        return self.bindir.parent / "share"

    @property
    def pkglibdir(self) -> Path:
        out = subprocess.run(
            [str(self.bindir / "pg_config"), "--pkglibdir"], capture_output=True, text=True
        )
        if out.returncode == 0:
            return Path(out.stdout.strip())
        return self.bindir.parent / "lib"

    def has_extension(self, name: str) -> bool:
        """Whether the server has ``name`` installed (its control file exists)."""
        return (self.sharedir / "extension" / f"{name}.control").is_file()

    @property
    def has_pg_cron(self) -> bool:
        return self.has_extension("pg_cron") and any(
            (self.pkglibdir / f"pg_cron{ext}").exists() for ext in (".so", ".dylib")
        )

    def dsn(self, dbname: str = "postgres", user: str = "postgres") -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{dbname}"

    # ----------------------------------------------------------- running ---
    def _saved(self) -> dict:
        meta = self.base / "pgshield.json"
        return json.loads(meta.read_text()) if meta.is_file() else {}

    def _cmd(self, args: list[str], **kwargs) -> subprocess.CompletedProcess:
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        if self.user is not None:
            kwargs["user"] = self.user.pw_uid
            kwargs["group"] = self.user.pw_gid
            kwargs.setdefault("cwd", "/")
        return subprocess.run(args, **kwargs)

    def _own(self, path: Path) -> None:
        if self.user is not None:
            os.chown(path, self.user.pw_uid, self.user.pw_gid)

    def initialized(self) -> bool:
        return (self.data / "PG_VERSION").is_file()

    def _check_reachable(self) -> None:
        """The server user must be able to traverse every directory above ``base``."""
        if self.user is None:
            return
        for parent in self.base.resolve().parents:
            st = parent.stat()
            if st.st_uid == self.user.pw_uid:
                continue
            bit = 0o010 if st.st_gid == self.user.pw_gid else 0o001
            if not st.st_mode & bit:
                raise SetupError(
                    f"the server runs as OS user {self.user.pw_name!r},"
                    f" which cannot enter {parent}",
                    hint="put the cluster in a directory that user can reach (e.g. under /tmp "
                    "or /var/lib), or set PGSHIELD_HOME",
                )

    def init(self) -> None:
        """Run initdb and write the settings (no-op when already initialized)."""
        if self.initialized():
            return
        self.base.parent.mkdir(parents=True, exist_ok=True)
        self._check_reachable()
        self.base.mkdir(parents=True, exist_ok=True)
        self.base.chmod(0o755)
        self._own(self.base)
        for path in (self.data, self.socket_dir):
            path.mkdir(mode=0o700, exist_ok=True)
            self._own(path)
        out = self._cmd(
            [
                str(self.bindir / "initdb"),
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ]
        )
        if out.returncode != 0:
            raise SetupError(f"initdb failed: {out.stderr.strip() or out.stdout.strip()}")
        settings = {
            "port": self.port,
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.socket_dir}'",
            "max_connections": 200,
            "shared_buffers": "'256MB'",
            "timezone": "'UTC'",
            "log_min_messages": "warning",
        }
        if self.has_pg_cron:
            settings["shared_preload_libraries"] = "'pg_cron'"
            settings["cron.database_name"] = "'postgres'"
        if self.fast:
            settings.update(fsync="off", synchronous_commit="off", full_page_writes="off")
        conf = "".join(f"{k} = {v}\n" for k, v in settings.items())
        with open(self.data / "postgresql.conf", "a") as fh:
            fh.write("\n# pgshield embedded cluster\n" + conf)
        (self.base / "pgshield.json").write_text(json.dumps({"port": self.port}))

    def running(self) -> bool:
        if not self.initialized():
            return False
        out = self._cmd([str(self.bindir / "pg_ctl"), "status", "-D", str(self.data)])
        return out.returncode == 0

    def start(self) -> Cluster:
        """initdb when needed, then start the server and wait until it accepts connections."""
        self.init()
        if self.running():
            return self
        if self.log.exists():
            self._own(self.log)
        else:
            self.log.touch()
            self._own(self.log)
        out = self._cmd(
            [
                str(self.bindir / "pg_ctl"),
                "start",
                "-w",
                "-t",
                "60",
                "-D",
                str(self.data),
                "-l",
                str(self.log),
            ]
        )
        if out.returncode != 0:
            tail = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise SetupError(f"Postgres did not start: {out.stderr.strip()}\n{tail}".strip())
        return self

    def stop(self) -> None:
        """Stop the server (fast shutdown); no-op when it is not running."""
        if self.running():
            self._cmd(
                [str(self.bindir / "pg_ctl"), "stop", "-w", "-m", "fast", "-D", str(self.data)]
            )

    def destroy(self) -> None:
        """Stop the server and delete its directory."""
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)


def dev_cluster_dir() -> Path:
    """The persistent dev cluster's directory: ``$PGSHIELD_HOME``, else per user.

    Root's home is not readable by the unprivileged server user, so root uses
    ``/var/lib/pgshield/dev``; other users ``$XDG_DATA_HOME/pgshield/dev``.
    """
    if os.environ.get("PGSHIELD_HOME"):
        return Path(os.environ["PGSHIELD_HOME"]) / "dev"
    if os.geteuid() == 0:
        return Path("/var/lib/pgshield/dev")
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg) / "pgshield" / "dev"


def dev_cluster() -> Cluster:
    """The persistent dev cluster (not started)."""
    return Cluster(dev_cluster_dir())


@contextlib.contextmanager
def throwaway_cluster(prefix: str = "pgshield-") -> Iterator[Cluster]:
    """A fresh, fast cluster in a temporary directory, destroyed on exit."""
    base = Path(tempfile.mkdtemp(prefix=prefix))
    cluster = Cluster(base, fast=True)
    try:
        yield cluster.start()
    finally:
        cluster.destroy()
