"""Sharded builds and search on a real Ray cluster: a head and a worker node on loopback, torn down after."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.conftest import DATA

REPO = Path(__file__).resolve().parents[2]
CLUSTER = """
set -e
ip link set lo up
trap '{ray} stop --force >/dev/null 2>&1 || true' EXIT
{ray} start --head --node-ip-address=127.0.0.1 --port={port} --num-cpus=2 --include-dashboard=false \\
    --disable-usage-stats --temp-dir={temp} >/dev/null
{ray} start --address=127.0.0.1:{port} --node-ip-address=127.0.0.1 --num-cpus=2 >/dev/null
RAY_ADDRESS=127.0.0.1:{port} {python} -m tests.distributed.cluster_job {data} {work}
"""


@pytest.fixture(scope="module")
def cluster_report(tmp_path_factory):
    pytest.importorskip("ray")
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("the Ray cluster runs in its own network namespace (unshare -n), which needs root")
    work = tmp_path_factory.mktemp("ray")
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # this cluster's own session files (short: socket paths)
    ray = Path(sys.executable).parent / "ray"  # the venv's own CLI: its bin folder need not be on PATH
    script = CLUSTER.format(port=6391, python=sys.executable, ray=ray, data=DATA, work=work, temp=temp)
    env = dict(os.environ, PYTHONPATH=str(REPO), RAY_USAGE_STATS_ENABLED="0")
    run = subprocess.run(["unshare", "-n", "bash", "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=1200)
    shutil.rmtree(temp, ignore_errors=True)
    lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
    assert run.returncode == 0 and lines, (run.stdout[-3000:], run.stderr[-3000:])
    return json.loads(lines[-1][len("RESULT "):])


def test_four_shards_built_on_ray_equal_one_index(cluster_report):
    for index in ("flat", "lucene", "maxsim"):
        assert cluster_report[index]["shards"] == ["shard-000", "shard-001", "shard-002", "shard-003"]
        assert cluster_report[index]["local_equal"], index  # local search: exact merge, BM25 with global statistics
    assert cluster_report["flat"]["ray_equal"] and cluster_report["maxsim"]["ray_equal"]  # exact types on Ray
    assert cluster_report["served_equal"]  # retr serve over the Ray actors
    # BM25 on Ray scores each shard with its own statistics: close to, not equal to, one index
    assert 0.8 <= cluster_report["lucene"]["ray_overlap"] < 1.0


def test_a_killed_shard_actor_is_restarted_and_a_dead_one_named(cluster_report):
    assert cluster_report["killed_actor_equal"] and cluster_report["restarted_pid_differs"]
    assert "shard shard-001" in cluster_report["dead_shard_error"] and "partial=True" in cluster_report["dead_shard_error"]
    assert cluster_report["partial_missing"] == ["shard-001"] and cluster_report["partial_hits"] == 10
