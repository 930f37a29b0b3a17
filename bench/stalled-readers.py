#!/usr/bin/env python3
"""Stalled readers: N subscribers that stop reading while events flow, one healthy reader.

Starts the given eventgate binary in dev mode on a free loopback port (default limits, so
`write_timeout` 10 s and `send_buffer_bytes` 64 KiB unless the environment says otherwise),
opens N raw WebSocket subscribers with a 4 KiB receive buffer that read their Acks and then
nothing more, publishes padded events for --seconds, and prints once a second the server's
RSS, the bytes in the kernel send queues of its sockets (`ss`), and the open-connection gauge.
A memory measurement, not a timing benchmark. Standard library only.

    python3 bench/stalled-readers.py target/debug/eventgate --clients 100 --seconds 20
"""

import argparse
import base64
import json
import os
import re
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request

MASK = b"\x11\x22\x33\x44"


def frame(text):
    payload = text.encode()
    header = bytes([0x81])
    if len(payload) < 126:
        header += bytes([0x80 | len(payload)])
    else:
        header += bytes([0x80 | 126]) + struct.pack(">H", len(payload))
    return header + MASK + bytes(b ^ MASK[i % 4] for i, b in enumerate(payload))


def read_frame(sock):
    def exact(n):
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                raise EOFError
            data += chunk
        return data

    first, second = exact(2)
    length = second & 0x7F
    if length == 126:
        length = struct.unpack(">H", exact(2))[0]
    elif length == 127:
        length = struct.unpack(">Q", exact(8))[0]
    return first & 0x0F, exact(length)


def connect(port, key, rcvbuf):
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", port))
    header = base64.b64encode(json.dumps(
        {"Host": "127.0.0.1", "ApiKey": key, "Id": "6f0c2f52-1d7a-4b6e-9d0a-3c1b2a4d5e6f"}
    ).encode()).decode()
    sock.sendall((
        "GET /?header=%s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n" % (urllib.parse.quote(header, safe=""), port)
    ).encode())
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    sock.sendall(frame('{"Action":"Hello","RequestId":"h"}'))
    sock.sendall(frame(json.dumps({"Action": "Subscribe", "RequestId": "s", "Rule": "r",
                                   "Pattern": json.dumps({"source": ["load"]})})))
    acks = 0
    while acks < 2:
        opcode, payload = read_frame(sock)
        if opcode == 1 and b'"Ack"' in payload:
            assert b'"Ok"' in payload, payload
            acks += 1
    return sock


def sample(pid, port):
    rss = 0
    with open("/proc/%d/status" % pid) as status:
        for line in status:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
    out = subprocess.run(["ss", "-tnH", "state", "established", "( sport = :%d )" % port],
                         capture_output=True, text=True).stdout
    send_q = sum(int(line.split()[1]) for line in out.splitlines() if line.split())
    metrics = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port).read().decode()
    match = re.search(r"^eventgate_connections (\S+)$", metrics, re.M)
    return rss, send_q, float(match.group(1)) if match else 0.0


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("binary")
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--rate", type=int, default=50, help="events per second")
    parser.add_argument("--pad", type=int, default=10 * 1024, help="bytes of padding per event")
    args = parser.parse_args()

    env = dict(os.environ, EVENTGATE_LOG="warn")
    server = subprocess.Popen([args.binary, "serve", "--dev", "--listen", "127.0.0.1:0"],
                              stdout=subprocess.PIPE, text=True, env=env)
    port = key = None
    for line in server.stdout:
        if line.startswith("listening on http://"):
            port = int(line.rsplit(":", 1)[1])
        if line.startswith("api key: "):
            key = line.split(": ", 1)[1].strip()
            break
    try:
        baseline = sample(server.pid, port)
        stalled = [connect(port, key, 4096) for _ in range(args.clients)]
        healthy = connect(port, key, 0)
        received = [0]

        def read_healthy():
            try:
                while True:
                    opcode, payload = read_frame(healthy)
                    if opcode == 1 and b'"Event"' in payload:
                        received[0] += 1
            except (EOFError, OSError):
                pass

        threading.Thread(target=read_healthy, daemon=True).start()
        print("baseline: rss %.1f MiB, send queues %.1f MiB, connections %d" % (
            baseline[0] / 2**20, baseline[1] / 2**20, baseline[2]))
        body = json.dumps({"source": "load", "detail-type": "x", "detail": {"pad": "x" * args.pad}})
        published = 0
        start = time.time()
        next_sample = start
        peak = [0, 0]
        while time.time() - start < args.seconds + 15:
            now = time.time()
            if now - start < args.seconds and published < (now - start) * args.rate:
                request = urllib.request.Request(
                    "http://127.0.0.1:%d/events" % port, data=body.encode(),
                    headers={"content-type": "application/json"})
                urllib.request.urlopen(request).read()
                published += 1
                continue
            if now >= next_sample:
                rss, send_q, connections = sample(server.pid, port)
                peak = [max(peak[0], rss), max(peak[1], send_q)]
                print("t=%4.0fs published %5d healthy got %5d  rss %6.1f MiB  send queues %6.1f MiB"
                      "  connections %d" % (now - start, published, received[0], rss / 2**20,
                                            send_q / 2**20, connections))
                next_sample += 1
            time.sleep(0.005)
        rss, send_q, connections = sample(server.pid, port)
        print("peak: rss %.1f MiB, send queues %.1f MiB; end: rss %.1f MiB, send queues %.1f MiB,"
              " connections %d; healthy client got %d of %d events" % (
                  peak[0] / 2**20, peak[1] / 2**20, rss / 2**20, send_q / 2**20, connections,
                  received[0], published))
        for sock in stalled:
            sock.close()
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    sys.exit(main())
