"""A real one-node SLURM cluster for tests, started from a temporary folder: munged, slurmctld and slurmd, and with
``accounting=True`` also a private MariaDB and slurmdbd, so that ``sacct`` and ``sacctmgr`` work.

Installs Debian's packages when they are missing (needs root, as in CI); stops every daemon it started, even when
starting a later one fails.
"""

import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
from filelock import FileLock

PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]
BINARIES = ["slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "munged"]
ACCOUNTING_PACKAGES = ["slurmdbd", "mariadb-server", "mariadb-client"]
ACCOUNTING_BINARIES = ["slurmdbd", "sacct", "sacctmgr", "mariadbd", "mariadb-install-db", "mariadb"]
CLIENTS = ["srun", "sbatch", "salloc", "squeue", "scancel", "scontrol", "sinfo", "sacct", "sacctmgr", "sshare", "sstat"]
CLUSTER = "sitra-test"
ACCOUNT = "sitra"  # the default account of the current user when accounting is on

INSTALL_LOCK = "/tmp/sitra-test-slurm-install.lock"  # one path for every test session on this machine


def free_ports(count: int) -> list[int]:
    """Distinct free ports (all probes stay bound until every port is chosen, so none is picked twice)."""
    probes = [socket.socket() for _ in range(count)]
    try:
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in probes]
    finally:
        for probe in probes:
            probe.close()


def ensure_installed(packages: list[str], binaries: list[str]) -> None:
    """apt-get install ``packages`` unless every one of ``binaries`` is on PATH; skips the test when that needs root."""
    if all(shutil.which(binary) for binary in binaries):
        return
    if os.geteuid() != 0:
        pytest.skip(f"{' '.join(packages)} are not installed and installing them needs root")
    # two suites starting at once would race on apt's lock: the second waits here, then finds the packages installed
    with FileLock(INSTALL_LOCK, timeout=1800):
        if all(shutil.which(binary) for binary in binaries):
            return
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        wait_for_apt = ["-o", "DPkg::Lock::Timeout=600"]  # and for any other apt client on the machine
        subprocess.run(
            ["apt-get", *wait_for_apt, "update", "-qq"], env=env, check=True, capture_output=True, timeout=900
        )
        subprocess.run(
            ["apt-get", *wait_for_apt, "install", "-y", "-qq", *packages],
            env=env,
            check=True,
            capture_output=True,
            timeout=1200,
        )


def ensure_slurm_installed(accounting: bool = False) -> None:
    ensure_installed(PACKAGES, BINARIES)
    if accounting:
        ensure_installed(ACCOUNTING_PACKAGES, ACCOUNTING_BINARIES)


def wait_for(check, timeout: float, failure) -> None:
    """Poll ``check()`` until it is true; after ``timeout`` seconds fail the test with ``failure()``."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if check():
            return
        time.sleep(0.25)
    pytest.fail(failure())


def tail(path: Path, characters: int = 2000) -> str:
    return path.read_text(errors="replace")[-characters:] if path.exists() else f"({path} was not written)"


def user_name() -> str:
    return pwd.getpwuid(os.geteuid()).pw_name


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"  # a daemon's zombie stays until init reaps it, but it is done


def stop_pid_file(pid_file: Path, timeout: float = 20) -> None:
    """SIGTERM the daemon whose pid the file holds, wait for it to exit, SIGKILL it if it does not."""
    if not pid_file.exists() or not pid_file.read_text().strip():
        return
    pid = int(pid_file.read_text().strip())
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.time() + timeout
        while time.time() < deadline and alive(pid):
            time.sleep(0.1)
        if not alive(pid):
            return


def stop_process(process: subprocess.Popen, timeout: float = 30) -> None:
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout)


def start_munged(stack: ExitStack, folder: Path) -> Path:
    """A munged with a fresh key; returns its socket."""
    folder.mkdir(mode=0o700)
    (folder / "munge.key").write_bytes(os.urandom(1024))
    (folder / "munge.key").chmod(0o600)
    socket_path = folder / "munge.sock"
    munged = [
        "munged",
        "--force",
        "-S",
        str(socket_path),
        f"--key-file={folder}/munge.key",
        f"--log-file={folder}/munged.log",
        f"--pid-file={folder}/munged.pid",
        f"--seed-file={folder}/seed",
    ]
    subprocess.run(munged, check=True, capture_output=True, timeout=60)
    stack.callback(subprocess.run, ["munged", "-S", str(socket_path), "--stop"], capture_output=True, timeout=60)
    return socket_path


def start_mariadb(stack: ExitStack, folder: Path, port: int, user: str, password: str, database: str) -> None:
    """A private MariaDB on 127.0.0.1:``port`` holding an empty ``database`` that ``user`` may do anything with."""
    folder.mkdir()
    data = folder / "data"
    client_socket = folder / "mariadb.sock"
    # small InnoDB logs keep the folder small; slurmdbd's wish for larger ones is only a line in its log
    server_options = ["--innodb-log-file-size=16M", "--innodb-buffer-pool-size=128M", "--innodb-lock-wait-timeout=900"]
    # --no-defaults: nothing from /etc/mysql; normal root authentication: root may connect without a password
    install = ["mariadb-install-db", "--no-defaults", f"--datadir={data}", "--auth-root-authentication-method=normal",
               f"--user={user_name()}", "--skip-test-db", *server_options]  # fmt: skip
    installed = subprocess.run(install, capture_output=True, text=True, timeout=300)
    if installed.returncode != 0:
        pytest.fail(f"mariadb-install-db failed: {installed.stdout[-2000:]}{installed.stderr[-2000:]}")
    log = folder / "mariadb.log"
    server = subprocess.Popen(
        ["mariadbd", "--no-defaults", f"--datadir={data}", f"--socket={client_socket}", f"--port={port}",
         "--bind-address=127.0.0.1", "--skip-name-resolve", f"--user={user_name()}", f"--pid-file={folder}/mariadb.pid",
         f"--log-error={log}", *server_options],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    stack.callback(stop_process, server)

    def sql(statement: str) -> subprocess.CompletedProcess:
        command = ["mariadb", "--no-defaults", f"--socket={client_socket}", "--user=root", "-e", statement]
        return subprocess.run(command, capture_output=True, text=True, timeout=60)

    wait_for(
        lambda: server.poll() is None and sql("SELECT 1").returncode == 0,
        60,
        lambda: f"MariaDB did not come up: {tail(log)}",
    )
    created = sql(
        f"CREATE DATABASE {database}; CREATE USER '{user}'@'127.0.0.1' IDENTIFIED BY '{password}'; "
        f"GRANT ALL ON {database}.* TO '{user}'@'127.0.0.1';"
    )
    if created.returncode != 0:
        pytest.fail(f"could not create the accounting database: {created.stderr}")


def client_wrappers(folder: Path, config: Path) -> Path:
    """A folder of scripts named like the SLURM clients that run the real ones with ``SLURM_CONF`` defaulting to
    ``config``. Put first on PATH: a job's environment may lose SLURM_CONF (Snakemake's slurm-jobstep executor drops
    every SLURM_* variable but a few before its ``srun``), and without it a client looks for /etc/slurm/slurm.conf."""
    folder.mkdir()
    for client in CLIENTS:
        if real := shutil.which(client):
            wrapper = folder / client
            wrapper.write_text(f'#!/bin/sh\nexport SLURM_CONF="${{SLURM_CONF:-{config}}}"\nexec {real} "$@"\n')
            wrapper.chmod(0o755)
    return folder


def sacctmgr(env: dict, *arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(["sacctmgr", "-i", *arguments], env=env, capture_output=True, text=True, timeout=60)


def start_slurmdbd(stack: ExitStack, root: Path, env: dict) -> None:
    """slurmdbd reads slurmdbd.conf from the folder of $SLURM_CONF; registers the cluster, an account and the user."""
    stack.callback(stop_pid_file, root / "slurmdbd.pid")
    subprocess.run(["slurmdbd"], env=env, check=True, capture_output=True, timeout=60)
    wait_for(
        lambda: sacctmgr(env, "-nP", "show", "cluster", "format=cluster").returncode == 0,
        60,
        lambda: f"slurmdbd did not answer: {tail(root / 'slurmdbd.log')}",
    )
    user = user_name()
    for arguments in (
        ["add", "cluster", CLUSTER],
        ["add", "account", ACCOUNT, f"cluster={CLUSTER}", "description=sitra tests", "organization=sitra"],
        ["add", "user", user, f"account={ACCOUNT}", f"defaultaccount={ACCOUNT}", f"cluster={CLUSTER}"],
        ["modify", "user", user, "set", f"defaultaccount={ACCOUNT}"],  # root exists already, with account root
    ):
        done = sacctmgr(env, *arguments)
        if done.returncode != 0 and "Nothing" not in done.stdout + done.stderr:
            pytest.fail(f"sacctmgr {' '.join(arguments)} failed: {done.stdout}{done.stderr}")


def write_slurm_config(
    root: Path, host: str, controller_port: int, node_port: int, munge_socket: Path, dbd_port: int | None
) -> Path:
    """``root/slurm.conf`` of a one-node cluster on this host; with ``dbd_port``, jobs are accounted by slurmdbd."""
    memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20 // 2
    config = root / "slurm.conf"
    if dbd_port is not None:
        # AccountingStoragePass names the munge socket the clients and slurmctld use to talk to slurmdbd
        storage = f"""JobAcctGatherType=jobacct_gather/linux
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort={dbd_port}
AccountingStoragePass={munge_socket}
"""
    else:
        storage = "JobAcctGatherType=jobacct_gather/none\nAccountingStorageType=accounting_storage/none\n"
    config.write_text(f"""ClusterName={CLUSTER}
SlurmctldHost={host}
SlurmctldPort={controller_port}
SlurmdPort={node_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
ReturnToService=2
MpiDefault=none
{storage}NodeName={host} CPUs={os.cpu_count()} RealMemory={memory_mb} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
""")
    return config


@contextmanager
def start_cluster(root: Path, accounting: bool = False) -> Iterator[dict[str, str]]:
    """A running one-node cluster configured under ``root`` (created here); yields the environment that points the
    SLURM clients at it (``SLURM_CONF``, and PATH starting with wrappers of the clients that default SLURM_CONF to
    this cluster's, so that jobs which drop the variable still reach it). With ``accounting``, jobs are recorded by
    slurmdbd in a private MariaDB, the cluster is ``sitra-test`` and the current user's default account is ``sitra``."""
    ensure_slurm_installed(accounting)
    (root / "state").mkdir(parents=True)
    (root / "spool").mkdir()
    host = socket.gethostname().split(".")[0]
    controller_port, node_port, dbd_port, db_port = free_ports(4)
    munge_socket = root / "munge" / "munge.sock"
    config = write_slurm_config(root, host, controller_port, node_port, munge_socket, dbd_port if accounting else None)
    wrappers = client_wrappers(root / "bin", config)
    env = {**os.environ, "SLURM_CONF": str(config), "PATH": f"{wrappers}{os.pathsep}{os.environ.get('PATH', '')}"}
    with ExitStack() as stack:  # stops, last started first, whatever was started
        start_munged(stack, root / "munge")
        if accounting:
            db_user, db_password, database = "slurm", os.urandom(8).hex(), "slurm_acct_db"
            start_mariadb(stack, root / "mariadb", db_port, db_user, db_password, database)
            dbd_config = root / "slurmdbd.conf"
            dbd_config.touch(mode=0o600)  # slurmdbd refuses a config others may read (it holds the password)
            dbd_config.chmod(0o600)
            dbd_config.write_text(f"""AuthType=auth/munge
AuthInfo=socket={munge_socket}
DbdHost={host}
DbdAddr=127.0.0.1
DbdPort={dbd_port}
SlurmUser=root
PidFile={root}/slurmdbd.pid
LogFile={root}/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={db_port}
StorageUser={db_user}
StoragePass={db_password}
StorageLoc={database}
""")
            start_slurmdbd(stack, root, env)

        def stop_slurm() -> None:
            subprocess.run(["scontrol", "shutdown"], env=env, capture_output=True, timeout=60)
            for pid_file in (root / "slurmctld.pid", root / "slurmd.pid"):
                stop_pid_file(pid_file)

        stack.callback(stop_slurm)
        subprocess.run(["slurmctld", "-f", str(config)], env=env, check=True, timeout=60)
        subprocess.run(["slurmd", "-f", str(config)], env=env, check=True, timeout=60)

        def idle() -> bool:
            state = subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True).stdout
            return state.strip() == "idle"

        wait_for(idle, 60, lambda: f"the SLURM node did not come up: {tail(root / 'slurmctld.log')}")
        yield env
