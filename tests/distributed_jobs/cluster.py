"""Starting jobs as subprocesses on loopback, with time limits."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
SCRIPTS = os.path.dirname(__file__)


def free_ports(n):
    sockets = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def env(tf_config=None):
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(
        [os.path.abspath(ROOT), os.path.abspath(SCRIPTS)]
    )
    environment["TF_CPP_MIN_LOG_LEVEL"] = "3"
    environment["CUDA_VISIBLE_DEVICES"] = ""
    environment.pop("TF_CONFIG", None)
    if tf_config is not None:
        environment["TF_CONFIG"] = json.dumps(tf_config)
    return environment


def start(script, args, tf_config=None, stderr_path=None):
    """Starts `python tests/distributed_jobs/<script> args` in its own group."""
    stderr = open(stderr_path, "w") if stderr_path else subprocess.DEVNULL
    return subprocess.Popen(
        [sys.executable, os.path.join(SCRIPTS, script)] + list(args),
        env=env(tf_config),
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        start_new_session=True,
    )


def tf_configs(n):
    ports = free_ports(n)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    return [
        {"cluster": cluster, "task": {"type": "worker", "index": i}}
        for i in range(n)
    ]


def kill(process):
    """SIGKILLs a process group we started, if it still runs."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


def wait_all(processes, timeout):
    """Waits for every process; kills them all past `timeout` seconds."""
    deadline = time.monotonic() + timeout
    try:
        for p in processes:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        for p in processes:
            kill(p)
        raise
    return [p.returncode for p in processes]


def read_log(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        lines = f.read().splitlines()
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            pass  # a line cut by a kill
    return records


def wait_for(predicate, processes, timeout, interval=0.2):
    """Polls `predicate()` until true; fails if a process ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        ended = [p.returncode for p in processes if p.poll() is not None]
        if ended:
            raise RuntimeError(f"a job ended early with codes {ended}")
        time.sleep(interval)
    for p in processes:
        kill(p)
    raise TimeoutError("the condition was not met in time")


def runs(records):
    """Splits a job log into runs, each starting at a 'begin' record."""
    result = []
    for record in records:
        if record["event"] == "begin":
            result.append([])
        if result:
            result[-1].append(record)
    return result
