import sys; sys.path.insert(0,'/tmp/review'); from h import *
vals = ', '.join(f"(to_timestamp_nanos({1_500_000_000 + k*10_000_000}), 'h', {k})" for k in range(200))
print(sql(f"INSERT INTO m (ts, host, v) VALUES {vals}"))
Q = ["SELECT count(*) n FROM m WHERE CAST(ts AS TIMESTAMP(0)) = to_timestamp_seconds(2)",
     "SELECT count(*) n FROM m WHERE CAST(ts AS TIMESTAMP(0)) <= to_timestamp_seconds(2)",
     "SELECT count(*) n FROM m WHERE CAST(ts AS TIMESTAMP(0)) BETWEEN to_timestamp_seconds(2) AND to_timestamp_seconds(2)",
     "SELECT count(*) n FROM m WHERE date_trunc('second', ts) = to_timestamp_seconds(2)"]
for q in Q: print('buffered', sql(q), q)
print(persist())
for q in Q: print('persisted', sql(q), q)
