# One pod of the NetworkPolicy truth-table lab (tests/src/netpol/), run in
# the pod's network namespace (and its node's cgroup, so the socket load
# balancer sees its connects): `python3 -c <this> NAME`, NAME as "x/a".
#
# Serves what upstream's agnhost pods serve: TCP and UDP on 80 and 81, each
# answering NAME (a TCP connection gets "NAME\n" and is closed; a datagram
# gets NAME back), over IPv4 and IPv6 (a socket per family). SCTP has no
# sockets on this kernel: a raw socket per family for IP protocol 132 notes
# every SCTP packet delivered here (see "sctp" below).
#
# Prints "ready" once every socket is bound, then reads one JSON command a
# line on stdin and answers each with one JSON line on stdout:
#   {"probe": [[id, proto, ip, port], ...], "timeout_ms": T}
#       every probe at once; proto "tcp": connect, read the answer;
#       "udp": a connected socket sends one datagram, reads the answer;
#       "sctp": a crafted SCTP INIT (RFC 9260 §3.3.2, CRC32c set) from a raw
#       socket of ip's family, its initiate tag = id + 1, nothing to read
#       back (the CRC32c covers no pseudo-header: the same bytes for both).
#       ip may be IPv4 or IPv6.
#       Answer {"results": {id: answer or "err <why>"}}
#   {"sctp_seen": true}   SCTP INITs delivered here since the last ask:
#       {"sctp_seen": [[source ip, destination port, initiate tag], ...]}
#   {"stream_open": [sid, ip, port, interval_ms]}  one TCP connection kept
#       open to a line echo server (every pod runs one on STREAM_PORT), a
#       line sent every interval_ms: {"result": "ok" or "err <why>"}
#   {"stream_read": sid}  {"echoes": [CLOCK_MONOTONIC s of each echoed
#       line], "sent": n, "error": null or "err <why>"}; "stream_close"
#       answers the same and closes it
#   {"now": true}  {"now": CLOCK_MONOTONIC s}, to line up with the caller's
import asyncio
import errno
import json
import os
import socket
import struct
import sys

NAME = sys.argv[1]
PORTS = (80, 81)
# Not an upstream port: the line echo server for long-lived connections.
STREAM_PORT = 8090
ANSWER = (NAME + "\n").encode()
sctp_seen = []


def crc32c_table():
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


CRC32C = crc32c_table()


def crc32c(data):
    c = 0xFFFFFFFF
    for b in data:
        c = CRC32C[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def sctp_init(src_port, dst_port, tag):
    # Common header (verification tag 0 for an INIT), then the INIT chunk:
    # type 1, flags 0, length 20, initiate tag, a_rwnd, out/in streams, TSN.
    chunk = struct.pack("!BBHIIHHI", 1, 0, 20, tag, 65536, 10, 10, tag)
    header = struct.pack("!HHII", src_port, dst_port, 0, 0)
    packet = header + chunk
    checksum = crc32c(packet)
    # The checksum field holds the CRC32c in little-endian byte order.
    return packet[:8] + struct.pack("<I", checksum) + packet[12:]


class TcpAnswer(asyncio.Protocol):
    def connection_made(self, transport):
        transport.write(ANSWER)
        transport.close()


class UdpAnswer(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.transport.sendto(ANSWER, addr)


class Stream:
    def __init__(self):
        self.echoes = []
        self.sent = 0
        self.error = None
        self.tasks = []
        self.writer = None

    def state(self):
        return {"echoes": self.echoes, "sent": self.sent, "error": self.error}


streams = {}


async def echo_lines(reader, writer):
    try:
        while True:
            line = await reader.readline()
            if not line:
                break
            writer.write(line)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


async def stream_open(sid, ip, port, interval):
    stream = Stream()
    streams[sid] = stream
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(ip, port), 2)
    except Exception as e:
        stream.error = why(e)
        return stream.error
    stream.writer = writer
    loop = asyncio.get_running_loop()

    async def send():
        try:
            while True:
                writer.write(b"%d\n" % stream.sent)
                await writer.drain()
                stream.sent += 1
                await asyncio.sleep(interval)
        except Exception as e:
            stream.error = stream.error or why(e)

    async def receive():
        try:
            while True:
                line = await reader.readline()
                if not line:
                    stream.error = stream.error or "err closed by peer"
                    return
                stream.echoes.append(loop.time())
        except Exception as e:
            stream.error = stream.error or why(e)

    stream.tasks = [asyncio.ensure_future(send()), asyncio.ensure_future(receive())]
    return "ok"


def why(e):
    if isinstance(e, asyncio.TimeoutError):
        return "err timeout"
    code = getattr(e, "errno", None)
    return "err " + (errno.errorcode.get(code, str(code)) if code else type(e).__name__)


async def probe_tcp(ip, port):
    reader, writer = await asyncio.open_connection(ip, port)
    try:
        data = await reader.readline()
    finally:
        writer.close()
    return data.decode(errors="replace").strip() or "err empty"


class UdpClient(asyncio.DatagramProtocol):
    def __init__(self):
        self.answer = asyncio.get_running_loop().create_future()

    def datagram_received(self, data, addr):
        if not self.answer.done():
            self.answer.set_result(data.decode(errors="replace").strip())

    def error_received(self, exc):
        if not self.answer.done():
            self.answer.set_exception(exc)


async def probe_udp(ip, port):
    loop = asyncio.get_running_loop()
    transport, client = await loop.create_datagram_endpoint(UdpClient, remote_addr=(ip, port))
    try:
        transport.sendto(b"probe")
        return await client.answer
    finally:
        transport.close()


def family_of(ip):
    return socket.AF_INET6 if ":" in ip else socket.AF_INET


def probe_sctp(ip, port, tag):
    s = socket.socket(family_of(ip), socket.SOCK_RAW, 132)
    try:
        src_port = 32768 + tag % 28000
        s.sendto(sctp_init(src_port, port, tag), (ip, 0))
    finally:
        s.close()
    return "sent"


async def one(proto, ip, port, pid, timeout):
    try:
        if proto == "tcp":
            return await asyncio.wait_for(probe_tcp(ip, port), timeout)
        if proto == "udp":
            return await asyncio.wait_for(probe_udp(ip, port), timeout)
        if proto == "sctp":
            return probe_sctp(ip, port, pid + 1)
        return "err unknown protocol " + proto
    except Exception as e:  # every failure is an outcome, named
        return why(e)


def sctp_received(raw):
    # An IPv4 raw socket reads the IP header too; an IPv6 one only the
    # payload, the source address coming from recvfrom.
    while True:
        try:
            packet, addr = raw.recvfrom(2048)
        except BlockingIOError:
            return
        if raw.family == socket.AF_INET:
            ihl = (packet[0] & 0x0F) * 4
            src = socket.inet_ntoa(packet[12:16])
            sctp = packet[ihl:]
        else:
            src = addr[0]
            sctp = packet
        if len(sctp) >= 20 and sctp[12] == 1:
            dst_port = struct.unpack("!H", sctp[2:4])[0]
            tag = struct.unpack("!I", sctp[16:20])[0]
            sctp_seen.append([src, dst_port, tag])


async def main():
    global sctp_seen
    loop = asyncio.get_running_loop()
    for port in PORTS:
        # A TCP server per family (asyncio makes the IPv6 one IPv6-only).
        await loop.create_server(TcpAnswer, ["0.0.0.0", "::"], port, reuse_address=True, backlog=512)
        await loop.create_datagram_endpoint(UdpAnswer, local_addr=("0.0.0.0", port))
        udp6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        udp6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        udp6.bind(("::", port))
        await loop.create_datagram_endpoint(UdpAnswer, sock=udp6)
    await asyncio.start_server(echo_lines, ["0.0.0.0", "::"], STREAM_PORT, reuse_address=True)
    for family in (socket.AF_INET, socket.AF_INET6):
        raw = socket.socket(family, socket.SOCK_RAW, 132)
        raw.setblocking(False)
        loop.add_reader(raw.fileno(), sctp_received, raw)
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print("ready", flush=True)
    while True:
        line = await reader.readline()
        if not line:
            return
        cmd = json.loads(line)
        if "probe" in cmd:
            timeout = cmd.get("timeout_ms", 1000) / 1000
            probes = cmd["probe"]
            outcomes = await asyncio.gather(*(one(p[1], p[2], p[3], p[0], timeout) for p in probes))
            out = {"results": {str(p[0]): o for p, o in zip(probes, outcomes)}}
        elif "stream_open" in cmd:
            sid, ip, port, interval_ms = cmd["stream_open"]
            out = {"result": await stream_open(sid, ip, port, interval_ms / 1000)}
        elif "stream_read" in cmd or "stream_close" in cmd:
            sid = cmd.get("stream_read", cmd.get("stream_close"))
            stream = streams.get(sid)
            if stream is None:
                out = {"error": "no stream " + str(sid)}
            else:
                out = stream.state()
                if "stream_close" in cmd:
                    for t in stream.tasks:
                        t.cancel()
                    if stream.writer is not None:
                        stream.writer.close()
                    del streams[sid]
        elif "now" in cmd:
            out = {"now": loop.time()}
        elif "sctp_seen" in cmd:
            out = {"sctp_seen": sctp_seen}
            sctp_seen = []
        else:
            out = {"error": "unknown command"}
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()


try:
    asyncio.run(main())
except KeyboardInterrupt:
    os._exit(0)
