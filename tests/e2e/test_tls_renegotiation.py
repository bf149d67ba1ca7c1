"""TLS 1.2 client-initiated renegotiation against a terminating route (real `openssl s_client` and `R`):
refused and closed at once with reason tls-renegotiation, quickly repeated, while another client's TLS 1.2
stream through the same worker goes on byte-exact; the flood costs the worker about a handshake each."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from support.daemon import make_config, proc_cpu_seconds
from support.renegotiation import NAME, Stream, echo_tls12, renegotiate
from support.net import free_port

RENEGOTIATORS = 24
CPU_PER_CLIENT = 0.05     # worker CPU-s per renegotiating client: a TLS 1.2 handshake costs ~1-3 ms


@pytest.mark.timeout(180)
def test_renegotiation_is_refused_and_closed_while_another_stream_goes_on(daemon, server, tls_ca):
    backend = server(echo_tls12)
    port = free_port()
    leaf = tls_ca.issue(NAME)
    route = {"probe": "tls", "tls_cert": leaf.chain, "tls_key": leaf.key, "backend": f"127.0.0.1:{backend.port}"}
    d = daemon().start(make_config(port, {"tls": route}, workers=1, log_level="info"), ready=True)
    worker = d.wait_workers(1)[0]
    stream = Stream(port, tls_ca.cert)
    stream.start()
    cpu = proc_cpu_seconds(worker)
    with ThreadPoolExecutor(4) as pool:
        outputs = list(pool.map(lambda _: renegotiate(port, tls_ca.cert), range(RENEGOTIATORS)))
    spent = proc_cpu_seconds(worker) - cpu
    stream.stop()
    assert all("RENEGOTIATING" in out for out in outputs), outputs[0][-2000:]
    log = d.wait_log(" reason=tls-renegotiation ", count=RENEGOTIATORS, timeout=30)
    assert "detail=renegotiation refused" in log or 'detail="renegotiation refused"' in log, log[-2000:]
    d.wait_log(" reason=", count=RENEGOTIATORS + 1, timeout=30)      # the stream's own line, once it ended
    stream_lines = [line for line in d.log_text().splitlines() if " reason=" in line
                    and "tls-renegotiation" not in line]
    assert len(stream_lines) == 1 and "tls=TLSv1.2" in stream_lines[0], stream_lines
    assert f"up={stream.bytes} down={stream.bytes}" in stream_lines[0], (stream.bytes, stream_lines)
    assert spent < CPU_PER_CLIENT * RENEGOTIATORS, f"{spent:.3f} CPU-s for {RENEGOTIATORS} renegotiating clients"
    assert d.workers() == [worker]
