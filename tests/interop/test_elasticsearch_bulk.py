"""Interop: the official Elasticsearch Python client (elasticsearch-py 8,
`helpers.bulk` and `Elasticsearch.bulk`, as log shippers written in Python
use it) writes documents to Tocsin's `_bulk` API. Every document must arrive
once in the table named after its index (the daily date dropped), with its
@timestamp, message, service, host, level and the other fields as
attributes; an item Tocsin refuses must come back as that item's error,
with the others stored."""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from peers import scratch, sql, start_tocsin, wait_for  # noqa: E402

from elasticsearch import Elasticsearch, helpers  # noqa: E402

N = 500


def main():
    with scratch("tocsin-es-") as (tmp, procs):
        log = open(os.path.join(tmp, "tocsin.log"), "w")
        p, _grpc, http = start_tocsin(os.path.join(tmp, "data"), log)
        procs.append(p)
        es = Elasticsearch(f"http://{http}", request_timeout=30)
        docs = [{
            "_index": "logstash-2026.12.05",
            "_source": {
                "@timestamp": f"2026-12-05T10:00:{i % 60:02d}.{i:03d}Z",
                "message": f"order {i} paid",
                "service": {"name": "shop"},
                "host": {"name": f"web{i % 3}"},
                "log": {"level": "warn" if i % 7 == 0 else "info"},
                "order": {"id": i, "amount": i * 1.5},
                "tags": ["checkout", "eu"],
            },
        } for i in range(N)]
        ok, errors = helpers.bulk(es, docs, chunk_size=100)
        assert (ok, errors) == (N, []), (ok, errors[:2])
        rows = wait_for(f"{N} documents", lambda: (lambda r: r if len(r) == N else None)(
            sql(http, "SELECT ts, service, host, level, message, attributes FROM logstash ORDER BY message")), 30, 0.2)
        by_msg = {r["message"]: r for r in rows}
        assert set(by_msg) == {f"order {i} paid" for i in range(N)}
        r = by_msg["order 14 paid"]
        assert (r["service"], r["host"], r["level"]) == ("shop", "web2", "warn"), r
        assert r["ts"].startswith("2026-12-05T10:00:14.014"), r
        attrs = json.loads(r["attributes"])
        assert attrs["order.id"] == "14" and attrs["order.amount"] == "21.0" and attrs["tags"] == '["checkout","eu"]', attrs

        # One bad item among good ones: the client gets its error, the rest are stored.
        resp = es.bulk(operations=[
            {"index": {"_index": "app"}}, {"@timestamp": "2026-12-05T11:00:00Z", "message": "good one"},
            {"index": {"_index": "app"}}, {"@timestamp": "not a date", "message": "bad time"},
            {"delete": {"_index": "app", "_id": "1"}},
            {"create": {"_index": "app"}}, {"message": "no time: now"},
        ])
        statuses = [list(it.values())[0]["status"] for it in resp["items"]]
        assert resp["errors"] is True and statuses == [201, 400, 400, 201], resp
        assert "not a date" in list(resp["items"][1].values())[0]["error"]["reason"], resp["items"][1]
        got = sorted(r["message"] for r in sql(http, "SELECT message FROM app"))
        assert got == ["good one", "no time: now"], got
        print(f"ok: elasticsearch-py's helpers.bulk wrote {N} documents into the index's table with time, service, "
              "host, level and fields; a bad item came back as its own error")


if __name__ == "__main__":
    main()
