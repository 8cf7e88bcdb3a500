"""Run inside a Ray cluster (tests/distributed/test_ray.py starts it): 4-shard builds on Ray vs single indexes.

Prints one JSON object: per index type, whether the Ray-served and locally merged rankings equal the
single index, and what happened when shard actors were killed.
"""

import json
import os
import signal
import sys
import time
from pathlib import Path

import retr
from retr import RetrError

MODEL = "all-MiniLM-L6-v2"


def ranked(retriever, queries, k=10):
    return [[(h.id, round(h.score, 4)) for h in hits] for hits in retriever.search_batch(queries, k)]


def main() -> None:
    data, work, address = Path(sys.argv[1]), Path(sys.argv[2]), os.environ["RAY_ADDRESS"]
    cranfield = retr.load_dataset(data / "cranfield")
    queries = list(cranfield.queries.values())[:30]
    report = {}
    for encoder, index in [(f"dense:{MODEL}", "flat"), ("bm25", "lucene"), (f"colbert:{MODEL}", "maxsim")]:
        docs = cranfield.corpus if index != "maxsim" else cranfield.corpus[:400]
        out = work / index
        built = retr.build_sharded(docs, encoder, index, out, shards=4, ray=address, workers=2)
        single = ranked(retr.Retriever.build(docs, encoder, index), queries)
        served = retr.open_index(out, ray=address)
        on_ray = ranked(served, queries)
        report[index] = {"shards": [p.name for p in sorted(out.glob("shard-*"))], "documents": len(served),
                         "local_equal": ranked(built, queries) == single, "ray_equal": on_ray == single,
                         "ray_overlap": sum(len({d for d, _ in a} & {d for d, _ in b}) for a, b in zip(on_ray, single))
                         / sum(len(b) for b in single)}
        if index == "flat":
            from fastapi.testclient import TestClient

            from retr.serve.app import create_app

            client = TestClient(create_app({"flat": out}, ray=address))  # retr serve --ray
            answer = client.post("/search", json={"queries": queries, "k": 10}).json()
            report["served_equal"] = [[(h["id"], round(h["score"], 4)) for h in r["hits"]]
                                      for r in answer["results"]] == single
            pid = served.ray.get(served.actors[2].pid.remote())
            os.kill(pid, signal.SIGKILL)  # the shard actor dies between queries: Ray restarts it, the call is retried
            report["killed_actor_equal"] = ranked(served, queries) == single
            report["restarted_pid_differs"] = served.ray.get(served.actors[2].pid.remote()) != pid
            served.ray.kill(served.actors[1], no_restart=True)  # gone for good
            try:
                served.search_batch(queries, 10)
                report["dead_shard_error"] = None
            except RetrError as exc:
                report["dead_shard_error"] = str(exc)
            partial = served.search_batch(queries, 10, partial=True)
            report["partial_missing"] = [m.name for m in partial.missing]
            report["partial_hits"] = len(partial[0])
        served.close()
    print("RESULT " + json.dumps(report), flush=True)


if __name__ == "__main__":
    start = time.time()
    main()
