"""Who runs the simulated work: process identities and per-sample process tables.

The simulator's work model (:mod:`minerwatch.bench.simulate`) adds CPU per component (the
web app, the nightly backup, a compile, a miner...). Each component also tells a
:class:`Procs` recorder which processes carry that CPU, so the process table written beside
the samples adds up with the host's ``cpu_percent`` and its busiest row *is*
``top_proc_cpu_percent``. Identities are realistic per archetype, change the way real hosts
change them (a deploy moves the app to a new release folder, a toolchain upgrade moves the
compiler, a package upgrade restarts daemons under new pids) and miners come as a plainly new
executable, a disguise, or extra CPU inside a familiar process.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from minerwatch.features.procs import PROC_TABLE_HEADER

#: How a campaign's process looks to someone reading ``ps``.
IDENTITY_KINDS: tuple[str, ...] = ("new", "disguised", "inside")
#: Share of campaigns of each identity kind (new, disguised, inside).
IDENTITY_MIX: tuple[float, ...] = (0.40, 0.35, 0.25)
#: The collector lists this many busiest processes per sample (plus every miner)...
TOP_N = 10
#: ...that used at least this much of a core (tenths of a percent): idle ones are left out.
FLOOR_TENTHS = 5

#: A compiler process per translation unit lives this long: lognormal with a per-build
#: median (seconds) and log-spread (our assumption: most C/C++ units compile in seconds, a
#: heavy template unit in a minute or more).
CC_MEDIAN_S = (3.0, 20.0)
CC_SIGMA = 1.0
#: Compiler processes take pids from here (a build forks thousands; the long-running
#: processes' pids stay below it).
CC_PID0 = 1_000_000
JAVA = "/usr/lib/jvm/java-17-openjdk-amd64/bin/java"
GCC = "/usr/lib/gcc/x86_64-linux-gnu/{v}/cc1plus"
APP = "/srv/app/releases/{r}/venv/bin/python3"
_DAEMONS = (  # (name, exe, user, share of the background daemons' CPU)
    ("systemd", "/usr/lib/systemd/systemd", "root", 0.07),
    ("systemd-journal", "/usr/lib/systemd/systemd-journald", "root", 0.14),
    ("rsyslogd", "/usr/sbin/rsyslogd", "syslog", 0.09),
    ("sshd", "/usr/sbin/sshd", "root", 0.03),
    ("cron", "/usr/sbin/cron", "root", 0.01),
    ("node_exporter", "/usr/local/bin/node_exporter", "node_exporter", 0.18),
    ("kworker/0:1", "", "root", 0.07),
    ("kworker/1:2", "", "root", 0.06),
    ("ksoftirqd/0", "", "root", 0.04),
    ("rcu_sched", "", "root", 0.03),
    ("kswapd0", "", "root", 0.02),
)
#: Daemons a package upgrade may restart (new pid, same executable).
_RESTARTABLE = ("sshd", "rsyslogd", "node_exporter", "cron", "systemd-journal")
_ADMIN_TOOLS = (
    ("bash", "/usr/bin/bash"),
    ("grep", "/usr/bin/grep"),
    ("find", "/usr/bin/find"),
    ("du", "/usr/bin/du"),
    ("tar", "/usr/bin/tar"),
    ("journalctl", "/usr/bin/journalctl"),
    ("python3", "/usr/bin/python3.11"),
    ("vim.basic", "/usr/bin/vim.basic"),
)
#: Tools an administrator runs once in a while, never in training on purpose: (name, exe,
#: most threads).
NEW_TOOLS = (
    ("pigz", "/usr/bin/pigz", 4),
    ("rsync", "/usr/bin/rsync", 1),
    ("zstd", "/usr/bin/zstd", 4),
    ("xz", "/usr/bin/xz", 2),
    ("sha256sum", "/usr/bin/sha256sum", 1),
    ("ffmpeg", "/usr/bin/ffmpeg", 4),
)
_NEW_MINERS = (
    ("xmrig", "/opt/.cache/xmrig"),
    ("sysupdate", "/home/{u}/.local/bin/sysupdate"),
    ("networkservice", "/usr/local/bin/networkservice"),
    ("dbused", "/var/lib/{u}/.dbused"),
)


@dataclass(frozen=True)
class Ident:
    """A process identity as ``ps`` shows it (name at most 15 bytes, as the kernel's comm)."""

    name: str
    exe: str
    user: str


def _ident(name: str, exe: str, user: str) -> Ident:
    return Ident(name.encode()[:15].decode(errors="ignore"), exe, user)


def _service_user(arch: str, flavour: str) -> str:
    return {
        "web": "app",
        "database": "postgres" if flavour == "postgres" else "mysql",
        "cache": "redis" if flavour == "redis" else "memcache",
        "ci": "jenkins",
        "batch": "batch",
    }.get(arch, "ops")


class Procs:
    """Per-host record of which processes carry each piece of CPU work.

    Components register per-sample CPU in cores (``sl`` is the sample slice, as in the work
    model); :meth:`finish` scales them to the host's measured busy CPU, merges rows of the
    same pid and keeps the busiest :data:`TOP_N` per sample plus the miner.
    """

    def __init__(self, spec: Any, clock: Any, rng: np.random.Generator) -> None:
        self.spec = spec
        self.clock = clock
        self.rng = rng
        self.idents: list[Ident] = []
        self._ids: dict[Ident, int] = {}
        self._pid = int(rng.integers(300, 3000))
        self._rows: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float, float]] = []
        # share of a JVM's CPU its garbage collector takes in normal running: a per-host
        # constant from the name (no draw from rng, so the rest of the fleet is unchanged)
        h = int(hashlib.sha1(f"gc{spec.name}".encode()).hexdigest()[:8], 16)
        self.gc_share = 0.02 + 0.08 * (h % 1000) / 1000
        self._miner: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.user = _service_user(spec.archetype, spec.flavour)
        self.admin = str(rng.choice(("ops", "alice", "deploy", "root")))
        # timelines of identity changes, sample index -> new state (filled by plan())
        self.release_at = np.zeros(1, np.int64)
        self.releases: list[str] = [self._release_id(clock.start - 86400 * rng.uniform(1, 30))]
        self.gcc_at = clock.n  # sample from which compiles use the new compiler
        self.gcc = int(rng.choice((11, 12)))
        self.restarts: dict[str, list[int]] = {}
        self._long: dict[str, np.ndarray] = {}  # pids of long-running processes, per restart
        self._fixed_pids: dict[str, np.ndarray] = {}  # pids of pools that never restart
        self._app_pids = np.zeros((len(self.releases), 1), np.int64)  # release x worker
        self._cc_pid = 0  # compiler processes forked so far (pids from CC_PID0)

    # ------------------------------------------------------------------ identities and pids

    def ident(self, name: str, exe: str, user: str) -> int:
        key = _ident(name, exe, user)
        if key not in self._ids:
            self._ids[key] = len(self.idents)
            self.idents.append(key)
        return self._ids[key]

    def pids(self, k: int = 1) -> np.ndarray:
        """Fresh pids, increasing as the kernel hands them out."""
        step = self.rng.integers(1, 40, k)
        out = self._pid + np.cumsum(step)
        self._pid = int(out[-1])
        return out.astype(np.int64)

    def _release_id(self, t: float) -> str:
        digest = hashlib.sha1(f"{self.spec.name}{t}".encode()).hexdigest()[:7]
        return f"{datetime.fromtimestamp(t, UTC):%Y%m%d%H%M}-{digest}"

    def plan(self, events: list[Any]) -> None:
        """Identity timelines from the schedule: releases, compiler upgrade, daemon restarts."""
        iv = self.clock.interval
        at = [0]
        for ev in sorted(events, key=lambda e: e.segments[0][0]):
            s, e = ev.segments[0]
            if ev.kind == "deploy" and self.spec.archetype == "web":
                live = s + 0.7 * (e - s)  # the new release starts before the deploy ends
                ev.params["release_live"] = live
                at.append(max(at[-1], int(np.floor(live / iv)) + 1))  # overlapping deploys
                self.releases.append(self._release_id(self.clock.start + live))
            elif ev.kind == "toolchain_upgrade":
                self.gcc_at = min(self.gcc_at, int(np.floor(ev.params["upgrade_end"] / iv)) + 1)
            elif ev.kind in ("package_upgrade", "deploy"):
                k = int(np.floor(e / iv)) + 1
                for name in ev.params.get("restarts", ()):
                    self.restarts.setdefault(name, []).append(k)
        self.release_at = np.asarray(at, np.int64)

    def _epochs(self, idx: np.ndarray, changes: list[int], pids: np.ndarray) -> np.ndarray:
        return pids[np.searchsorted(np.asarray(changes, np.int64), idx, "right")]

    def app(self, idx: np.ndarray, worker: int) -> tuple[np.ndarray, np.ndarray]:
        """Ident and pid of the web app's worker ``worker`` at samples ``idx`` (by release)."""
        epoch = np.searchsorted(self.release_at, idx, "right") - 1
        ids = np.array([self.ident("gunicorn", APP.format(r=r), "app") for r in self.releases])
        pid_table = self._app_pids[:, worker]
        return ids[epoch], pid_table[epoch]

    def _restartable(self, name: str) -> bool:
        return name in _RESTARTABLE or name == self.main_name()

    def main_name(self) -> str:
        return {
            "database": "postgres" if self.spec.flavour == "postgres" else "mysqld",
            "cache": "redis-server" if self.spec.flavour == "redis" else "memcached",
            "web": "nginx",
        }.get(self.spec.archetype, "")

    # ------------------------------------------------------------------ recording

    def add(
        self,
        sl: slice,
        cores: np.ndarray | float,
        ident: int | np.ndarray,
        pid: int | np.ndarray,
        cap: float = np.inf,
        gc: float | None = None,
    ) -> None:
        """One process (or, with -1 as ident, unlisted small ones) at ``cores`` per sample;
        ``gc`` is the share of it its garbage-collector threads run (a JVM's usual by default)."""
        idx = np.arange(sl.start, sl.stop)
        if idx.size == 0:
            return
        cpu = np.broadcast_to(np.asarray(cores, float) * 100.0, idx.shape).copy()
        ids = np.broadcast_to(np.asarray(ident, np.int64), idx.shape)
        ps = np.broadcast_to(np.asarray(pid, np.int64), idx.shape)
        if gc is None:
            gc = self.gc_share if np.ndim(ident) == 0 and self._is_jvm(int(ident)) else 0.0
        if np.isfinite(cap) and np.ndim(pid) == 0 and cpu.max() > cap:
            # a single-threaded program given more than a core forked helpers: fill them
            helpers = self.pids(int(np.ceil(cpu.max() / cap)) - 1)
            for j, helper in enumerate(helpers.tolist(), start=1):
                part = np.clip(cpu - cap * j, 0.0, cap)
                self._rows.append((idx, ids, np.full(idx.shape, helper), part, cap, gc))
            cpu = np.minimum(cpu, cap)
        self._rows.append((idx, ids, ps, cpu, cap, gc))

    def _is_jvm(self, ident: int) -> bool:
        return ident >= 0 and self.idents[ident].name == "java"

    def pool(
        self,
        sl: slice,
        cores: np.ndarray,
        ident: int,
        k: int,
        cap: float = np.inf,
        pids: np.ndarray | None = None,
        skew: float = 2.0,
    ) -> None:
        """``k`` processes of one identity sharing ``cores`` unevenly (workers, backends)."""
        split = self._split(sl, cores, k, cap, pids, skew)
        if split is None:
            return
        pids, share = split
        for j in range(len(pids)):
            self.add(sl, share[:, j], ident, int(pids[j]), cap)

    def _split(
        self,
        sl: slice,
        cores: np.ndarray,
        k: int,
        cap: float = np.inf,
        pids: np.ndarray | None = None,
        skew: float = 2.0,
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """Pids and per-sample cores (samples x pids) of ``k`` uneven sharers of ``cores``."""
        m = sl.stop - sl.start
        if m <= 0 or k <= 0:
            return None
        c = np.broadcast_to(np.asarray(cores, float), (m,))
        if np.isfinite(cap) and pids is None:
            k = max(k, int(np.ceil(float(c.max(initial=0.0)) * 100.0 / cap - 1e-9)))
        pids = self.pids(k) if pids is None else pids
        k = len(pids)
        steady = self.rng.gamma(skew, size=k)
        w = steady[None, :] * self.rng.gamma(4.0, size=(m, k))
        w /= w.sum(axis=1, keepdims=True)
        share = c[:, None] * w
        if np.isfinite(cap):  # water-filling: what a capped process cannot take, others do
            top = cap / 100.0
            for _ in range(6):
                over = np.maximum(share - top, 0.0).sum(axis=1, keepdims=True)
                share = np.minimum(share, top)
                room = top - share
                total = room.sum(axis=1, keepdims=True)
                with np.errstate(invalid="ignore", divide="ignore"):
                    share += np.where(total > 0, room / total * np.minimum(over, total), 0.0)
        return pids, share

    def unlisted(self, sl: slice, cores: np.ndarray | float) -> None:
        """Many short or tiny processes nobody lists; they still count in the host's CPU."""
        self.add(sl, cores, -1, 0)

    def miner(self, sl: slice, alive: np.ndarray, ident: int | np.ndarray, pid: Any) -> None:
        """A campaign's process; its CPU is what the miner got, known only in finalise."""
        idx = np.arange(sl.start, sl.stop)[alive]
        ids = np.broadcast_to(
            np.asarray(ident, np.int64)[alive] if np.ndim(ident) else ident, idx.shape
        )
        ps = np.broadcast_to(np.asarray(pid, np.int64)[alive] if np.ndim(pid) else pid, idx.shape)
        self._miner.append((idx, np.asarray(ids), np.asarray(ps)))

    # ------------------------------------------------------------------ the archetypes

    def background(self, sl: slice, cores: np.ndarray) -> None:
        """The OS daemons and kernel threads every host has."""
        arch = self.spec.archetype
        extra: list[tuple[str, str, str, float]] = []
        if arch in ("ci", "batch"):  # a long-lived JVM: the CI agent, the batch scheduler
            extra.append(("java", JAVA, self.user, 0.12))
        if arch == "cache":
            extra.append(("java", "/usr/share/logstash/jdk/bin/java", "logstash", 0.1))
        listed = 0.0
        for name, exe, user, share in (*_DAEMONS, *extra):
            ident = self.ident(name, exe, user)
            pid = self._long_pid(name)
            self.add(sl, cores * share, ident, self._at(pid, sl))
            listed += share
        self.unlisted(sl, cores * max(0.0, 1.0 - listed))

    def _long_pid(self, name: str) -> np.ndarray | int:
        """A long-running process's pid per sample: a new one after each restart."""
        changes = self.restarts.get(name, []) if self._restartable(name) else []
        if name not in self._long:
            self._long[name] = self.pids(len(changes) + 1)
        pids = self._long[name]
        if not changes:
            return int(pids[0])
        return self._epochs(np.arange(self.clock.n), changes, pids)

    def long(self, name: str, exe: str, user: str) -> tuple[int, np.ndarray | int]:
        return self.ident(name, exe, user), self._long_pid(name)

    def _at(self, value: np.ndarray | int, sl: slice) -> np.ndarray | int:
        return value[sl] if isinstance(value, np.ndarray) else value

    def base(self, sl: slice, cores: np.ndarray) -> None:
        """The archetype's own service, carrying its daily rhythm."""
        arch, fl, c = self.spec.archetype, self.spec.flavour, self.spec.cores
        if arch == "web":
            workers = min(2 * c + 1, 17)
            self._app_pids = np.stack([self.pids(workers) for _ in self.releases])
            idx = np.arange(sl.start, sl.stop)
            steady = self.rng.gamma(2.0, size=workers)
            w = steady[None, :] * self.rng.gamma(4.0, size=(idx.size, workers))
            w /= w.sum(axis=1, keepdims=True)
            for j in range(workers):
                ids, ps = self.app(idx, j)
                self.add(sl, 0.74 * cores * w[:, j], ids, ps)
            nginx = self.ident("nginx", "/usr/sbin/nginx", "www-data")
            self.pool(sl, 0.12 * cores, nginx, min(c, 4), pids=self._fixed("nginx", min(c, 4)))
            ident, pid = self.long("node", "/usr/bin/node", "app")
            self.add(sl, 0.08 * cores, ident, self._at(pid, sl))
            ident, pid = self.long("java", JAVA, "app")  # the search service's JVM
            self.add(sl, 0.04 * cores, ident, self._at(pid, sl))
            self.unlisted(sl, 0.02 * cores)
        elif arch == "database" and fl == "postgres":
            pg = self.ident("postgres", "/usr/lib/postgresql/14/bin/postgres", "postgres")
            k = min(c, 12)
            self.pool(sl, 0.85 * cores, pg, k, cap=100.0, pids=self._fixed("backends", k))
            self.pool(sl, 0.1 * cores, pg, 3, pids=self._fixed("postgres", 3))
            self.unlisted(sl, 0.05 * cores)
        elif arch == "database":
            ident, pid = self.long("mysqld", "/usr/sbin/mysqld", "mysql")
            self.add(sl, 0.95 * cores, ident, self._at(pid, sl))
            self.unlisted(sl, 0.05 * cores)
        elif arch == "cache":
            name = "redis-server" if fl == "redis" else "memcached"
            exe = "/usr/bin/redis-server" if fl == "redis" else "/usr/bin/memcached"
            ident, pid = self.long(name, exe, self.user)
            self.add(sl, 0.62 * cores, ident, self._at(pid, sl))  # io-threads: may pass 100
            for j in range(min(c, 4)):  # softirq time shows up on the kernel's threads
                kid = self.ident(f"ksoftirqd/{j + 1}", "", "root")
                self.add(sl, 0.3 * cores / min(c, 4), kid, self._fixed(f"ksoftirqd{j}", 1)[0])
            self.unlisted(sl, 0.08 * cores)

    def _fixed(self, key: str, k: int) -> np.ndarray:
        if key not in self._fixed_pids:
            self._fixed_pids[key] = self.pids(k)
        return self._fixed_pids[key]

    def anchor(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """The familiar long-running process a miner can hide inside, per sample (or None)."""
        arch, fl = self.spec.archetype, self.spec.flavour
        if arch == "web":
            return self.app(idx, 0)
        if arch == "database" and fl == "postgres":
            pg = self.ident("postgres", "/usr/lib/postgresql/14/bin/postgres", "postgres")
            return np.full(idx.size, pg), np.full(idx.size, self._fixed("backends", 1)[0])
        if arch == "database":
            ident, pid = self.long("mysqld", "/usr/sbin/mysqld", "mysql")
        elif arch == "cache":
            name = "redis-server" if fl == "redis" else "memcached"
            exe = "/usr/bin/redis-server" if fl == "redis" else "/usr/bin/memcached"
            ident, pid = self.long(name, exe, self.user)
        elif arch in ("ci", "batch"):
            ident, pid = self.long("java", JAVA, self.user)
        else:
            return None
        pids = pid[idx] if isinstance(pid, np.ndarray) else np.full(idx.size, pid)
        return np.full(idx.size, ident), pids

    def event(self, ev: Any, sl: slice, cores: np.ndarray, parts: dict[str, np.ndarray]) -> None:
        """Attribute one benign event's CPU (``cores``; ``parts`` for events with pieces)."""
        k, arch, fl = ev.kind, self.spec.archetype, self.spec.flavour
        rng = self.rng
        if k == "cron":
            if ev.params.get("job") == "batch":
                if fl == "threads":
                    ident, pid = self.long("java", JAVA, self.user)
                    self.add(sl, cores, ident, self._at(pid, sl))
                else:
                    py = self.ident("python3", "/opt/batch/venv/bin/python3", "batch")
                    n = max(1, int(np.ceil(ev.params["cores"])))
                    self.pool(sl, 0.95 * cores, py, n, cap=100.0)
                    self.unlisted(sl, 0.05 * cores)
            else:
                jobs = (
                    ("logrotate", "/usr/sbin/logrotate", "root"),
                    ("mandb", "/usr/bin/mandb", "man"),
                    ("updatedb.plocat", "/usr/sbin/updatedb.plocate", "root"),
                    ("apt-check", "/usr/bin/python3.11", "root"),
                )
                a, b = rng.choice(len(jobs), 2, replace=False)
                self.add(sl, 0.7 * cores, self.ident(*jobs[a]), int(self.pids()[0]), cap=100.0)
                self.add(sl, 0.25 * cores, self.ident(*jobs[b]), int(self.pids()[0]), cap=100.0)
                self.unlisted(sl, 0.05 * cores)
        elif k == "backup":
            dump = (
                ("pg_dump", "/usr/lib/postgresql/14/bin/pg_dump", "postgres")
                if fl == "postgres"
                else ("mysqldump", "/usr/bin/mysqldump", "root")
            )
            self.add(
                sl, parts["gz"], self.ident("gzip", "/usr/bin/gzip", "root"), int(self.pids()[0])
            )
            self.add(sl, parts["dump"], self.ident(*dump), int(self.pids()[0]))
            self.add(
                sl, parts["rest"], self.ident("kworker/u16:2", "", "root"), int(self.pids()[0])
            )
        elif k == "reindex":
            if fl == "postgres":
                pg = self.ident("postgres", "/usr/lib/postgresql/14/bin/postgres", "postgres")
                # the backend and its parallel workers, each at most one core
                self.add(sl, cores, pg, int(self.pids()[0]), cap=100.0)
            else:
                ident, pid = self.long("mysqld", "/usr/sbin/mysqld", "mysql")
                self.add(sl, cores, ident, self._at(pid, sl))
        elif k == "compile":
            self._compile(ev, sl, cores)
        elif k == "deploy":
            if arch == "web":
                r = self.releases[int(np.searchsorted(self.release_at, sl.stop, "right")) - 1]
                pip = self.ident("pip", APP.format(r=r), "app")
                self.add(sl, 0.5 * cores, pip, int(self.pids()[0]), cap=100.0)
                self.add(
                    sl, 0.2 * cores, self.ident("tar", "/usr/bin/tar", "app"), int(self.pids()[0])
                )
                self._warmup(ev, sl)
            else:
                self.add(
                    sl,
                    0.3 * cores,
                    self.ident("apt-get", "/usr/bin/apt-get", "root"),
                    int(self.pids()[0]),
                )
                self.add(
                    sl,
                    0.4 * cores,
                    self.ident("dpkg", "/usr/bin/dpkg", "root"),
                    int(self.pids()[0]),
                    cap=100.0,
                )
            self.unlisted(sl, 0.3 * cores)
        elif k == "gc_storm":
            ident, pid = (
                self.long("java", "/usr/share/logstash/jdk/bin/java", "logstash")
                if arch == "cache"
                else self.long("java", JAVA, "app")
            )
            # the collector's threads run the storm (the stalled application does little)
            self.add(sl, cores, ident, self._at(pid, sl), gc=0.9)
        elif k == "admin_burst":
            a = int(rng.integers(0, len(_ADMIN_TOOLS)))
            name, exe = _ADMIN_TOOLS[a]
            self.add(
                sl, 0.9 * cores, self.ident(name, exe, self.admin), int(self.pids()[0]), cap=100.0
            )
            self.unlisted(sl, 0.1 * cores)
        elif k == "new_tool":
            name, exe, _ = ev.params["tool"]
            self.add(sl, 0.92 * cores, self.ident(name, exe, self.admin), int(self.pids()[0]))
            self.unlisted(sl, 0.08 * cores)
        elif k in ("package_upgrade", "toolchain_upgrade"):
            self.add(
                sl,
                0.35 * cores,
                self.ident("apt-get", "/usr/bin/apt-get", "root"),
                int(self.pids()[0]),
            )
            self.add(
                sl,
                0.45 * cores,
                self.ident("dpkg", "/usr/bin/dpkg", "root"),
                int(self.pids()[0]),
                cap=100.0,
            )
            self.unlisted(sl, 0.2 * cores)
        else:
            self.unlisted(sl, cores)

    def _warmup(self, ev: Any, sl: slice) -> None:
        """New app workers import the code at full speed for their first sample."""
        k = int(np.floor(ev.params["release_live"] / self.clock.interval)) + 1
        if not sl.start <= k < min(sl.stop, self.clock.n):
            return
        for j in range(min(3, self._app_pids.shape[1])):
            ids, ps = self.app(np.array([k]), j)
            self.add(slice(k, k + 1), self.rng.uniform(0.6, 0.95), ids, ps, cap=100.0)

    def _compile(self, ev: Any, sl: slice, cores: np.ndarray) -> None:
        gradle = self.spec.flavour == "gradle" and ev.params.get("job") == "ci"
        user = "jenkins" if ev.params.get("job") == "ci" else self.admin
        if gradle:
            daemon = self.ident("java", JAVA, user)
            self.add(sl, 0.6 * cores, daemon, int(self.pids()[0]))
            self.pool(sl, 0.3 * cores, daemon, min(4, self.spec.cores))
            self.unlisted(sl, 0.1 * cores)
            return
        # the compiler in use: the new one from the upgrade's sample on
        at = min(max(self.gcc_at, sl.start), sl.stop)
        for part, version in ((slice(sl.start, at), self.gcc), (slice(at, sl.stop), self.gcc + 1)):
            if part.stop <= part.start:
                continue
            c = cores[part.start - sl.start : part.stop - sl.start]
            cc = self.ident("cc1plus", GCC.format(v=version), user)
            jobs = max(1, int(round(float(np.max(c)))))
            key = f"{ev.segments[0][0]}{version}"
            split = self._split(part, 0.84 * c, jobs, cap=100.0, skew=20.0)
            if split is not None:
                self._units(part, cc, split[1], key)
            # make itself mostly waits for its jobs; the linker runs one process per link step,
            # and the assembler and shells of each unit are as short-lived as the compiler
            make = self.ident("make", "/usr/bin/make", user)
            self.add(part, 0.01 * c, make, int(self.pids()[0]), cap=100.0)
            ld = self.ident("ld", "/usr/bin/x86_64-linux-gnu-ld.bfd", user)
            self._units(part, ld, np.minimum(0.04 * c, 1.0)[:, None], f"ld{key}")
            self.unlisted(part, 0.11 * c)

    def _units(self, sl: slice, ident: int, share: np.ndarray, key: str) -> None:
        """A build's job slots (columns of ``share``) run one process per unit of work (a
        translation unit, a link step), a few seconds each: a sample lists the one alive at
        its instant, with the CPU it used since it started; units that started and ended
        between two samples are never listed (their CPU is the host's, unlisted), as the
        collector sees them."""
        # a generator of its own (keyed by host and build): the rest of the host is unchanged
        h = int(hashlib.sha1(f"tu{self.spec.name}{key}".encode()).hexdigest()[:12], 16)
        rng = np.random.default_rng(h)
        iv = self.clock.interval
        t0, t1 = (sl.start - 1) * iv, (sl.stop - 1) * iv  # sample k reports ((k-1)iv, k iv]
        at = np.arange(sl.start, sl.stop) * iv
        median = rng.uniform(CC_MEDIAN_S[0], CC_MEDIAN_S[1])  # C is quick, template C++ slow
        unlisted = np.zeros(share.shape[0])
        k, units = share.shape[1], 0
        for j in range(k):
            ends = [t0]
            while ends[-1] < t1:
                d = np.clip(rng.lognormal(np.log(median), CC_SIGMA, 256), 0.3, None)
                ends.extend((ends[-1] + np.cumsum(d)).tolist())
            end = np.asarray(ends[1:])
            unit = np.searchsorted(end, at, "left")  # the unit alive at each sample instant
            began = np.asarray(ends)[unit]
            alive = np.clip((at - began) / iv, 0.0, 1.0)
            pid = CC_PID0 + self._cc_pid + unit * k + j
            self.add(sl, share[:, j] * alive, ident, pid.astype(np.int64), cap=100.0)
            unlisted += share[:, j] * (1.0 - alive)
            units = max(units, int(unit[-1]) + 1)
        self._cc_pid += units * k
        self.unlisted(sl, unlisted)

    # ------------------------------------------------------------------ campaigns

    def campaign_identity(self, ev: Any, kind: str) -> dict[str, Any]:
        """Choose the miner's look for ``kind``; returns ``{kind, name, exe, user}``."""
        rng = self.rng
        arch = self.spec.archetype
        user = self.user if rng.random() < 0.7 else "root"
        if kind == "inside" and arch == "idle":
            kind = "new"
        if kind == "new":
            name, exe = _NEW_MINERS[int(rng.integers(0, len(_NEW_MINERS)))]
            exe = exe.format(u=self.user)
        elif kind == "disguised":
            familiar = self.main_name() or "sshd"
            options = (
                ("kswapd0", "/tmp/.x/kswapd0", user),
                ("kworker/0:1", "/dev/shm/.k/kworker", "root"),
                (familiar, f"/usr/lib/.{familiar} (deleted)", user),
                (familiar, f"/var/tmp/{familiar}", user),
            )
            name, exe, user = options[int(rng.integers(0, len(options)))]
        else:
            return {"identity": "inside"}
        return {"identity": kind, "name": _ident(name, exe, user).name, "exe": exe, "user": user}

    def campaign(self, ev: Any, sl: slice, alive: np.ndarray, seg: int) -> None:
        """Register one segment of a campaign's process (a new pid per segment: restarted)."""
        look = ev.params["process"]
        if look["identity"] == "inside":
            idx = np.arange(sl.start, sl.stop)
            anchor = self.anchor(idx)
            assert anchor is not None  # inside is never planned on hosts without one
            ids, ps = anchor
            if seg == 0:
                i = self.idents[int(ids[int(np.argmax(alive))]) if alive.any() else 0]
                look.update(name=i.name, exe=i.exe, user=i.user)
            self.miner(sl, alive, ids, ps)
            return
        ident = self.ident(look["name"], look["exe"], look["user"])
        self.miner(sl, alive, ident, int(self.pids()[0]))

    # ------------------------------------------------------------------ the table

    def finish(
        self, busy: np.ndarray, miner_cpu: np.ndarray, keep: np.ndarray | None = None
    ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Listed rows (sample index, ident, pid, cpu) and the top process per sample.

        ``busy`` is the host's busy CPU in percent of one core (``cpu_percent`` x cores),
        ``miner_cpu`` what the miners got, in the same unit.
        """
        n = self.clock.n
        idx = np.concatenate([r[0] for r in self._rows])
        ids = np.concatenate([r[1] for r in self._rows])
        pid = np.concatenate([r[2] for r in self._rows])
        cpu = np.concatenate([r[3] for r in self._rows])
        cap = np.concatenate([np.full(r[0].size, r[4]) for r in self._rows])
        gcs = np.concatenate([np.full(r[0].size, r[5]) for r in self._rows])
        raw = np.bincount(idx, weights=cpu, minlength=n)
        target = np.maximum(busy - miner_cpu, 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            scale = np.where(raw > 0, target / raw, 0.0)
        # each process's own jitter (what a second read of /proc would show), then its cap
        cpu = np.minimum(cpu * scale[idx] * np.exp(0.03 * self.rng.standard_normal(cpu.size)), cap)
        gc = cpu * gcs
        miner = np.zeros(cpu.size, bool)
        if self._miner:
            m_idx = np.concatenate([m[0] for m in self._miner])
            idx = np.concatenate([idx, m_idx])
            ids = np.concatenate([ids, np.concatenate([m[1] for m in self._miner])])
            pid = np.concatenate([pid, np.concatenate([m[2] for m in self._miner])])
            cpu = np.concatenate([cpu, miner_cpu[m_idx]])
            gc = np.concatenate([gc, np.zeros(m_idx.size)])  # a miner's threads are its own
            miner = np.concatenate([miner, np.ones(m_idx.size, bool)])
        # unlisted work and processes that would print as 0.0 never make the table
        listed = (ids >= 0) & ((cpu >= 0.05) | miner)
        idx, ids, pid, cpu, gc, miner = (
            idx[listed],
            ids[listed],
            pid[listed],
            cpu[listed],
            gc[listed],
            miner[listed],
        )
        # one row per (sample, pid): a miner inside a familiar process adds to its CPU
        order = np.argsort(idx * (1 << 31) + pid)
        idx, ids, pid, cpu, gc, miner = (
            idx[order],
            ids[order],
            pid[order],
            cpu[order],
            gc[order],
            miner[order],
        )
        new = np.ones(idx.size, bool)
        new[1:] = (idx[1:] != idx[:-1]) | (pid[1:] != pid[:-1])
        starts = np.flatnonzero(new)
        cpu = np.add.reduceat(cpu, starts) if starts.size else cpu
        gc = np.add.reduceat(gc, starts) if starts.size else gc
        miner = np.logical_or.reduceat(miner, starts) if starts.size else miner
        idx, ids, pid = idx[starts], ids[starts], pid[starts]
        # no process runs on more cores than the host has
        tenths = np.rint(np.minimum(cpu, self.spec.cores * 100.0) * 10).astype(np.int64)
        gc_tenths = np.minimum(np.rint(gc * 10).astype(np.int64), tenths)
        # the busiest TOP_N per sample with some CPU, plus every miner row
        order = np.argsort(idx * (1 << 24) - np.minimum(tenths, (1 << 24) - 1))
        idx, ids, pid, tenths, gc_tenths, miner = (
            idx[order],
            ids[order],
            pid[order],
            tenths[order],
            gc_tenths[order],
            miner[order],
        )
        first = np.concatenate(([0], np.flatnonzero(np.diff(idx)) + 1))
        group_start = np.repeat(first, np.diff(np.concatenate((first, [idx.size]))))
        rank = np.arange(idx.size) - group_start
        # the busiest is always listed, so top_proc_cpu_percent is a row of the table
        tenths = np.where(rank == 0, np.maximum(tenths, 1), tenths)
        sel = ((rank < TOP_N) & (tenths >= FLOOR_TENTHS)) | (rank == 0) | miner
        if keep is not None:
            sel &= keep[idx]
        rows = {
            "sample": idx[sel],
            "ident": ids[sel],
            "pid": pid[sel],
            "tenths": tenths[sel],
            "gc_tenths": gc_tenths[sel],
        }
        top = np.zeros(n, np.int64)
        np.maximum.at(top, rows["sample"], rows["tenths"])
        return rows, top


# ---------------------------------------------------------------------- writing


def _field(text: str) -> str:
    if any(ch in text for ch in ',"\r\n') or text != text.strip():
        return '"' + text.replace('"', '""') + '"'
    return text


def procs_csv(
    host: str, idents: list[Ident], rows: dict[str, np.ndarray], stamps: list[str], pick: np.ndarray
) -> bytes:
    """The process table of the rows ``pick`` selects, in bulk (no per-row formatting).

    ``stamps`` are the host samples' timestamps exactly as written in the samples file.
    """
    sample = rows["sample"][pick]
    key = rows["pid"][pick] * (len(idents) + 1) + rows["ident"][pick]
    uniq, inv = np.unique(key, return_inverse=True)
    head = np.empty(uniq.size, object)
    h = _field(host)
    for j, kv in enumerate(uniq.tolist()):
        pid, ident = divmod(kv, len(idents) + 1)
        i = idents[ident]
        head[j] = f",{h},{pid},{_field(i.name)},{_field(i.exe)},{_field(i.user)},"
    tenths = rows["tenths"][pick]
    tq, tinv = np.unique(tenths, return_inverse=True)
    cpu = np.array([f"{v // 10}.{v % 10}" for v in tq.tolist()], dtype=object)
    gq, ginv = np.unique(rows["gc_tenths"][pick], return_inverse=True)
    gc = np.array([f",{v // 10}.{v % 10}" if v else "," for v in gq.tolist()], dtype=object)
    ts = np.asarray(stamps, dtype=object)
    lines = ts[sample] + head[inv] + cpu[tinv] + gc[ginv]
    body = "\n".join(lines.tolist())
    header = ",".join(PROC_TABLE_HEADER)
    return (header + "\n" + body + ("\n" if body else "")).encode()
